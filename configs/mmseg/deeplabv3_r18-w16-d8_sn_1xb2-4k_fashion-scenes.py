# Fashion-MNIST scenes: the small DeepLabV3 with Switchable Normalization in backbone and heads, from scratch,
# plotting the learned IN/LN/BN ratios. Same schedule and seed as the BN config.
_base_ = './_base_/deeplabv3_r18-w16-d8_fashion-scenes.py'

norm_cfg = dict(type='SN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
custom_hooks = [
    dict(type='DynNormEvalHook'),
    dict(type='DynNormSyncHook'),
    dict(type='ImportanceRatioHook', interval=500),
]
