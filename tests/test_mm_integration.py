"""OpenMMLab integration: registration, BatchNorm special cases, configs and single training steps (no datasets)."""
from __future__ import annotations

import copy
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("mmengine")
pytest.importorskip("mmcv.ops")  # the compiled ops (RoIAlign, NMS) that mmdet's models need
mmdet = pytest.importorskip("mmdet")
mmseg = pytest.importorskip("mmseg")

import dynnorm  # noqa: E402
from dynnorm.integrations import mmengine as dn_mm  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import HOOKS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS, DefaultScope, init_default_scope  # noqa: E402

pytestmark = pytest.mark.mm

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p for p in (ROOT / "configs").glob("mm*/*.py"))
SHAPES_DET = ROOT / "configs/mmdet/mask-rcnn_r18-w16_fpn_sn-all_1xb2-1k_shapes.py"


def build_model(cfg: Config) -> torch.nn.Module:
    init_default_scope(cfg.default_scope)
    registry = {"mmdet": "mmdet.registry", "mmseg": "mmseg.registry"}[cfg.default_scope]
    return __import__(registry, fromlist=["MODELS"]).MODELS.build(cfg.model)


def dynnorm_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if dynnorm.is_dynnorm(m)]


# -- registration ------------------------------------------------------------------------------------


def test_every_layer_is_registered_in_the_root_registry_under_short_and_class_names():
    for name in [*dynnorm.SHORT_NAMES, "SwitchNorm2d", "SwitchNorm1d", "SparseSwitchNorm3d", "AssociateNorm2d"]:
        assert MODELS.module_dict[name] is dynnorm.get_norm_layer(name)
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.module_dict["DynNormOptimWrapperConstructor"]
    assert constructor is dn_mm.DynNormOptimWrapperConstructor
    for hook in ("DynNormEvalHook", "DynNormSyncHook", "ImportanceRatioHook", "ClipMixtureGradNormHook",
                 "RecalibrateBatchStatisticsHook"):
        assert hook in HOOKS.module_dict


def test_registration_is_idempotent_and_refuses_to_shadow_another_class():
    dn_mm.register_all_modules()
    dn_mm.register_all_modules()
    assert MODELS.module_dict["SN"] is dynnorm.SwitchNorm2d

    class Impostor(torch.nn.Module):
        pass

    MODELS.register_module(name="DynNormTestImpostor", module=Impostor)
    try:
        with pytest.raises(KeyError, match="DynNormTestImpostor.*already registered"):
            dn_mm._register(MODELS, "DynNormTestImpostor", dynnorm.SwitchNorm2d)
    finally:
        MODELS.module_dict.pop("DynNormTestImpostor")


@pytest.mark.parametrize("scope", ["mmdet", "mmseg"])
@pytest.mark.parametrize("cfg", [dict(type="SN"), dict(type="SyncSN"), dict(type="EN"), dict(type="DN"),
                                 dict(type="DNB"), dict(type="DNC"), dict(type="SSN"),
                                 dict(type="AssocNorm", num_groups=8), dict(type="SwitchNorm2d", momentum=0.03)],
                         ids=lambda c: c["type"])
def test_build_norm_layer_from_downstream_scopes(scope, cfg):
    from mmcv.cnn import build_norm_layer

    with DefaultScope.overwrite_default_scope(scope):
        name, layer = build_norm_layer(dict(cfg), 64, postfix=1)
    assert name == "bn1"  # `_abbr_ = 'bn'`: the state-dict keys of BatchNorm networks
    assert type(layer) is dynnorm.get_norm_layer(cfg["type"])
    assert layer.num_features == 64
    assert layer(torch.randn(2, 64, 4, 4)).shape == (2, 64, 4, 4)


def test_unknown_keyword_from_a_group_norm_config_is_rejected():
    from mmcv.cnn import build_norm_layer

    with DefaultScope.overwrite_default_scope("mmdet"), pytest.raises(TypeError, match="num_groups"):
        build_norm_layer(dict(type="SN", num_groups=32), 64)


