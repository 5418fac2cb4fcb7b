# Fashion-MNIST scenes: the small Mask R-CNN with Switchable Normalization in backbone, FPN and heads, from scratch,
# plotting the learned IN/LN/BN ratios. Same schedule and seed as the BN config.
_base_ = './_base_/mask-rcnn_r18-w16_fpn_fashion-scenes.py'

norm_cfg = dict(type='SN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(bbox_head=dict(norm_cfg=norm_cfg), mask_head=dict(norm_cfg=norm_cfg)))
custom_hooks = [
    dict(type='DynNormEvalHook'),
    dict(type='DynNormSyncHook'),
    dict(type='ImportanceRatioHook', interval=500),
]
