# Baseline: mmdet's Mask R-CNN R50-FPN with GroupNorm everywhere ("-all", 32 groups, Detectron GN ImageNet weights),
# 2 images/GPU, 2x, COCO. Only `data_root` needs changing for another COCO location.
_base_ = 'mmdet::gn/mask-rcnn_r50_fpn_gn-all_2x_coco.py'

data_root = 'data/coco/'
train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
