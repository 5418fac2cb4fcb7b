# Fashion-MNIST scenes: the small Mask R-CNN with GroupNorm (8 groups: the narrowest layers have 16 channels) in
# backbone, FPN and heads, from scratch. Same schedule and seed as the BN config.
_base_ = './_base_/mask-rcnn_r18-w16_fpn_fashion-scenes.py'

norm_cfg = dict(type='GN', num_groups=8, requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(bbox_head=dict(norm_cfg=norm_cfg), mask_head=dict(norm_cfg=norm_cfg)))
