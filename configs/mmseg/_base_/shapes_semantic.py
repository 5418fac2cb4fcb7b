# The embedded synthetic shapes dataset (tasks/synthetic_shapes.py) as semantic segmentation: 400 train / 100 val
# images of 64x64 pixels, label maps with 0 = background and 1-3 = circle, square, triangle. tools/train.py and
# tools/test.py generate it under `data_root` when it is missing (the `synthetic_shapes` key). Upscaled to 128x128.
dataset_type = 'BaseSegDataset'
data_root = 'data/synthetic_shapes/'
synthetic_shapes = dict(root=data_root)
metainfo = dict(
    classes=('background', 'circle', 'square', 'triangle'),
    palette=[[0, 0, 0], [220, 20, 60], [0, 128, 255], [0, 160, 0]])
image_scale = (128, 128)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        img_suffix='.png',
        seg_map_suffix='.png',
        data_prefix=dict(img_path='images/train', seg_map_path='semantic/train'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        img_suffix='.png',
        seg_map_suffix='.png',
        data_prefix=dict(img_path='images/val', seg_map_path='semantic/val'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader

val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
