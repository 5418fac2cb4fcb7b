# The small Mask R-CNN (mask-rcnn_r18-w16_fpn.py: ResNet-18 at width 16, FPN, norm layers everywhere, from scratch,
# 2 images per batch, BatchNorm) on the synthetic shapes dataset at 128x128 pixels, 3 classes, 1000 iterations; the
# variants set `norm_cfg` in the four places (mask-rcnn_r18-w16_fpn_*-all_*_shapes).
_base_ = [
    './mask-rcnn_r18-w16_fpn.py',
    './shapes_instance.py',
]
model = dict(roi_head=dict(bbox_head=dict(num_classes=3), mask_head=dict(num_classes=3)))