@pytest.mark.parametrize("scope", ["mmdet", "mmseg"])
def test_an_unknown_norm_type_in_build_norm_layer_suggests_the_closest_registered_names(scope):
    from mmcv.cnn import build_norm_layer

    with DefaultScope.overwrite_default_scope(scope):
        with pytest.raises(KeyError) as raised:
            build_norm_layer(dict(type="SNN"), 64)
        assert isinstance(raised.value, dynnorm.UnknownNormError)
        message = str(raised.value)
        assert message.startswith("Unknown norm layer 'SNN'; did you mean 'SN' or 'SSN'? available: [")
        available = eval(message.split("available: ", 1)[1])  # the names, as a list literal
        assert {"BN", "SyncBN", "GN", "LN", "IN", *dynnorm.SHORT_NAMES, "SwitchNorm2d"} <= set(available)
        assert "ResNet" not in available and "Conv2d" not in available  # norm layers only
        with pytest.raises(KeyError, match=r"did you mean 'SyncBN'\?"):  # mmengine's names are case-sensitive
            build_norm_layer(dict(type="SyncBn"), 64)
        with pytest.raises(KeyError, match=r"Unknown norm layer 'Whatever'; available: \["):
            build_norm_layer(dict(type="Whatever"), 64)
        assert type(build_norm_layer(dict(type="SN"), 64)[1]) is dynnorm.SwitchNorm2d  # known types as before


def test_other_registry_lookups_keep_mmengine_behaviour_for_unknown_types():
    assert "SNN" not in MODELS and MODELS.get("SNN") is None
    with pytest.raises(KeyError, match=r"SNN is not in the \w+::model registry") as raised:  # mmengine's message
        MODELS.build(dict(type="SNN"))
    assert not isinstance(raised.value, dynnorm.UnknownNormError)


@pytest.mark.parametrize("module", ["mm_checkpoint", "mm_runtime"])
def test_the_examples_of_the_checkpoint_policy_and_runtime_helpers_run(module):
    import doctest
    import importlib

    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(importlib.import_module(f"dynnorm.integrations.{module}"), optionflags=flags)
    assert result.attempted > 0 and result.failed == 0


def test_custom_imports_in_a_config_registers_the_layers_in_a_fresh_interpreter():
    code = (
        "import sys; from mmengine.config import Config; from mmengine.registry import MODELS\n"
        "assert 'SN' not in MODELS.module_dict\n"
        f"cfg = Config.fromfile({str(SHAPES_DET)!r})\n"
        "assert cfg.custom_imports.imports == ['dynnorm.integrations.mmengine']\n"
        "assert MODELS.module_dict['SN'].__name__ == 'SwitchNorm2d'\n"
        "assert 'mmdet' not in sys.modules\n"  # the integration itself needs only mmengine
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=300)


def test_imagenet_bn_resnet_checkpoint_loads_into_the_sn_resnet_except_the_mixture_logits(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    from mmdet.models.backbones import ResNet

    torch.manual_seed(0)
    reference = torchvision.models.resnet50()
    with torch.no_grad():  # non-trivial statistics, so that a silent non-load would be visible
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_()
    checkpoint = tmp_path / "resnet50_bn.pth"
    torch.save(reference.state_dict(), checkpoint)

    sn_resnet = ResNet(depth=50, norm_cfg=dict(type="SN"), norm_eval=False,
                       init_cfg=dict(type="Pretrained", checkpoint=str(checkpoint)))
    result = sn_resnet.load_state_dict(reference.state_dict(), strict=False)
    layers = [name for name, m in sn_resnet.named_modules() if isinstance(m, dynnorm.SwitchNorm2d)]
    assert len(layers) == 53
    assert set(result.unexpected_keys) == {"fc.weight", "fc.bias"}
    assert sorted(result.missing_keys) == sorted(f"{n}.{p}" for n in layers for p in ("mean_weight", "var_weight"))

    fresh = ResNet(depth=50, norm_cfg=dict(type="SN"), init_cfg=dict(type="Pretrained", checkpoint=str(checkpoint)))
    fresh.init_weights()  # the config path: mmengine's Pretrained init from a local file
    expected = reference.state_dict()
    for key, value in fresh.state_dict().items():
        if key in expected:
            torch.testing.assert_close(value, expected[key], msg=key)
    assert torch.equal(fresh.layer1[0].bn1.mean_weight, torch.ones(3))


# -- BatchNorm special cases -------------------------------------------------------------------------


def _resnet18(norm_cfg: dict, **kwargs):
    from mmdet.models.backbones import ResNet

    return ResNet(depth=18, base_channels=16, norm_cfg=norm_cfg, **kwargs)


def test_norm_eval_is_ignored_by_the_backbone_and_honoured_by_the_hook():
    model = _resnet18(dict(type="SN"), norm_eval=True)
    model.train()
    layers = dynnorm_layers(model)
    assert all(layer.training for layer in layers)  # mmdet only evals _BatchNorm

    runner = SimpleNamespace(model=model, logger=logging.getLogger("test"))
    dn_mm.DynNormEvalHook().before_train_iter(runner, batch_idx=0)
    assert not any(layer.training for layer in layers)
    before = [layer.running_mean.clone() for layer in layers]
    model(torch.randn(2, 3, 32, 32))
    assert all(torch.equal(b, layer.running_mean) for b, layer in zip(before, layers))

    trained = _resnet18(dict(type="SN"), norm_eval=False)
    trained.train()
    dn_mm.DynNormEvalHook().before_train_iter(SimpleNamespace(model=trained, logger=runner.logger), batch_idx=0)
    assert all(layer.training for layer in dynnorm_layers(trained))


@pytest.mark.parametrize(("distributed", "sync_bn", "enabled", "expected"), [
    (True, "torch", None, True), (True, None, None, False), (False, "torch", None, False), (True, None, True, True),
])
def test_sync_hook_follows_the_runner_sync_bn_option_when_distributed(distributed, sync_bn, enabled, expected):
    model = _resnet18(dict(type="SN"))
    runner = SimpleNamespace(model=model, distributed=distributed, world_size=2 if distributed else 1,
                             cfg=Config(dict(sync_bn=sync_bn) if sync_bn else {}), logger=logging.getLogger("test"))
    dn_mm.DynNormSyncHook(enabled=enabled).before_run(runner)
    assert {layer.sync_batch_stats for layer in dynnorm_layers(model)} == {expected}


def test_mmengine_syncbn_conversion_leaves_dynnorm_layers_intact():
    from mmengine.model import convert_sync_batchnorm, revert_sync_batchnorm

    model = _resnet18(dict(type="SyncSN"))
    assert revert_sync_batchnorm(model) is model
    assert all(type(m) is dynnorm.SyncSwitchNorm2d for m in dynnorm_layers(model))
    converted = convert_sync_batchnorm(_resnet18(dict(type="SN")))
    assert len(dynnorm_layers(converted)) == 20
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules())


