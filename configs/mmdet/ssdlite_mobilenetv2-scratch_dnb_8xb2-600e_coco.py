# SSDLite (MobileNetV2, from scratch) with DN-B (dynamic affine on BN statistics), 2 images per GPU. See the SN config.
_base_ = './ssdlite_mobilenetv2-scratch_sn_8xb2-600e_coco.py'

model = dict(
    backbone=dict(norm_cfg=dict(type='DNB')),
    neck=dict(norm_cfg=dict(type='DNB')),
    bbox_head=dict(norm_cfg=dict(type='DNB')))
custom_hooks = [
    dict(type='NumClassCheckHook'),
    dict(type='CheckInvalidLossHook', interval=50, priority='VERY_LOW'),
    dict(type='DynNormEvalHook'),
    dict(type='DynNormSyncHook'),
]
