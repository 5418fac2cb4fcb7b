# Mask R-CNN small enough to train on 2 CPU cores in minutes: ResNet-18 at a quarter of the width (stage widths
# 16-32-64-128), 64-channel FPN, the "-all" layout of the GN and SN papers (norm layers in backbone, FPN, 4conv1fc box
# head and mask head), trained from scratch (no pretrained weights), BatchNorm; an iteration schedule (SGD, warm-up,
# two steps, validation at the end). The dataset bases (mask-rcnn_r18-w16_fpn_<dataset>.py) add the data and the
# number of classes; the variants set `norm_cfg` in the four places (mask-rcnn_r18-w16_fpn_*-all_*).
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['dynnorm.integrations.mmengine'], allow_failed_imports=False)

norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    backbone=dict(
        depth=18,
        base_channels=16,
        frozen_stages=-1,
        norm_cfg=norm_cfg,
        norm_eval=False,
        init_cfg=None),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=64, num_outs=4, norm_cfg=norm_cfg),
    rpn_head=dict(
        in_channels=64,
        feat_channels=64,
        anchor_generator=dict(scales=[4], strides=[4, 8, 16, 32])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead',
            in_channels=64,
            conv_out_channels=64,
            fc_out_channels=256,
            norm_cfg=norm_cfg),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(in_channels=64, conv_out_channels=64, norm_cfg=norm_cfg)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=300),
        rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(
        rpn=dict(nms_pre=500, max_per_img=100),
        rcnn=dict(max_per_img=20)))

# Schedule: iterations, SGD with warm-up and two steps, validation (COCO bbox/segm mAP) at the end.
max_iters = 1000
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=200),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[int(max_iters * 0.75), int(max_iters * 0.9)], gamma=0.1),
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
    clip_grad=dict(max_norm=35, norm_type=2),
    # No weight decay on normalization parameters, whichever the layer (BN, GN or dynnorm): equal treatment.
    constructor='DynNormOptimWrapperConstructor',
    paramwise_cfg=dict(norm_decay_mult=0.0, dynnorm_decay_mult=0.0))
auto_scale_lr = dict(enable=False, base_batch_size=2)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=2))
log_processor = dict(by_epoch=False, window_size=20)
randomness = dict(seed=0)