def test_optimizer_constructor_removes_weight_decay_from_every_dynnorm_parameter():
    from mmdet.models.backbones import ResNet
    from mmengine.optim import build_optim_wrapper

    model = torch.nn.Sequential(ResNet(depth=18, base_channels=16, norm_cfg=dict(type="EN")),
                                torch.nn.Conv2d(128, 4, 1))
    optim_cfg = dict(optimizer=dict(type="SGD", lr=0.1, momentum=0.9, weight_decay=1e-4),
                     constructor="DynNormOptimWrapperConstructor",
                     paramwise_cfg=dict(custom_keys={"ratio_w1": dict(decay_mult=0.5)}))
    optimizer = build_optim_wrapper(model, optim_cfg).optimizer
    decay = {id(p): g.get("weight_decay", optimizer.defaults["weight_decay"])
             for g in optimizer.param_groups for p in g["params"]}
    assert len(decay) == len(list(model.parameters()))
    in_norm_layers = {id(p) for layer in dynnorm_layers(model) for p in layer.parameters()}
    for name, parameter in model.named_parameters():
        if name.endswith("ratio_w1"):
            assert decay[id(parameter)] == pytest.approx(5e-5)  # custom_keys win
        elif id(parameter) in in_norm_layers:
            assert decay[id(parameter)] == 0.0, name  # weight, bias and the ratio generator of EN
        else:
            assert decay[id(parameter)] == pytest.approx(1e-4), name

    default = build_optim_wrapper(model, dict(optim_cfg, paramwise_cfg=dict(dynnorm_decay_mult=None))).optimizer
    assert {g.get("weight_decay", 1e-4) for g in default.param_groups} == {1e-4}


def test_optimizer_constructor_gives_the_mixture_logits_a_scaled_rate_without_decay():
    from mmdet.models.backbones import ResNet
    from mmengine.optim import build_optim_wrapper

    model = torch.nn.Sequential(ResNet(depth=18, base_channels=16, norm_cfg=dict(type="SSN")), torch.nn.Conv2d(128, 4, 1))
    optim_cfg = dict(optimizer=dict(type="SGD", lr=0.2, momentum=0.9, weight_decay=1e-4),
                     constructor="DynNormOptimWrapperConstructor",
                     paramwise_cfg=dict(dynnorm_decay_mult=1.0, mixture_lr_mult=0.1,
                                        custom_keys={"layer1.0.bn1.mean_weight": dict(lr_mult=0.5)}))
    optimizer = build_optim_wrapper(model, optim_cfg).optimizer
    settings = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    logits = {id(p) for p in dynnorm.mixture_parameters(model)}
    assert len(logits) == 2 * 20
    for name, parameter in model.named_parameters():
        if name.endswith("layer1.0.bn1.mean_weight"):
            assert settings[id(parameter)] == (pytest.approx(0.1), pytest.approx(1e-4))  # custom_keys win
        elif id(parameter) in logits:
            assert settings[id(parameter)] == (pytest.approx(0.02), 0.0), name
        else:
            assert settings[id(parameter)] == (0.2, pytest.approx(1e-4)), name
    with pytest.raises(ValueError, match="mixture_lr_mult must be a non-negative number or None, got -0.1"):
        build_optim_wrapper(model, dict(optim_cfg, paramwise_cfg=dict(mixture_lr_mult=-0.1)))


