# Fashion-MNIST scenes: the small Mask R-CNN with Exemplar Normalization (per-image IN/LN/BN ratios) in backbone, FPN
# and heads, from scratch, plotting the batch-averaged ratios. Same schedule and seed as the BN config.
_base_ = './_base_/mask-rcnn_r18-w16_fpn_fashion-scenes.py'

norm_cfg = dict(type='EN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(bbox_head=dict(norm_cfg=norm_cfg), mask_head=dict(norm_cfg=norm_cfg)))
custom_hooks = [
    dict(type='DynNormEvalHook'),
    dict(type='DynNormSyncHook'),
    dict(type='ImportanceRatioHook', interval=500),
]
