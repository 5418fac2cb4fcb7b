"""Speed and memory of the dynnorm layers against nn.BatchNorm2d, nn.GroupNorm and the published SN algorithm.

For every shape, dtype and mode (training forward+backward, training forward, evaluation forward) all
layers are built once, warmed up, then timed **interleaved**: each repeat times every layer once, in a
fresh random order, so that load from other jobs on a shared machine hits every layer alike; the figure
is the median over the repeats, and the ratio to ``nn.BatchNorm2d`` is the median over the repeats of the
ratio within a repeat. Columns: the layer as shipped ("fast"), the same layer with the fused kernels
switched off (``dynnorm.fast_path(False)``, "reference ops") for the SN family, and the layer under
``torch.compile`` (``--compile``); on CUDA also the layer on its Triton kernels ("triton",
``dynnorm.set_cuda_kernels('triton')``). "SN (published)" is :class:`PublishedSwitchNorm2d` below, the SN
equations (Luo et al., ICLR 2019) written as straightforward PyTorch ops. Memory: bytes of the tensors
saved for backward (unique storages, ``torch.autograd.graph.saved_tensors_hooks``) and the peak of
memory allocated during forward+backward, both relative to the input's size.

The small-batch shapes (``--small-shapes``, default 2x32x14x14), where per-call overhead rather than
memory traffic decides, get their own table with more repeats (``--small-repeats``) and the number of
ATen ops one training forward+backward dispatches (``torch.profiler``; nested ops included).

Examples::

    python -m benchmarks.benchmark                             # CPU float32, the issue shapes, 1 thread
    python -m benchmarks.benchmark --compile --dtypes float32 bfloat16
    python -m benchmarks.benchmark --device cuda --dtypes float32 bfloat16 --compile \
        --small-shapes 2,32,14,14 --shapes 2,256,50,84 2,64,200,336   # the GPU tables (reference, triton, cuDNN)

Writes ``benchmarks/results/benchmark.json`` and ``benchmarks/results/benchmark.md`` (``--out`` changes the stem).
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

import dynnorm
from benchmarks.results_io import RESULTS_DIR, command_line, write_atomically

DEFAULT_SHAPES = ((8, 64, 56, 56), (2, 256, 32, 32), (32, 128, 28, 28))
DEFAULT_SMALL_SHAPES = ((2, 32, 14, 14),)
MODES = ("train fwd+bwd", "train fwd", "eval fwd")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


class PublishedSwitchNorm2d(nn.Module):
    r"""The published Switchable Normalization algorithm as plain PyTorch ops (the "reference SN" column).

    Written from the equations: IN moments over ``H*W`` (unbiased variance, as the published method),
    LN and BN moments derived from them via ``E[x^2] = var + mean^2``, two softmaxes over (IN, LN, BN),
    ``y = gamma * (x - mu) / sqrt(sigma^2 + eps) + beta``, SN's momentum convention
    (``running = m * running + (1 - m) * batch``) and running statistics in evaluation for the BN term.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.9) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.mean_weight = nn.Parameter(torch.ones(3))
        self.var_weight = nn.Parameter(torch.ones(3))
        self.register_buffer("running_mean", torch.zeros(1, num_features, 1))
        self.register_buffer("running_var", torch.zeros(1, num_features, 1))

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        x = x.view(n, c, -1)
        mean_in = x.mean(-1, keepdim=True)
        var_in = x.var(-1, keepdim=True)
        mean_ln = mean_in.mean(1, keepdim=True)
        second_in = var_in + mean_in**2
        var_ln = second_in.mean(1, keepdim=True) - mean_ln**2
        if self.training:
            mean_bn = mean_in.mean(0, keepdim=True)
            var_bn = second_in.mean(0, keepdim=True) - mean_bn**2
            with torch.no_grad():
                self.running_mean.mul_(self.momentum).add_((1 - self.momentum) * mean_bn)
                self.running_var.mul_(self.momentum).add_((1 - self.momentum) * var_bn)
        else:
            mean_bn, var_bn = self.running_mean, self.running_var
        mean_w = torch.softmax(self.mean_weight, 0)
        var_w = torch.softmax(self.var_weight, 0)
        mean = mean_w[0] * mean_in + mean_w[1] * mean_ln + mean_w[2] * mean_bn
        var = var_w[0] * var_in + var_w[1] * var_ln + var_w[2] * var_bn
        x = (x - mean) / (var + self.eps).sqrt()
        return x.view(n, c, h, w) * self.weight + self.bias


