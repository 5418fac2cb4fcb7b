# SSDLite (MobileNetV2, from scratch) with Switchable Normalization in backbone, neck and head, 2 images per GPU.
# mmdet's BN settings carry over: eps=0.001 and momentum=0.03 (torch's convention, as for BN). See the BN config.
_base_ = './ssdlite_mobilenetv2-scratch_bn_8xb2-600e_coco.py'
custom_imports = dict(imports=['dynnorm.integrations.mmengine'], allow_failed_imports=False)

model = dict(
    backbone=dict(norm_cfg=dict(type='SN', eps=0.001, momentum=0.03)),
    neck=dict(norm_cfg=dict(type='SN', eps=0.001, momentum=0.03)),
    bbox_head=dict(norm_cfg=dict(type='SN', eps=0.001, momentum=0.03)))

# No weight decay on any normalization parameter (mixture logits included), as the SN authors trained.
optim_wrapper = dict(constructor='DynNormOptimWrapperConstructor', paramwise_cfg=dict(dynnorm_decay_mult=0.0))

custom_hooks = [
    dict(type='NumClassCheckHook'),
    dict(type='CheckInvalidLossHook', interval=50, priority='VERY_LOW'),
    dict(type='DynNormEvalHook'),
    dict(type='DynNormSyncHook'),
    dict(type='ImportanceRatioHook', interval=500),
]
