# The small DeepLabV3 (deeplabv3_r18-w16-d8.py: ResNet-18-V1c at width 16, dilated, from scratch, 2 images per batch,
# BatchNorm) on the Fashion-MNIST scenes (fashion_scenes_semantic.py: 160x160 inputs, background + 10 classes), 4000
# iterations (about 0.1 s each on one CPU thread); the variants set `norm_cfg` in backbone and heads
# (deeplabv3_r18-w16-d8_*_fashion-scenes).
_base_ = [
    './deeplabv3_r18-w16-d8.py',
    './fashion_scenes_semantic.py',
]
model = dict(
    data_preprocessor=dict(size=(160, 160)),
    decode_head=dict(num_classes=11),
    auxiliary_head=dict(num_classes=11))

max_iters = 4000
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)]
default_hooks = dict(checkpoint=dict(interval=max_iters))