class PerSampleFloor(nn.Module):
    """Not a normalizer: the least work of any layer whose statistics come from each sample, in PyTorch ops.

    Subtracts each (n, c) plane's mean: one reduction over the input (``x.sum``) and one pass of
    evaluation-mode ``torch.batch_norm`` over the ``(1, N * C, H * W)`` view with those means as its
    running mean. A real layer also needs the variance and the mixture. BatchNorm in evaluation needs
    only the one pass, so this row bounds from below what an eval-mode SN/EN/DN/AssocNorm built from
    PyTorch ops can reach against BN; doing better needs a kernel that reads each sample once. Timed in
    "eval fwd" only.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        n, c = x.shape[:2]
        rows = x.reshape(1, n * c, -1)
        mean = rows.sum(2, dtype=torch.float32).view(n * c) / rows.shape[2]
        ones = torch.ones_like(mean)
        return torch.batch_norm(rows, None, None, mean, ones, False, 0.0, 0.0, False).view(x.shape)


class WithoutFastPath(nn.Module):
    """Runs ``layer`` with the fused kernels switched off (the straightforward reference ops)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        with dynnorm.fast_path(False):
            return self.layer(x)


class WithTritonKernels(nn.Module):
    """Runs ``layer`` with the Triton kernels on CUDA (``dynnorm.set_cuda_kernels('triton')``)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        previous = dynnorm.cuda_kernels()
        dynnorm.set_cuda_kernels("triton")
        try:
            return self.layer(x)
        finally:
            dynnorm.set_cuda_kernels(previous)


PUBLISHED_SN = "SN (published)"
PER_SAMPLE_FLOOR = "per-sample floor"  # timed in "eval fwd" only, never compiled
OP_NAMESPACES = ("aten", "dynnorm")  # counted at the small-batch shapes: PyTorch's ops and this package's own


def layer_factories() -> dict[str, Callable[[int], nn.Module]]:
    """Label -> ``factory(num_channels)`` of every benchmarked layer; ``BN`` first (the ratios' base).

    BatchNorm, GroupNorm (32 groups) and every dynnorm layer are built by name through the registry
    (:func:`dynnorm.create_norm`, labels from :func:`dynnorm.display_name`), with the published SN
    algorithm after GN and the per-sample floor last.
    """
    registry = {dynnorm.display_name(name): functools.partial(dynnorm.create_norm, name)
                for name in dynnorm.list_norms(sync=False, torch_layers=True)}
    baselines = {label: registry.pop(label) for label in ("BN", "GN")}
    return {**baselines, PUBLISHED_SN: PublishedSwitchNorm2d, **registry, PER_SAMPLE_FLOOR: PerSampleFloor}


REFERENCE_OPS_OF = ("SN", "EN", "DN-B", "AssocNorm")  # also timed with the fused kernels off
TRITON_LAYERS = ("SN", "SSN", "EN", "DN", "DN-B", "DN-C", "AssocNorm")  # also timed with the Triton kernels on CUDA


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``), or ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def keep_freed_memory_mapped() -> bool:
    """Ask glibc to serve large blocks from its heap and never return freed memory to the system.

    By default glibc maps blocks above a threshold that moves with the allocation history and unmaps them
    when freed, so an output of several MB may fault in fresh pages on every call (BatchNorm's evaluation
    time at 8x64x56x56 then swings between about 0.3 and 2.5 ms from one run to the next). With both
    thresholds at 1 GiB every layer reuses warm memory and the tables time the kernels, as under jemalloc or
    tcmalloc. Returns whether the settings took effect (``False`` off glibc).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if platform.system() != "Linux" or name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        return False
    mmap_threshold, trim_threshold = -3, -1  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD in <malloc.h>
    return bool(libc.mallopt(mmap_threshold, 1 << 30)) and bool(libc.mallopt(trim_threshold, 1 << 30))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(layer: nn.Module, x: Tensor, grad: Tensor, mode: str) -> Callable[[], None]:
    """One timed call: forward (+ backward to the input and parameters) in ``mode``."""
    params = [p for p in layer.parameters() if p.requires_grad]
    if mode == "train fwd+bwd":

        def step() -> None:
            out = layer(x)
            torch.autograd.grad(out, [x, *params], grad, allow_unused=True)

    elif mode == "train fwd":

        def step() -> None:
            layer(x)

    else:

        def step() -> None:
            with torch.no_grad():
                layer(x)

    return step


def saved_tensor_bytes(layer: nn.Module, x: Tensor) -> int:
    """Bytes of the unique storages autograd saves for backward in one training forward."""
    storages: dict[tuple[int, str], int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        storages[(storage.data_ptr(), str(t.device))] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    return sum(storages.values())


def peak_memory_bytes(layer: nn.Module, x: Tensor, grad: Tensor) -> int | None:
    """Peak of the memory allocated during one training forward+backward, above what existed before.

    CUDA: the caching allocator's peak. CPU: ``torch.distributed._tools.mem_tracker.MemTracker``
    (tracks tensor storages); ``None`` if unavailable.
    """
    params = [p for p in layer.parameters() if p.requires_grad]
    if x.device.type == "cuda":
        synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        base = torch.cuda.memory_allocated(x.device)
        out = layer(x)
        grads = torch.autograd.grad(out, [x, *params], grad, allow_unused=True)
        del out, grads
        synchronize(x.device)
        return torch.cuda.max_memory_allocated(x.device) - base
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError:
        return None
    tracker = MemTracker()
    leaf = x.detach().requires_grad_()
    tracker.track_external(layer, leaf, grad)  # known before: not counted as allocated by the layer
    with tracker:
        out = layer(leaf)
        out.backward(grad)
        del out
    snapshot = tracker.get_tracker_snapshot("peak")
    return int(snapshot[x.device]["Total"]) - leaf.nbytes - grad.nbytes


def build_layers(
    names: list[str], channels: int, device: torch.device, dtype: torch.dtype, compile_layers: list[str],
    reference_ops: bool,
) -> dict[tuple[str, str], nn.Module]:
    """``{(name, implementation): layer}``; implementations ``fast`` (as shipped: the fused CPU operators on CPU,
    the reference ops on CUDA), ``triton`` (CUDA only), ``reference ops``, ``compiled``."""
    factories = layer_factories()
    layers: dict[tuple[str, str], nn.Module] = {}
    for name in names:
        torch.manual_seed(0)
        layers[(name, "fast")] = factories[name](channels).to(device)
        if name == "GN" and dtype != torch.float32:  # GroupNorm has no mixed-dtype kernel on CUDA
            layers[(name, "fast")].to(dtype)
        if device.type == "cuda" and name in TRITON_LAYERS:
            torch.manual_seed(0)
            layers[(name, "triton")] = WithTritonKernels(factories[name](channels).to(device))
        if reference_ops and name in REFERENCE_OPS_OF:
            torch.manual_seed(0)
            layers[(name, "reference ops")] = WithoutFastPath(factories[name](channels).to(device))
        if name in compile_layers and name != PER_SAMPLE_FLOOR:
            torch.manual_seed(0)
            # Every dynnorm class shares DynNormBase.forward: many separately compiled layers need more cache
            # entries per code object than dynamo's default (a network compiled as a whole is one frame).
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            torch._dynamo.config.accumulated_recompile_limit = max(
                torch._dynamo.config.accumulated_recompile_limit, 1024)
            layers[(name, "compiled")] = torch.compile(factories[name](channels).to(device))
    return layers


def time_interleaved(
    steps: dict[tuple[str, str], Callable[[], None]], device: torch.device, repeats: int, inner: int, warmup: int
) -> dict[tuple[str, str], list[float]]:
    """Per-step lists of seconds per call; each round times every step once, in a random order."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    synchronize(device)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
    order = list(steps)
    rng = random.Random(0)
    for _ in range(repeats):
        rng.shuffle(order)
        for key in order:
            step = steps[key]
            synchronize(device)
            start = time.perf_counter()
            for _ in range(inner):
                step()
            synchronize(device)
            times[key].append((time.perf_counter() - start) / inner)
    return times


def per_round_ratios(samples: list[float], base: list[float]) -> list[float]:
    """``samples[i] / base[i]``: the ratio within each round of :func:`time_interleaved`."""
    return [t / b for t, b in zip(samples, base)]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """First quartile, median and third quartile of ``values``."""
    ordered = sorted(values)
    return ordered[len(ordered) // 4], statistics.median(ordered), ordered[(3 * len(ordered)) // 4]


def op_counts(step: Callable[[], None]) -> dict[str, int]:
    """``{namespace: events}`` that ``torch.profiler`` records in one call of ``step``, per :data:`OP_NAMESPACES`.

    Nested ops are included (``aten::batch_norm`` and the ``aten::native_batch_norm`` it calls count twice).
    """
    from torch.profiler import ProfilerActivity, profile

    step()  # first-call work (lazy initialisation, caches) is not counted
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    names = [event.name for event in prof.events()]
    return {namespace: sum(1 for n in names if n.startswith(namespace + "::")) for namespace in OP_NAMESPACES}


def benchmark_shape(
    args: argparse.Namespace, device: torch.device, dtype_name: str, shape: tuple[int, ...], names: list[str],
    small_batch: bool,
) -> list[dict]:
    """Records of every layer and mode at one shape; a ``small_batch`` shape gets ``--small-repeats`` rounds and
    the ATen-op count of every training forward+backward."""
    dtype = DTYPES[dtype_name]
    x = torch.randn(shape, device=device, dtype=dtype)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    grad = torch.randn_like(x)
    compile_layers = (args.compile_layers or names) if args.compile and dtype_name in args.compile_dtypes else []
    layers = build_layers(names, shape[1], device, dtype, compile_layers, not args.no_reference_ops)
    memory = {}
    for (name, impl), layer in layers.items():
        if impl != "fast" or name == PER_SAMPLE_FLOOR:
            continue
        layer.train()
        memory[name] = (saved_tensor_bytes(layer, x), peak_memory_bytes(layer, x, grad))
    repeats = args.small_repeats if small_batch else args.repeats
    records = []
    for mode in args.modes:
        steps = {}
        for key, layer in layers.items():
            if key[0] == PER_SAMPLE_FLOOR and mode != "eval fwd":
                continue
            layer.train(mode != "eval fwd")
            steps[key] = make_step(layer, x, grad, mode)
        count_ops = small_batch and mode == "train fwd+bwd"
        ops = {key: op_counts(step) for key, step in steps.items()} if count_ops else {}
        times = time_interleaved(steps, device, repeats, args.inner, args.warmup)
        for (name, impl), samples in times.items():
            q1, median, q3 = quartiles(samples)
            record = {
                "device": device.type, "dtype": dtype_name, "shape": list(shape), "mode": mode,
                "layer": name, "impl": impl, "small_batch": small_batch, "median_ms": median * 1e3,
                "q1_ms": q1 * 1e3, "q3_ms": q3 * 1e3,
                "ratio_bn": statistics.median(per_round_ratios(samples, times[("BN", "fast")])),
                "ratio_gn": statistics.median(per_round_ratios(samples, times[("GN", "fast")])),
            }
            if (name, impl) in ops:
                record.update({f"{namespace}_ops": n for namespace, n in ops[(name, impl)].items()})
            if impl == "fast" and mode == "train fwd+bwd":
                saved, peak = memory[name]
                record["saved_over_input"] = saved / x.nbytes
                record["peak_over_input"] = None if peak is None else peak / x.nbytes
            records.append(record)
        print(
            f"{device.type} {dtype_name} {tuple(shape)} {mode}: "
            + ", ".join(f"{r['layer']}/{r['impl']}={r['ratio_bn']:.2f}x" for r in records if r["mode"] == mode),
            flush=True,
        )
    return records


def run(args: argparse.Namespace, save: Callable[[dict], None] | None = None) -> dict:
    """Benchmark everything ``args`` asks for; ``save(result)`` is called after every shape (partial results)."""
    device = torch.device(args.device)
    args.warm_memory = not args.default_malloc and keep_freed_memory_mapped()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(layer_factories()) if not args.layers else ["BN", "GN", *[n for n in args.layers if n not in ("BN", "GN")]]
    plan = [(shape, False) for shape in args.shapes] + [(shape, True) for shape in args.small_shapes]
    records = []
    started = time.time()
    for dtype_name in args.dtypes:
        for shape, small_batch in plan:
            records += benchmark_shape(args, device, dtype_name, shape, names, small_batch)
            if save is not None:
                save(result(args, device, records, started))
    return result(args, device, records, started)


def measurement_meta(tool: str, args: argparse.Namespace, device: torch.device) -> dict:
    """How a benchmark was measured: command line, date, versions, machine, threads, load."""
    return {
        "command": command_line(tool, args.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def result(args: argparse.Namespace, device: torch.device, records: list[dict], started: float) -> dict:
    """The JSON document: how it was measured (command, versions, machine, load) and the records."""
    return {
        "meta": {
            **measurement_meta(__file__, args, device),
            "shapes": [list(s) for s in args.shapes], "small_shapes": [list(s) for s in args.small_shapes],
            "repeats": args.repeats, "small_repeats": args.small_repeats, "inner": args.inner, "warmup": args.warmup,
            "channels_last": args.channels_last, "warm_memory": args.warm_memory,
            "wall_s": round(time.time() - started, 1),
        },
        "records": records,
    }


def _fmt_shape(shape: list[int]) -> str:
    return "×".join(str(s) for s in shape)


def _fmt_ratio(record: dict) -> str:
    """``1 (x ms)`` for eager BatchNorm, the ratio to it for every other row."""
    if (record["layer"], record["impl"]) == ("BN", "fast"):
        return f"1 ({record['median_ms']:.2f} ms)"
    return f"{record['ratio_bn']:.2f}×"


def _unique(values: list) -> list:
    """``values`` without repeats, in first-seen order (for lists, which are not hashable)."""
    seen: list = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def header(meta: dict) -> list[str]:
    """How the tables were measured: command, versions, machine, threads, rounds."""
    rounds = f"median of {meta['repeats']} interleaved rounds"
    if meta["small_shapes"]:
        rounds += f" ({meta['small_repeats']} at the small-batch shapes)"
    load = ", ".join(f"{v:.1f}" for v in meta["load_average"] or [])
    memory = "; freed memory kept mapped (glibc thresholds at 1 GiB)" if meta["warm_memory"] else ""
    return [
        f"Command: `{meta['command']}`",
        "",
        f"torch {meta['torch']}, {meta['device_name'] or meta['machine']}, {meta['threads']} thread(s), {rounds}, "
        f"{meta['inner']} call(s) each, load average at the end {load}{memory}. "
        "Cells: time / time of eager `nn.BatchNorm2d`, the median over rounds of the ratio within a round (lower "
        "is better); the BN row gives its milliseconds. `fast`: the layer as shipped; `reference ops`: fused "
        "kernels off; `compiled`: `torch.compile(layer)`.",
        "",
    ]


def large_shape_tables(records: list[dict]) -> list[str]:
    """Per (device, dtype, mode): layers x shapes, time relative to eager BatchNorm."""
    lines = []
    groups = sorted({(r["device"], r["dtype"], r["mode"]) for r in records}, key=lambda g: (g[0], g[1], MODES.index(g[2])))
    for device, dtype, mode in groups:
        rows = [r for r in records if (r["device"], r["dtype"], r["mode"]) == (device, dtype, mode)]
        shapes = _unique([r["shape"] for r in rows])
        lines += [f"### {device} {dtype}, {mode}", ""]
        lines.append("| layer | implementation | " + " | ".join(_fmt_shape(s) for s in shapes) + " |")
        lines.append("|---|---|" + "---|" * len(shapes))
        for layer, impl in _unique([(r["layer"], r["impl"]) for r in rows]):
            cells = []
            for shape in shapes:
                match = [r for r in rows if (r["layer"], r["impl"]) == (layer, impl) and r["shape"] == shape]
                cells.append(_fmt_ratio(match[0]) if match else "")
            lines.append(f"| {layer} | {impl} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def small_batch_tables(records: list[dict]) -> list[str]:
    """Per (device, dtype, shape): ATen ops of a training forward+backward, then each mode's time and ratio."""
    lines = []
    for device, dtype, shape in _unique([(r["device"], r["dtype"], r["shape"]) for r in records]):
        rows = [r for r in records if (r["device"], r["dtype"], r["shape"]) == (device, dtype, shape)]
        modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
        lines += [
            f"### {device} {dtype}, small batch {_fmt_shape(shape)}",
            "",
            "Ops: `aten::` events that `torch.profiler` records in one training forward+backward (nested ops "
            "included), plus the package's own `dynnorm::` ops and backward nodes. Times in microseconds; × BN: "
            "median over rounds of the ratio to eager `nn.BatchNorm2d`.",
            "",
            "| layer | implementation | ATen ops (+ dynnorm) train fwd+bwd | "
            + " | ".join(f"{m} (µs) | × BN" for m in modes) + " |",
            "|---|---|---:|" + "---:|---:|" * len(modes),
        ]
        for layer, impl in _unique([(r["layer"], r["impl"]) for r in rows]):
            mine = {r["mode"]: r for r in rows if (r["layer"], r["impl"]) == (layer, impl)}
            counted = mine.get("train fwd+bwd", {})
            cells = [f"{counted['aten_ops']} (+{counted['dynnorm_ops']})" if "aten_ops" in counted else ""]
            for mode in modes:
                r = mine.get(mode)
                cells += ["", ""] if r is None else [f"{r['median_ms'] * 1e3:.0f}", f"{r['ratio_bn']:.2f}×"]
            lines.append(f"| {layer} | {impl} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def memory_table(records: list[dict]) -> list[str]:
    """Saved-for-backward and peak memory of a training forward+backward, relative to the input's size."""
    memory = [r for r in records if "saved_over_input" in r]
    if not memory:
        return []
    columns = _unique([(r["device"], r["dtype"], r["shape"]) for r in memory])
    lines = [
        "### Memory, training forward+backward (relative to the input's size)",
        "",
        "Saved: unique storages saved for backward. Peak: memory allocated during forward+backward above "
        "what existed before (the output and the gradients included).",
        "",
        "| layer | " + " | ".join(f"{d} {t} {_fmt_shape(s)} saved / peak" for d, t, s in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for layer in _unique([r["layer"] for r in memory]):
        cells = []
        for column in columns:
            match = [r for r in memory if r["layer"] == layer and (r["device"], r["dtype"], r["shape"]) == column]
            if match:
                peak = match[0]["peak_over_input"]
                cells.append(f"{match[0]['saved_over_input']:.2f} / {'n/a' if peak is None else f'{peak:.2f}'}")
            else:
                cells.append("")
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def markdown(result: dict) -> str:
    """The header, the large-shape tables per mode, the small-batch tables, then memory."""
    records = result["records"]
    large = [r for r in records if not r["small_batch"]]
    small = [r for r in records if r["small_batch"]]
    return "\n".join(
        header(result["meta"]) + large_shape_tables(large) + small_batch_tables(small) + memory_table(records)
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=sorted(DTYPES))
    parser.add_argument(
        "--shapes", nargs="*", type=lambda s: tuple(int(v) for v in s.split(",")), default=list(DEFAULT_SHAPES),
        help="N,C,H,W (C divisible by 32) for the large-shape tables (none: skip them)",
    )
    parser.add_argument(
        "--small-shapes", nargs="*", type=lambda s: tuple(int(v) for v in s.split(",")),
        default=list(DEFAULT_SMALL_SHAPES), help="N,C,H,W shapes for the small-batch table (none: skip it)",
    )
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--layers", nargs="+", choices=list(layer_factories()), help="default: all")
    parser.add_argument("--repeats", type=int, default=30, help="interleaved rounds (the median is reported)")
    parser.add_argument("--small-repeats", type=int, default=500, help="interleaved rounds at the small-batch shapes")
    parser.add_argument("--inner", type=int, default=1, help="calls per timed sample")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave torch's default)")
    parser.add_argument("--compile", action="store_true", help="add torch.compile'd layers as a column")
    parser.add_argument("--compile-layers", nargs="+", choices=list(layer_factories()), help="default: all layers")
    parser.add_argument("--compile-dtypes", nargs="+", default=sorted(DTYPES), choices=sorted(DTYPES))
    parser.add_argument("--no-reference-ops", action="store_true", help="skip the fused-kernels-off column")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument(
        "--default-malloc", action="store_true",
        help="leave glibc's allocation thresholds alone (default: keep freed memory mapped, see keep_freed_memory_mapped)",
    )
    parser.add_argument("--out", default=str(RESULTS_DIR / "benchmark"), help="output path stem")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the command line in the results
    return args


def write(result_: dict, stem: Path, render: Callable[[dict], str] | None = None) -> None:
    """``stem.json`` and ``stem.md`` (``render``, default :func:`markdown`), each written to a temporary file
    and renamed (atomic)."""
    for suffix, text in ((".json", json.dumps(result_, indent=1)), (".md", (render or markdown)(result_))):
        write_atomically(stem.with_suffix(suffix), text + "\n")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    stem = Path(args.out)
    final = run(args, save=lambda partial: write(partial, stem))
    write(final, stem)
    print(markdown(final))


if __name__ == "__main__":
    main()
