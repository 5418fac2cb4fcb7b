# Baseline: mmseg's DeepLabV3 R50-D8 with SyncBN (statistics over all GPUs), 2 images per GPU on 4 GPUs, 80k
# iterations, Cityscapes 512x1024 crops. On one GPU the Runner reverts SyncBN to BN. Only `data_root` needs changing.
_base_ = 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024.py'

data_root = 'data/cityscapes/'
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
