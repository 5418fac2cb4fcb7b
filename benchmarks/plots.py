"""Figures of the measured speed, drawn from the benchmarks' JSON results (no measuring).

    python -m benchmarks.plots [--results benchmarks/results]

- ``benchmark_network.png`` (from ``benchmark_network.json``): the time of a training step and of an evaluation
  forward of each network against the same network with BatchNorm, per batch size, one line per normalizer;
- ``benchmark_layers.png`` (from ``benchmark.json``): the time of one layer as shipped (float32 training
  forward+backward) against ``nn.BatchNorm2d`` at every measured shape.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.results_io import RESULTS_DIR


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_networks(result: dict, path: Path) -> None:
    """One panel per (network, mode): ratio to BatchNorm against the batch size, a line per normalizer."""
    plt = _pyplot()
    records = result["records"]
    networks = list(dict.fromkeys(r["network"] for r in records))
    modes = list(dict.fromkeys(r["mode"] for r in records))
    figure, axes = plt.subplots(len(networks), len(modes), figsize=(5.2 * len(modes), 3.6 * len(networks)),
                                squeeze=False, sharey=True)
    for row, network in enumerate(networks):
        for column, mode in enumerate(modes):
            ax = axes[row][column]
            mine = [r for r in records if r["network"] == network and r["mode"] == mode]
            for norm in dict.fromkeys(r["norm"] for r in mine):
                points = sorted((r["batch_size"], r["ratio_bn"]) for r in mine if r["norm"] == norm)
                ax.plot(*zip(*points), marker="o", label=norm, linestyle="--" if norm == "BN" else "-")
            ax.set_xscale("log", base=2)
            sizes = sorted({r["batch_size"] for r in mine})
            ax.set_xticks(sizes, [str(size) for size in sizes])
            ax.set_title(f"{network}, {mode}", fontsize=10)
            ax.set_xlabel("batch size")
            ax.grid(alpha=0.3)
        axes[row][0].set_ylabel("time / time with BatchNorm")
    axes[0][-1].legend(fontsize=8, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_layers(result: dict, path: Path) -> None:
    """Bars per layer as shipped: float32 training forward+backward time against BatchNorm, a bar per shape."""
    plt = _pyplot()
    records = [r for r in result["records"]
               if r["dtype"] == "float32" and r["mode"] == "train fwd+bwd" and r["impl"] == "fast"]
    layers = list(dict.fromkeys(r["layer"] for r in records))
    shapes = list(dict.fromkeys("×".join(map(str, r["shape"])) for r in records))
    width = 0.8 / len(shapes)
    figure, ax = plt.subplots(figsize=(10, 3.8))
    for index, shape in enumerate(shapes):
        values = {r["layer"]: r["ratio_bn"] for r in records if "×".join(map(str, r["shape"])) == shape}
        ax.bar([i + index * width for i, layer in enumerate(layers) if layer in values],
               [values[layer] for layer in layers if layer in values], width, label=shape)
    ax.axhline(1, color="grey", linewidth=1)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(layers))], layers, fontsize=9)
    ax.set_ylabel("time / time of nn.BatchNorm2d")
    ax.set_title("one layer as shipped, float32 training forward+backward, CPU", fontsize=10)
    ax.legend(title="input shape", fontsize=8, title_fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of the JSON results and figures")
    args = parser.parse_args(argv)
    plot_networks(json.loads((args.results / "benchmark_network.json").read_text()),
                  args.results / "benchmark_network.png")
    plot_layers(json.loads((args.results / "benchmark.json").read_text()), args.results / "benchmark_layers.png")
    print(f"wrote {args.results / 'benchmark_network.png'} and {args.results / 'benchmark_layers.png'}")


if __name__ == "__main__":
    main()
