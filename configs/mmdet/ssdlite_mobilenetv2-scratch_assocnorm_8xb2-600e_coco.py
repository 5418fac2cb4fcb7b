# SSDLite (MobileNetV2, from scratch) with Associate Normalization, 2 images per GPU. MobileNetV2 widths are multiples
# of 8, hence 8 groups; AssocNorm keeps no running statistics, so BN's momentum is dropped. See the SN config.
_base_ = './ssdlite_mobilenetv2-scratch_sn_8xb2-600e_coco.py'

model = dict(
    backbone=dict(norm_cfg=dict(_delete_=True, type='AssocNorm', num_groups=8, eps=0.001)),
    neck=dict(norm_cfg=dict(_delete_=True, type='AssocNorm', num_groups=8, eps=0.001)),
    bbox_head=dict(norm_cfg=dict(_delete_=True, type='AssocNorm', num_groups=8, eps=0.001)))
custom_hooks = [
    dict(type='NumClassCheckHook'),
    dict(type='CheckInvalidLossHook', interval=50, priority='VERY_LOW'),
]
