# Fashion-MNIST scenes, the BatchNorm baseline: the small DeepLabV3 with BatchNorm (live statistics of 2 images) in
# backbone and heads, from scratch; the scenes are generated from the local Fashion-MNIST files on first use.
#   OMP_NUM_THREADS=1 .venv/bin/python tools/train.py configs/mmseg/deeplabv3_r18-w16-d8_bn_1xb2-4k_fashion-scenes.py
_base_ = './_base_/deeplabv3_r18-w16-d8_fashion-scenes.py'
