# Baseline: mmdet's Mask R-CNN R50-FPN with the usual frozen BatchNorm backbone (ImageNet statistics, norm_eval=True;
# batch statistics of 2 images/GPU are too noisy to train BN) and no norm in FPN and heads, 2 images/GPU, 2x, COCO.
# Only `data_root` needs changing for another COCO location.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_2x_coco.py'

data_root = 'data/coco/'
train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
