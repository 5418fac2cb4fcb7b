# Baseline: SSDLite (MobileNetV2, from scratch) with GroupNorm (8 groups: MobileNetV2 widths are multiples of 8),
# 2 images per GPU. See the BN config.
_base_ = './ssdlite_mobilenetv2-scratch_bn_8xb2-600e_coco.py'

model = dict(
    backbone=dict(norm_cfg=dict(_delete_=True, type='GN', num_groups=8, eps=0.001)),
    neck=dict(norm_cfg=dict(_delete_=True, type='GN', num_groups=8, eps=0.001)),
    bbox_head=dict(norm_cfg=dict(_delete_=True, type='GN', num_groups=8, eps=0.001)))
