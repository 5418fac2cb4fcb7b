# DeepLabV3 small enough for a CPU: ResNet-18-V1c at a quarter of the width (dilated, output stride 8), ASPP head with
# small dilations for 16-20 pixel feature maps, trained from scratch at 2 images per batch with BatchNorm; an iteration
# schedule (SGD, poly decay, mIoU at the end). The configs add the data, the input size and the number of classes,
# and set `norm_cfg` in backbone and heads.
_base_ = [
    'mmseg::_base_/models/deeplabv3_r50-d8.py',
    'mmseg::_base_/default_runtime.py',
]
custom_imports = dict(imports=['dynnorm.integrations.mmengine'], allow_failed_imports=False)

norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    pretrained=None,
    backbone=dict(depth=18, stem_channels=16, base_channels=16, norm_cfg=norm_cfg, norm_eval=False),
    decode_head=dict(in_channels=128, channels=64, dilations=(1, 2, 4, 6), norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=64, channels=32, norm_cfg=norm_cfg))

max_iters = 1000
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=5e-4),
    constructor='DynNormOptimWrapperConstructor',
    paramwise_cfg=dict(dynnorm_decay_mult=0.0))
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=2))
randomness = dict(seed=0)
