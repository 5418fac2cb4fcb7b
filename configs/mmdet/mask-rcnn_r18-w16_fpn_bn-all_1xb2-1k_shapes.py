# Baseline for the shapes benchmark: the small Mask R-CNN with BatchNorm (live batch statistics of 2 images) in
# backbone, FPN and heads, from scratch. Same schedule and seed as the SN config.
_base_ = './_base_/mask-rcnn_r18-w16_fpn_shapes.py'
