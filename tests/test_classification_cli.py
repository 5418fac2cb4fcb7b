"""The classification CLI, model and data modules: parsing, custom norms, backbones, errors, optimizer groups."""
from __future__ import annotations

import functools
import pickle
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

pytest.importorskip("lightning")

import dynnorm  # noqa: E402
from tasks.classification import (  # noqa: E402
    CIFARDataModule, GroupNorm2d, ImageClassifier, ImageFolderDataModule, build_backbone, norm_spec, resolve_norm,
)
from tasks.classification.cli import main  # noqa: E402
from tasks.synthetic_shapes import ShapesSpec, ensure_dataset  # noqa: E402

pytestmark = pytest.mark.lightning

ROOT = Path(__file__).resolve().parent.parent
SN_CONFIG = ROOT / "configs" / "classification" / "resnet20_sn.yaml"


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", [sys.argv[0]])  # the CLI gets its arguments from args=


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return ensure_dataset(tmp_path_factory.getbasetemp() / "shapes_small", ShapesSpec(num_train=24, num_val=12, image_size=32))


def norm_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if dynnorm.is_dynnorm(m) or isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]


def test_print_config_shows_the_resolved_norm_and_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(SN_CONFIG), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "norm: SN" in printed
    assert "class_path: tasks.classification.SyntheticShapesDataModule" in printed
    assert "class_path: dynnorm.integrations.lightning.ImportanceRatioLogger" in printed


def test_config_with_a_custom_norm_class_and_init_args(shapes_root, tmp_path):
    custom = tmp_path / "custom_norm.yaml"
    custom.write_text(
        "model:\n"
        "  norm:\n"
        "    class_path: dynnorm.SwitchNorm2d\n"
        "    init_args: {using_bn: false, eps: 1.0e-3}\n"
        f"data:\n  init_args: {{root: {shapes_root}, num_train: 24, num_val: 12, image_size: 32}}\n"
    )
    cli = main(["--config", str(SN_CONFIG), "--config", str(custom)], run=False)
    layers = norm_layers(cli.model)
    assert len(layers) == 21  # ResNet-20: stem + 9 blocks x 2 + 2 projection shortcuts
    assert all(type(m) is dynnorm.SwitchNorm2d and not m.using_bn and m.eps == 1e-3 for m in layers)
    assert cli.model.hparams.num_classes == 3  # linked from the data module
    assert cli.model.hparams.norm["class_path"] == "dynnorm.switchable.SwitchNorm2d"
    assert cli.model.hparams.norm["init_args"]["using_bn"] is False
    assert resolve_norm(cli.model.hparams.norm)(4).using_bn is False  # the recorded spec rebuilds the layer


def test_norm_names_paths_and_specs():
    assert type(resolve_norm("BN")(8)) is nn.BatchNorm2d
    assert resolve_norm("GN")(24).num_groups == 8  # gcd(32, 24)
    assert type(resolve_norm("DNB")(8)) is dynnorm.DynamicNormB2d
    assert type(resolve_norm("dynnorm.ExemplarNorm2d")(8)) is dynnorm.ExemplarNorm2d
    assert resolve_norm({"type": "AssocNorm", "num_groups": 4})(8).num_groups == 4
    with pytest.raises(ValueError, match="Unknown norm layer 'XN'"):
        resolve_norm("XN")
    with pytest.raises(ValueError, match="bogus"):
        resolve_norm({"class_path": "dynnorm.SwitchNorm2d", "init_args": {"bogus": 1}})
    assert norm_spec(GroupNorm2d) == {"class_path": "dynnorm.torch_layers.GroupNorm2d"}
    with pytest.raises(ValueError, match="cannot describe"):
        norm_spec(lambda c: nn.BatchNorm2d(c))


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "mobilenet_v2", "cifar_resnet"])
def test_every_backbone_takes_the_norm_everywhere(backbone):
    options = {} if backbone == "cifar_resnet" else {"small_input": True}
    model = build_backbone(backbone, 5, resolve_norm("SN"), **options)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert len(norm_layers(model)) == {"resnet18": 20, "resnet50": 53, "mobilenet_v2": 52, "cifar_resnet": 21}[backbone]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_resnet_recipe_options_zero_init_the_last_norm_of_each_block_and_add_dropout():
    plain = build_backbone("resnet50", 5, resolve_norm("SN"))
    recipe = build_backbone("resnet50", 5, resolve_norm("SN"), zero_init_residual=True, dropout=0.5)
    assert recipe.state_dict().keys() == plain.state_dict().keys()  # torchvision checkpoints still load
    last = {f"{name}.bn3" for name, m in recipe.named_modules() if type(m).__name__ == "Bottleneck"}
    assert len(last) == 16
    for name, layer in recipe.named_modules():
        if isinstance(layer, dynnorm.SwitchNorm2d):
            assert torch.equal(layer.weight, torch.zeros_like(layer.weight) if name in last else torch.ones_like(layer.weight)), name
    assert [m.p for m in recipe.modules() if isinstance(m, nn.Dropout)] == [0.5]
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    assert all(bool((m.weight == 1).all()) for m in norm_layers(plain))
    assert recipe.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(ValueError, match="dropout must be a probability in \\[0, 1\\), got 1.5"):
        build_backbone("resnet18", 5, nn.BatchNorm2d, dropout=1.5)


