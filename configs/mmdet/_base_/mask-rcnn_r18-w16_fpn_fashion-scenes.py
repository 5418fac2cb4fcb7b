# The small Mask R-CNN (mask-rcnn_r18-w16_fpn.py: ResNet-18 at width 16, FPN, norm layers everywhere, from scratch,
# 2 images per batch, BatchNorm) on the Fashion-MNIST scenes (fashion_scenes_instance.py: 160x160 pixels, 10 classes),
# 1500 iterations; the variants set `norm_cfg` in the four places (mask-rcnn_r18-w16_fpn_*-all_*_fashion-scenes).
_base_ = [
    './mask-rcnn_r18-w16_fpn.py',
    './fashion_scenes_instance.py',
]
model = dict(
    roi_head=dict(bbox_head=dict(num_classes=10), mask_head=dict(num_classes=10)),
    test_cfg=dict(rcnn=dict(max_per_img=50)))

max_iters = 1500
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=200),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[int(max_iters * 0.75), int(max_iters * 0.9)], gamma=0.1),
]
default_hooks = dict(checkpoint=dict(interval=max_iters))
