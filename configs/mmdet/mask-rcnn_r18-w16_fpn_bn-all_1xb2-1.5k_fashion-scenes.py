# Fashion-MNIST scenes, the BatchNorm baseline: the small Mask R-CNN with BatchNorm (live statistics of 2 images) in
# backbone, FPN and heads, from scratch; the scenes are generated from the local Fashion-MNIST files on first use.
#   OMP_NUM_THREADS=1 .venv/bin/python tools/train.py \
#       configs/mmdet/mask-rcnn_r18-w16_fpn_bn-all_1xb2-1.5k_fashion-scenes.py
_base_ = './_base_/mask-rcnn_r18-w16_fpn_fashion-scenes.py'