def test_resnet50_sn_config_follows_the_sn_imagenet_recipe():
    model = yaml.safe_load((ROOT / "configs" / "classification" / "resnet50_sn.yaml").read_text())["model"]
    assert model["backbone_options"] == {"zero_init_residual": True, "dropout": 0.5}
    network = build_backbone(model["backbone"], 10, resolve_norm(model["norm"]), **model["backbone_options"])
    assert [m.p for m in network.modules() if isinstance(m, nn.Dropout)] == [0.5]
    assert all(not bool(block.bn3.weight.any()) for block in network.modules() if hasattr(block, "bn3"))


def test_unknown_backbone_option_is_a_clear_error():
    with pytest.raises(ValueError, match="does not take options"):
        build_backbone("resnet18", 3, nn.BatchNorm2d, depth=20)


def test_norm_weight_decay_groups():
    model = ImageClassifier(norm="SN", num_classes=3, backbone_options={"depth": 8}, weight_decay=1e-4,
                            norm_weight_decay=0.0, optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    optimizer = model.configure_optimizers()
    decay, no_decay = optimizer.param_groups
    sn_params = {id(p) for m in model.modules() if isinstance(m, dynnorm.SwitchNorm2d) for p in m.parameters()}
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (1e-4, 0.0)
    assert {id(p) for p in no_decay["params"]} == sn_params and len(sn_params) == 9 * 4  # ResNet-8: 9 layers x (weight, bias, 2 logits)
    everything = ImageClassifier(norm="SN", num_classes=3, backbone_options={"depth": 8},
                                 optimizer=functools.partial(torch.optim.AdamW, lr=1e-3)).configure_optimizers()
    assert len(everything.param_groups) == 1 and everything.param_groups[0]["weight_decay"] == 5e-4
    with pytest.warns(UserWarning, match="weight_decay=0.1 is overridden"):
        ImageClassifier(num_classes=3, backbone_options={"depth": 8},
                        optimizer=functools.partial(torch.optim.SGD, lr=0.1, weight_decay=0.1)).configure_optimizers()


def test_top5_accuracy_only_with_more_than_five_classes():
    assert "acc5" in ImageClassifier(num_classes=10, backbone_options={"depth": 8}).val_metrics
    assert "acc5" not in ImageClassifier(num_classes=3, backbone_options={"depth": 8}).val_metrics


def _write_cifar100(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        data = torch.arange(count * 3072, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(count, 3072).numpy()
        (folder / split).write_bytes(pickle.dumps({"data": data, "fine_labels": list(range(count))}))


def test_cifar_reads_python_batches_and_names_missing_files(tmp_path):
    _write_cifar100(tmp_path / "cifar-100-python", count=6)
    data = CIFARDataModule(root=str(tmp_path), variant="cifar100", batch_size=2)
    assert data.num_classes == 100
    data.prepare_data()
    data.setup("fit")
    assert len(data.train_set) == 6 and data.train_set.images.shape == (6, 3, 32, 32)
    image, label = data.val_set[5]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 5
    missing = tmp_path / "elsewhere"
    with pytest.raises(FileNotFoundError, match=str(missing / "cifar-10-batches-py" / "data_batch_1")):
        CIFARDataModule(root=str(missing)).prepare_data()


def test_image_folder_missing_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "train")):
        ImageFolderDataModule(root=str(tmp_path)).num_classes
