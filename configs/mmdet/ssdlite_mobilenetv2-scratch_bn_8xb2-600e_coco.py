# Baseline: mmdet's SSDLite (MobileNetV2, trained from scratch, 320x320) with BatchNorm at 2 images per GPU
# (8 GPUs = 16 images per step) instead of 24: the small-batch setting the dynnorm variants are compared in. The
# learning rate is scaled linearly from mmdet's 0.015 at 192 images per step. Only `data_root` needs changing.
_base_ = 'mmdet::ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py'

data_root = 'data/coco/'
train_dataloader = dict(batch_size=2, dataset=dict(dataset=dict(data_root=data_root)))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(lr=0.015 * 16 / 192))
auto_scale_lr = dict(base_batch_size=16)
