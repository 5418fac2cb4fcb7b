# The embedded default: Mask R-CNN with Switchable Normalization in backbone, FPN and heads, trained from scratch
# on the synthetic shapes dataset (generated on first use) at 2 images per batch; ends with COCO bbox/segm mAP.
#   .venv/bin/python tools/train.py configs/mmdet/mask-rcnn_r18-w16_fpn_sn-all_1xb2-1k_shapes.py
_base_ = './_base_/mask-rcnn_r18-w16_fpn_shapes.py'

norm_cfg = dict(type='SN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(bbox_head=dict(norm_cfg=norm_cfg), mask_head=dict(norm_cfg=norm_cfg)))

custom_hooks = [
    dict(type='DynNormEvalHook'),
    dict(type='DynNormSyncHook'),
    dict(type='ImportanceRatioHook', interval=100),
]