def _small_mm_model():
    from mmengine.model import BaseModel

    class Small(BaseModel):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), dynnorm.SparseSwitchNorm2d(4),
                                           torch.nn.Conv2d(4, 4, 1), torch.nn.BatchNorm2d(4))

        def forward(self, inputs, data_samples=None, mode="tensor"):
            out = self.net(inputs)
            return {"loss": out.pow(3).mean() * 100} if mode == "loss" else out

    return Small()


def test_clip_hook_clips_the_logits_at_every_optimizer_step_while_training():
    from mmengine.optim import OptimWrapper

    model = _small_mm_model()
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.0))
    seen = []
    wrapper.optimizer.register_step_post_hook(lambda *_: seen.append(
        float(torch.linalg.vector_norm(torch.cat([p.grad for p in dynnorm.mixture_parameters(model)])))))
    runner = SimpleNamespace(model=model, optim_wrapper=wrapper)
    hook = dn_mm.ClipMixtureGradNormHook(max_norm=1e-6)

    def step() -> None:  # backward, optimizer step, zero_grad
        wrapper.update_params(model(torch.randn(2, 3, 6, 6), mode="loss")["loss"])

    hook.before_train(runner)
    step()
    hook.after_train(runner)
    step()
    assert seen[0] <= 1e-6 * (1 + 1e-4) and seen[1] > 1e-5


def test_recalibration_hook_averages_training_batches_through_the_data_preprocessor():
    model = _small_mm_model()
    batches = [{"inputs": torch.randn(2, 3, 6, 6)} for _ in range(3)]
    runner = SimpleNamespace(model=model, train_dataloader=batches, logger=logging.getLogger("test"))
    expected = copy.deepcopy(model.net)
    assert dynnorm.recalibrate(expected, [b["inputs"] for b in batches + batches[:2]]) == 5
    dn_mm.RecalibrateBatchStatisticsHook(num_batches=5).before_val_epoch(runner)
    for name, value in expected.state_dict().items():
        assert torch.equal(model.net.state_dict()[name], value), name


def test_conv_bn_fusion_and_complexity_tools_run_on_dynnorm_models():
    from mmcv.cnn import fuse_conv_bn
    from mmcv.cnn import get_model_complexity_info as mmcv_complexity
    from mmengine.analysis import get_model_complexity_info

    model = _resnet18(dict(type="SN"))
    model.eval()  # mmdet's ResNet.train() returns None
    x = torch.randn(1, 3, 32, 32)
    expected = model(x)
    fused = fuse_conv_bn(model)
    assert len(dynnorm_layers(fused)) == 20  # not BatchNorm: not folded into the convolutions
    for a, b in zip(expected, fused(x)):
        torch.testing.assert_close(a, b)
    info = get_model_complexity_info(model, input_shape=(3, 32, 32), show_table=False, show_arch=False)
    assert info["params"] == sum(p.numel() for p in model.parameters())
    assert info["flops"] > 0
    flops, params = mmcv_complexity(model, (3, 32, 32), print_per_layer_stat=False, as_strings=False)
    assert params == info["params"] and flops > 0


@pytest.mark.parametrize("norm", ["SN", "EN", "DNB", "AssocNorm"])
def test_roi_heads_accept_zero_rois(norm):
    cfg = Config.fromfile(SHAPES_DET)
    norm_cfg = dict(type=norm, num_groups=8) if norm == "AssocNorm" else dict(type=norm)
    cfg.model.roi_head.bbox_head.norm_cfg = norm_cfg
    cfg.model.roi_head.mask_head.norm_cfg = norm_cfg
    model = build_model(cfg).train()
    cls_score, bbox_pred = model.roi_head.bbox_head(torch.zeros(0, 64, 7, 7, requires_grad=True))
    masks = model.roi_head.mask_head(torch.zeros(0, 64, 14, 14))
    assert cls_score.shape == (0, 4) and bbox_pred.shape == (0, 12) and masks.shape == (0, 3, 28, 28)
    (cls_score.sum() + bbox_pred.sum() + masks.sum()).backward()


