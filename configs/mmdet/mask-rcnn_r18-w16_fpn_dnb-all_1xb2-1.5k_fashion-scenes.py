# Fashion-MNIST scenes: the small Mask R-CNN with DN-B (BN statistics, scale and shift generated per image) in
# backbone, FPN and heads, from scratch. Same schedule and seed as the BN config.
_base_ = './_base_/mask-rcnn_r18-w16_fpn_fashion-scenes.py'

norm_cfg = dict(type='DNB', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(bbox_head=dict(norm_cfg=norm_cfg), mask_head=dict(norm_cfg=norm_cfg)))
custom_hooks = [dict(type='DynNormEvalHook'), dict(type='DynNormSyncHook')]
