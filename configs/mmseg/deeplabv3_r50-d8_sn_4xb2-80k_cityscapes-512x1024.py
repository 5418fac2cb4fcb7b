# DeepLabV3 R50-D8 with Switchable Normalization in the backbone, the ASPP head and the auxiliary FCN head, 2 images
# per GPU on 4 GPUs, 80k iterations, Cityscapes. Per-GPU statistics, as SN was trained for segmentation (SN-(8,2));
# the SyncSN config all-reduces them instead. The backbone starts from mmseg's ImageNet BN ResNet-50-V1c: SN layers
# are named bn1, bn2, ... so its weights and running statistics load; only the mixture logits start fresh.
# Offline: --cfg-options model.pretrained=None (from scratch) or model.pretrained=/path/to/resnet50_v1c.pth.
_base_ = './deeplabv3_r50-d8_syncbn_4xb2-80k_cityscapes-512x1024.py'
custom_imports = dict(imports=['dynnorm.integrations.mmengine'], allow_failed_imports=False)

norm_cfg = dict(type='SN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg, norm_eval=False),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))

# No weight decay on any normalization parameter (mixture logits included), as the SN authors trained.
optim_wrapper = dict(constructor='DynNormOptimWrapperConstructor', paramwise_cfg=dict(dynnorm_decay_mult=0.0))

custom_hooks = [
    dict(type='DynNormEvalHook'),
    dict(type='DynNormSyncHook'),
    dict(type='ImportanceRatioHook', interval=1000),
]
