# Baseline: Mask R-CNN R50-FPN with SyncBN everywhere ("-all": statistics over all GPUs, 16 images), 2 images/GPU,
# 2x, COCO (torch's SyncBatchNorm accepts the empty batches an RoI head can get). On one GPU the Runner reverts SyncBN
# to BN. See the SN config.
_base_ = './mask-rcnn_r50_fpn_sn-all_2x_coco.py'

norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(bbox_head=dict(norm_cfg=norm_cfg), mask_head=dict(norm_cfg=norm_cfg)))
optim_wrapper = dict(_delete_=True, type='OptimWrapper',
                     optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001))
custom_hooks = []