# -- configs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [p for p in CONFIGS], ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_builds_its_model(path):
    cfg = Config.fromfile(path)
    assert cfg.default_scope in ("mmdet", "mmseg")
    model = build_model(cfg)  # builds without data, weights or network (init_weights is not called)
    norm_types = {type(m) for m in dynnorm_layers(model)}
    named = path.name
    for key, cls in {"_sn": dynnorm.SwitchNorm2d, "_syncsn": dynnorm.SyncSwitchNorm2d, "_en": dynnorm.ExemplarNorm2d,
                     "_dnb": dynnorm.DynamicNormB2d, "_assocnorm": dynnorm.AssociateNorm2d}.items():
        if f"{key}_" in named or f"{key}-all_" in named:
            assert norm_types == {cls}
            assert "dynnorm.integrations.mmengine" in cfg.custom_imports.imports
            break
    else:
        assert not norm_types
    if norm_types and cfg.get("optim_wrapper"):
        assert cfg.optim_wrapper.constructor == "DynNormOptimWrapperConstructor"
    if "_coco" in named or "_cityscapes" in named:
        assert cfg.train_dataloader.batch_size == 2


def test_coco_configs_follow_one_data_root():
    from dynnorm.integrations.mm_runtime import replace_data_root

    for path in [p for p in CONFIGS if "_coco" in p.name]:
        cfg = Config.fromfile(path)
        assert replace_data_root(cfg, "/datasets/coco") >= 4, path.name  # train/val data_root, val/test ann_file
        assert "data/coco" not in cfg.pretty_text, path.name
        dataset = cfg.train_dataloader.dataset
        assert (dataset.get("dataset") or dataset).data_root == "/datasets/coco/"
        for name in ("val_dataloader", "test_dataloader"):
            assert cfg[name].dataset.data_root == "/datasets/coco/"
        for name in ("val_evaluator", "test_evaluator"):
            assert cfg[name].ann_file == "/datasets/coco/annotations/instances_val2017.json"


def _optim_wrapper(cfg: Config, model: torch.nn.Module):
    from mmengine.optim import build_optim_wrapper

    return build_optim_wrapper(model, cfg.optim_wrapper)


def _check_one_training_step(model, data, optim_wrapper):
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("mean_weight")}
    frozen = {n for n, p in model.named_parameters() if n in before and not p.requires_grad}  # frozen_stages
    assert len(before) > len(frozen), "the model has no trainable SN layer"
    model.train()
    losses = model.train_step(data, optim_wrapper)
    assert all(torch.isfinite(v).all() for k, v in losses.items() if "loss" in k)
    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert sorted(changed) == sorted(set(before) - frozen)  # every trainable SN layer got gradients and moved


@pytest.mark.parametrize("config", ["mask-rcnn_r50_fpn_sn-all_2x_coco.py",
                                    "ssdlite_mobilenetv2-scratch_sn_8xb2-600e_coco.py"])
def test_one_detection_training_step_with_sn(config):
    from mmdet.testing import demo_mm_inputs

    cfg = Config.fromfile(ROOT / "configs/mmdet" / config)
    if "mask-rcnn" in config:  # fewer sampled RoIs than the 512 per image of the config: same code path, less time
        cfg.model.train_cfg.rcnn.sampler.num = 64
    model = build_model(cfg)
    size = 320 if "ssdlite" in config else 128
    data = demo_mm_inputs(2, [[3, size, size]] * 2, num_items=[2, 3], num_classes=80, with_mask=True)
    _check_one_training_step(model, data, _optim_wrapper(cfg, model))


def test_one_segmentation_training_step_with_sn():
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    cfg = Config.fromfile(ROOT / "configs/mmseg/deeplabv3_r50-d8_sn_4xb2-80k_cityscapes-512x1024.py")
    size = (64, 64)
    cfg.model.data_preprocessor.size = size
    model = build_model(cfg)
    samples = []
    for _ in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=size, ori_shape=size, pad_shape=size))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 19, (1, *size)))
        samples.append(sample)
    data = dict(inputs=[torch.randint(0, 256, (3, *size), dtype=torch.uint8) for _ in range(2)], data_samples=samples)
    _check_one_training_step(model, data, _optim_wrapper(cfg, model))
