# Mask R-CNN R50-FPN with Switchable Normalization in the backbone, the FPN and both RoI heads (the "-all" layout of
# the GN and SN papers: 4conv1fc box head), 2 images per GPU (8 GPUs = 16 images per step), 2x schedule, COCO.
#   torchrun --nproc_per_node=8 tools/train.py configs/mmdet/mask-rcnn_r50_fpn_sn-all_2x_coco.py --launcher pytorch
# Only `data_root` needs changing for another COCO location (or pass --data-root to tools/train.py).
# The backbone starts from torchvision's ImageNet BN ResNet-50: SN layers are named bn1, bn2, ... so its weights,
# biases and running statistics load; only the mixture logits (mean_weight, var_weight) start fresh (uniform). For a
# dynnorm ImageNet checkpoint set model.backbone.init_cfg.checkpoint to its path. Offline: see tools/train.py.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_2x_coco.py'
custom_imports = dict(imports=['dynnorm.integrations.mmengine'], allow_failed_imports=False)

data_root = 'data/coco/'
train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

norm_cfg = dict(type='SN', requires_grad=True)
model = dict(
    # Live statistics in the backbone (norm_eval=False), as SN was trained for detection; stem and stage 1 frozen.
    backbone=dict(norm_cfg=norm_cfg, norm_eval=False),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256, norm_cfg=norm_cfg),
        mask_head=dict(norm_cfg=norm_cfg)))

# No weight decay on any normalization parameter (mixture logits included), as the SN authors trained.
optim_wrapper = dict(constructor='DynNormOptimWrapperConstructor', paramwise_cfg=dict(dynnorm_decay_mult=0.0))

custom_hooks = [
    dict(type='DynNormEvalHook'),  # makes norm_eval=True (if set) apply to dynnorm layers too
    dict(type='DynNormSyncHook'),  # with `sync_bn='torch'`: cross-GPU statistics for dynnorm layers too
    dict(type='ImportanceRatioHook', interval=500),  # ratio history (JSON) and per-layer figure (PNG)
]
