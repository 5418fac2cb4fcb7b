"""Extra parameters and multiply-adds of each normalizer on ResNet-50 and MobileNetV2 (224x224), relative to BN.

    python -m benchmarks.norm_cost [--networks resnet50 mobilenet_v2] [--norms BN GN SN ...]
                                   [--out benchmarks/results/norm_cost]

Every network is torchvision's, built with ``norm_layer=`` the normalizer, by name through the registry
(:func:`dynnorm.create_norm`; GN and AssocNorm with 32 groups, or ``gcd(32, C)`` for the layers whose width 32
does not divide, as :class:`dynnorm.GroupNorm2d`).

- **Parameters**: all trainable parameters of the network (buffers such as running statistics are not
  parameters).
- **Multiply-adds** per image: one 224x224 image in evaluation mode, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (matrix products: convolutions, linear layers, ``mm``/``bmm``;
  multiply-adds = FLOPs / 2) with dynnorm's reference PyTorch ops (``dynnorm.fast_path(False)``), so the
  matrix products of the layers' small heads are counted. As in the usual figures (ResNet-50: 4.1 G), the
  elementwise arithmetic of normalization itself is not counted, for BN or any other layer.
- **Cross-check**: the heads' multiply-adds from the layer shapes alone (:func:`head_multiply_adds`); the
  counter's excess over BN must equal it.

Writes ``<out>.json`` (every measurement) and ``<out>.md`` (the tables).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import dynnorm
from benchmarks.results_io import RESULTS_DIR, command_line, write_atomically

NormFactory = Callable[[int], nn.Module]


def _gcd_groups(name: str, num_features: int) -> nn.Module:
    """``create_norm(name, C, num_groups=gcd(32, C))``: 32 groups where 32 divides the width."""
    return dynnorm.create_norm(name, num_features, num_groups=math.gcd(32, num_features))


#: The normalizers measured, by table label (:func:`dynnorm.display_name`), each built by name.
NORMS: dict[str, NormFactory] = {
    dynnorm.display_name(name): functools.partial(_gcd_groups if name == "AssocNorm" else dynnorm.create_norm, name)
    for name in dynnorm.list_norms(sync=False, torch_layers=True)
}

#: torchvision networks measured, by command-line name: (table label, builder).
NETWORKS: dict[str, tuple[str, Callable[..., nn.Module]]] = {
    "resnet50": ("ResNet-50", torchvision.models.resnet50),
    "mobilenet_v2": ("MobileNetV2", torchvision.models.mobilenet_v2),
}

#: Weight matrices that a layer multiplies by more than one vector per image: AssocNorm's encoder embeds
#: both key features (the group means and the group variances).
MATRIX_USES: dict[tuple[type[nn.Module], str], int] = {(dynnorm.AssociateNorm2d, "encoder_weight"): 2}


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def multiply_adds(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 224, 224)) -> int:
    """Multiply-adds of one evaluation-mode forward on a zero input of ``input_shape``, per sample.

    Counted by ``FlopCounterMode`` (matrix products only; multiply-adds = FLOPs / 2) with dynnorm's
    reference ops. ``model`` is left in evaluation mode.
    """
    model.eval()
    counter = FlopCounterMode(display=False)
    with dynnorm.fast_path(False), counter:
        model(torch.zeros(input_shape))
    return counter.get_total_flops() // 2 // input_shape[0]


def head_multiply_adds(model: nn.Module) -> int:
    """Multiply-adds per image of the dynnorm layers' heads, from their shapes alone.

    Every weight matrix (a parameter with two or more dimensions, ``out x in``) of a dynnorm layer multiplies
    one ``in``-vector per image, ``out * in`` multiply-adds, except those in :data:`MATRIX_USES`. At batch 1
    this also holds for DN-C, whose generator runs once per batch.
    """
    total = 0
    for module in model.modules():
        if dynnorm.is_dynnorm(module):
            for name, parameter in module.named_parameters(recurse=False):
                if parameter.dim() >= 2:
                    total += parameter.numel() * MATRIX_USES.get((type(module), name), 1)
    return total


def measure(build: Callable[..., nn.Module], norm: NormFactory,
            input_shape: tuple[int, ...] = (1, 3, 224, 224)) -> dict[str, int]:
    """``parameters``, ``multiply_adds`` (counter) and ``head_multiply_adds`` (shapes) of ``build(norm_layer=norm)``."""
    model = build(norm_layer=norm)
    return {"parameters": parameter_count(model), "multiply_adds": multiply_adds(model, input_shape),
            "head_multiply_adds": head_multiply_adds(model)}


def relative_to_baseline(rows: dict[str, dict[str, int]], baseline: str = "BN") -> dict[str, dict[str, float]]:
    """Each row with its excess over ``baseline``: ``extra_parameters``, ``extra_parameters_pct``,
    ``extra_multiply_adds``, ``extra_multiply_adds_pct`` and ``cross_check`` (the counter's excess equals
    the heads' multiply-adds from the shapes)."""
    base = rows[baseline]
    table = {}
    for norm, row in rows.items():
        extra_params = row["parameters"] - base["parameters"]
        extra_macs = row["multiply_adds"] - base["multiply_adds"]
        table[norm] = {**row, "extra_parameters": extra_params,
                       "extra_parameters_pct": 100 * extra_params / base["parameters"],
                       "extra_multiply_adds": extra_macs,
                       "extra_multiply_adds_pct": 100 * extra_macs / base["multiply_adds"],
                       "cross_check": extra_macs == row["head_multiply_adds"]}
    return table


def _count(value: float) -> str:
    for limit, suffix, digits in ((1e9, "G", 2), (1e6, "M", 2), (1e3, "k", 1)):
        if abs(value) >= limit:
            return f"{value / limit:.{digits}f}{suffix}"
    return f"{value:.0f}"


def markdown(results: dict[str, dict[str, dict]]) -> str:
    """One table per network: parameters and multiply-adds, each with the excess over BN."""
    sections = []
    for network, table in results.items():
        lines = [f"**{network}** (224x224, per image)", "",
                 "| norm | parameters | extra | extra % | multiply-adds | extra | extra % | heads (shapes) |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for norm, row in table.items():
            check = "" if row["cross_check"] else " (counter differs)"
            lines.append(f"| {norm} | {_count(row['parameters'])} | {_count(row['extra_parameters'])} | "
                         f"{row['extra_parameters_pct']:+.3f}% | {_count(row['multiply_adds'])} | "
                         f"{_count(row['extra_multiply_adds'])} | {row['extra_multiply_adds_pct']:+.3f}% | "
                         f"{_count(row['head_multiply_adds'])}{check} |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--norms", nargs="+", choices=list(NORMS), default=list(NORMS))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "norm_cost")
    args = parser.parse_args(argv)
    norms = ["BN", *(n for n in args.norms if n != "BN")]
    results = {}
    for key in args.networks:
        label, build = NETWORKS[key]
        rows = {}
        for norm in norms:
            rows[norm] = measure(build, NORMS[norm])
            print(f"{label:>12} {norm:>9}: {rows[norm]['parameters']:>10,d} parameters, "
                  f"{rows[norm]['multiply_adds']:>14,d} multiply-adds", flush=True)
        results[label] = relative_to_baseline(rows)
    command = command_line(__file__, sys.argv[1:] if argv is None else argv)
    summary = {"command": command, "torch": torch.__version__, "torchvision": torchvision.__version__,
               "python": platform.python_version(), "results": results}
    write_atomically(args.out.with_suffix(".json"), json.dumps(summary, indent=1) + "\n")
    write_atomically(args.out.with_suffix(".md"), markdown(results))
    print(markdown(results))
    return summary


if __name__ == "__main__":
    main()
