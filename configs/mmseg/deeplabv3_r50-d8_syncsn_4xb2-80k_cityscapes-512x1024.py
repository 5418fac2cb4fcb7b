# DeepLabV3 R50-D8 with synchronized Switchable Normalization (BN statistics all-reduced over the GPUs, the analogue
# of the SyncBN baseline; local statistics on one GPU), 2 images per GPU on 4 GPUs, 80k iterations, Cityscapes.
_base_ = './deeplabv3_r50-d8_sn_4xb2-80k_cityscapes-512x1024.py'

norm_cfg = dict(type='SyncSN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
