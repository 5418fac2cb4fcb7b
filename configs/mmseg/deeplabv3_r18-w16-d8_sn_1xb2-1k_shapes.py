# DeepLabV3 with Switchable Normalization on the synthetic shapes dataset (generated on first use), small enough for a
# CPU (_base_/deeplabv3_r18-w16-d8.py: ResNet-18-V1c at a quarter of the width, dilated, ASPP head), trained from
# scratch at 2 images per batch on 128x128 inputs for 1000 iterations; ends with mIoU.
#   .venv/bin/python tools/train.py configs/mmseg/deeplabv3_r18-w16-d8_sn_1xb2-1k_shapes.py
_base_ = [
    './_base_/deeplabv3_r18-w16-d8.py',
    './_base_/shapes_semantic.py',
]

norm_cfg = dict(type='SN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=(128, 128)),
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(num_classes=4, norm_cfg=norm_cfg),
    auxiliary_head=dict(num_classes=4, norm_cfg=norm_cfg))
custom_hooks = [
    dict(type='DynNormEvalHook'),
    dict(type='DynNormSyncHook'),
    dict(type='ImportanceRatioHook', interval=100),
]
