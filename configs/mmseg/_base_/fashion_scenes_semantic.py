# Fashion-MNIST scenes (tasks/fashion_scenes.py) as semantic segmentation: 2,000 train / 300 val grayscale images of
# 160x160 pixels with 1-6 real Fashion-MNIST garments on a background of garment fragments, label maps with
# 0 = background and 1-10 = the Fashion-MNIST class of the visible garment (11 classes, reduce_zero_label=False; no
# ignored pixels); the same scenes as the COCO instance set. tools/train.py and tools/test.py generate them under
# `data_root` from the local Fashion-MNIST files when they are missing (the `fashion_scenes` key). Nothing is
# downloaded.
dataset_type = 'BaseSegDataset'
data_root = 'data/fashion_scenes/'
fashion_scenes = dict(root=data_root)
metainfo = dict(
    classes=('background', 'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
             'Ankle boot'),
    palette=[[0, 0, 0], [220, 20, 60], [119, 11, 32], [0, 0, 142], [0, 0, 230], [106, 0, 228], [0, 60, 100],
             [0, 80, 100], [0, 0, 70], [0, 0, 192], [250, 170, 30]])
image_scale = (160, 160)

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
        reduce_zero_label=False,
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
        reduce_zero_label=False,
        data_prefix=dict(img_path='images/val', seg_map_path='semantic/val'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader

val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
