# Mask R-CNN R50-FPN, Associate Normalization (group statistics, no batch statistics) everywhere ("-all"),
# 2 images/GPU, 2x, COCO. See the SN config.
_base_ = './mask-rcnn_r50_fpn_sn-all_2x_coco.py'

norm_cfg = dict(type='AssocNorm', num_groups=32, requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(bbox_head=dict(norm_cfg=norm_cfg), mask_head=dict(norm_cfg=norm_cfg)))
custom_hooks = []
