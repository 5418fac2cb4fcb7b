# SSDLite (MobileNetV2, from scratch) with Exemplar Normalization, 2 images per GPU. See the SN config.
_base_ = './ssdlite_mobilenetv2-scratch_sn_8xb2-600e_coco.py'

model = dict(
    backbone=dict(norm_cfg=dict(type='EN')),
    neck=dict(norm_cfg=dict(type='EN')),
    bbox_head=dict(norm_cfg=dict(type='EN')))
