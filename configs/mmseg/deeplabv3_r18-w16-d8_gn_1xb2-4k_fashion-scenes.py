# Fashion-MNIST scenes: the small DeepLabV3 with GroupNorm (8 groups: the narrowest layers have 16 channels) in
# backbone and heads, from scratch. Same schedule and seed as the BN config.
_base_ = './_base_/deeplabv3_r18-w16-d8_fashion-scenes.py'

norm_cfg = dict(type='GN', num_groups=8, requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
