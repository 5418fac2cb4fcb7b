"""The fused kernels (dynnorm._fused) against the straightforward reference ops they replace.

Values and gradients must match the reference (float64: to rounding; float32/bf16: to float32 rounding),
for every layout the fast path accepts, for the two functional pieces and for every layer end to end.
The custom backward passes ``gradcheck`` and ``gradgradcheck`` (double backward is supported), autograd
saves no more than the input for the layers, and the switch really selects the implementation.
"""
from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import dynnorm
from dynnorm import _fused
from dynnorm import functional as F
from layer_cases import CASES, randomize

ROOT = Path(__file__).resolve().parent.parent


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        return x.contiguous(memory_format=fmt)
    return x


# (shape, layout): NCHW, channels-last 2d/3d, (N, C, L), (N, C), one value per (n, c)
LAYOUTS = [
    ((4, 6, 5, 7), "contiguous"),
    ((4, 6, 5, 7), "channels_last"),
    ((3, 5, 2, 3, 4), "channels_last"),
    ((3, 5, 11), "contiguous"),
    ((4, 6), "contiguous"),
    ((2, 3, 1, 1), "contiguous"),
]
TOLERANCES = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=2e-5, atol=2e-5)}


def _pipeline(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, fast: bool):
    """Moments -> per-(n, c) coefficients depending on them (as in every layer) -> normalize."""
    with F.fast_path(fast):
        mean, var = F.instance_moments(x)
        scale = weight * torch.rsqrt(var + 1e-3)
        shift = bias - mean * scale + mean.mean(1, keepdim=True)  # an LN-like cross-channel term
        return mean, var, F.scale_shift(x, scale, shift)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape,layout", LAYOUTS, ids=lambda v: str(v))
def test_functional_fast_path_matches_reference_values_and_gradients(shape, layout, dtype):
    x = _layout((torch.randn(shape, dtype=torch.float64) * 3 + 20).to(dtype), layout)
    assert _fused.applies(x)
    weight = torch.rand(shape[:2], dtype=dtype) + 0.5
    bias = torch.randn(shape[:2], dtype=dtype)
    results = {}
    for fast in (True, False):
        inputs = [t.detach().clone().requires_grad_() for t in (x, weight, bias)]
        mean, var, out = _pipeline(*inputs, fast=fast)
        upstream = torch.randn_like(out, generator=torch.Generator().manual_seed(1))
        loss = (out * upstream).sum() + (mean * 0.3).sum() + (var * 0.7).sum()
        results[fast] = (mean, var, out, *torch.autograd.grad(loss, inputs))
    fast_out = results[True][2]
    assert fast_out.dtype == x.dtype and fast_out.stride() == results[False][2].stride()
    for name, a, b in zip(("mean", "var", "out", "grad_x", "grad_weight", "grad_bias"), results[True], results[False]):
        torch.testing.assert_close(a, b, **TOLERANCES[dtype], msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_inputs_accumulate_in_float32_like_the_reference(dtype):
    x = (torch.randn(4, 6, 5, 7) * 50 + 300).to(dtype)  # E[x^2] - E[x]^2 would cancel in 16 bits
    weight, bias = torch.rand(4, 6) + 0.5, torch.randn(4, 6)
    fast = _pipeline(x, weight, bias, fast=True)
    reference = _pipeline(x, weight, bias, fast=False)
    assert fast[0].dtype == fast[1].dtype == torch.float32 and fast[2].dtype == dtype
    torch.testing.assert_close(fast[0], reference[0])
    torch.testing.assert_close(fast[1], reference[1], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(fast[2].float(), reference[2].float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mean_over_std", [0.0, 0.99, 1.01, 30.0])
def test_variance_is_as_accurate_as_two_passes_on_either_side_of_the_one_pass_bound(mean_over_std, dtype):
    x = (torch.randn(4, 16, 32, 32, dtype=torch.float64) * 3.0 + 3.0 * mean_over_std).to(dtype)
    x[0, 0] += 100.0 * (mean_over_std > 1)  # one row far off: the whole input takes the two-pass route
    _, var = F.instance_moments(x)
    expected_var = x.double().var((2, 3), unbiased=False)
    torch.testing.assert_close(var.double(), expected_var, rtol=5e-6, atol=0)


def test_variance_of_large_mean_does_not_cancel_in_float32():
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64) * 0.01 + 1000.0  # mean / std = 1e5
    mean, var = F.instance_moments(x.float())
    expected_var = x.var((2, 3), unbiased=False)
    torch.testing.assert_close(var.double(), expected_var, rtol=2e-2, atol=0)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_and_gradgradcheck_of_the_custom_functions(layout):
    x = _layout(torch.randn(2, 3, 3, 4, dtype=torch.float64) + 1, layout).requires_grad_()
    scale = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    shift = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert _fused.applies(x)
    moments = _fused.instance_moments
    normalize = _fused.scale_shift

    def combined(x, s, b):  # as the layers do: normalize the alias returned with the moments
        mean, var, alias = moments(x)
        return normalize(alias, s * var, b + mean)

    for fn, inputs in ((moments, (x,)), (normalize, (x, scale, shift)), (combined, (x, scale, shift))):
        assert torch.autograd.gradcheck(fn, inputs)
        if layout == "contiguous":  # double backward runs the same layout-agnostic differentiable ops
            assert torch.autograd.gradgradcheck(fn, inputs)


def _train_step(layer: nn.Module, x: torch.Tensor, fast: bool):
    x = x.detach().clone().requires_grad_()
    with F.fast_path(fast):
        out = layer(x)
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)).sum()
    names = [n for n, p in layer.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [x, *(dict(layer.named_parameters())[n] for n in names)], allow_unused=True)
    return out, dict(zip(["input", *names], grads))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_every_layer_fast_equals_reference_in_training_and_eval(case, layout, dtype):
    fast_layer = randomize(case.build(8, dtype=dtype))
    reference_layer = copy.deepcopy(fast_layer)
    x = _layout((torch.randn(4, 8, 5, 6, dtype=torch.float64) * 2 + 0.5).to(dtype), layout)
    for step in range(2):  # a second step uses the running statistics updated by the first
        out_fast, grads_fast = _train_step(fast_layer, x, fast=True)
        out_ref, grads_ref = _train_step(reference_layer, x, fast=False)
        torch.testing.assert_close(out_fast, out_ref, **TOLERANCES[dtype], msg=f"output, step {step}")
        assert grads_fast.keys() == grads_ref.keys()
        for name in grads_fast:
            torch.testing.assert_close(grads_fast[name], grads_ref[name], **TOLERANCES[dtype], msg=name)
    for (name, a), b in zip(fast_layer.named_buffers(), reference_layer.buffers()):
        torch.testing.assert_close(a, b, **TOLERANCES[dtype], msg=name)
    fast_layer.eval()
    reference_layer.eval()
    with torch.no_grad():
        out_fast = fast_layer(x)
        with F.fast_path(False):
            out_ref = reference_layer(x)
    torch.testing.assert_close(out_fast, out_ref, **TOLERANCES[dtype])


@pytest.mark.parametrize("case", CASES, ids=str)
def test_input_without_grad_still_gives_parameter_gradients_like_the_reference(case):
    """The first layer of a network: its input needs no gradient, its parameters do."""
    fast_layer = randomize(case.build(8, dtype=torch.float64))
    reference_layer = copy.deepcopy(fast_layer)
    x = torch.randn(4, 8, 5, 6, dtype=torch.float64) * 2 + 0.5
    grads = []
    for layer, fast in ((fast_layer, True), (reference_layer, False)):
        with F.fast_path(fast):
            out = layer(x)
        params = [p for p in layer.parameters() if p.requires_grad]
        grads.append(torch.autograd.grad(out.square().sum(), params, allow_unused=True))
    for fast_grad, reference_grad in zip(*grads):
        if reference_grad is None:
            assert fast_grad is None
        else:
            torch.testing.assert_close(fast_grad, reference_grad, **TOLERANCES[torch.float64])


@pytest.mark.parametrize("offset", [0.5, 300.0], ids=["one-pass-moments", "two-pass-moments"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_bfloat16_training_step_fast_equals_reference(case, offset):
    fast_layer = randomize(case.build(8))
    reference_layer = copy.deepcopy(fast_layer)
    x = (torch.randn(4, 8, 5, 6) * 2 + offset).to(torch.bfloat16)
    out_fast, grads_fast = _train_step(fast_layer, x, fast=True)
    out_ref, grads_ref = _train_step(reference_layer, x, fast=False)
    assert out_fast.dtype == grads_fast["input"].dtype == torch.bfloat16
    torch.testing.assert_close(out_fast, out_ref, rtol=2e-2, atol=2e-2)
    for name in grads_fast:
        scale = grads_ref[name].abs().max().item()  # bf16 rounding is relative to the gradient's size
        torch.testing.assert_close(grads_fast[name], grads_ref[name], rtol=2e-2, atol=2e-2 * scale, msg=name)


@pytest.mark.parametrize("name", ["SN", "EN", "AssocNorm", "DNB"])
def test_layers_save_only_the_input_for_backward(name):
    layer = dynnorm.create_norm(name, 64)
    x = torch.randn(4, 64, 16, 16, requires_grad=True)
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    assert x.untyped_storage().data_ptr() in storages
    assert sum(storages.values()) <= 1.2 * x.nbytes


def test_input_used_elsewhere_too_gets_the_sum_of_all_gradients():
    layer = dynnorm.SwitchNorm2d(4)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    grads = {}
    for fast in (True, False):
        with F.fast_path(fast):
            out = layer(x) * torch.arange(36.0, dtype=torch.float64).view(1, 4, 3, 3) + x.square()
        grads[fast] = torch.autograd.grad(out.sum(), x)[0]
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-10, atol=1e-10)


def test_alias_used_directly_gets_an_expanded_gradient_right():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    grads = {}
    for fast in (True, False):
        with F.fast_path(fast):
            mean, var, alias = F.normalization_moments(x)
        grads[fast] = torch.autograd.grad(alias.sum() + var.sum() + mean.sum(), x)[0]  # alias's grad: stride 0
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-10, atol=1e-10)


class _LargeAllocations(TorchDispatchMode):
    """Counts op outputs with their own storage at least as large as ``size`` bytes."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size, self.count = size, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() >= self.size:
                self.count += t.untyped_storage().data_ptr() not in inputs
        return out


@pytest.mark.parametrize("name", ["SN", "EN", "AssocNorm"])
def test_backward_allocates_one_input_sized_gradient_like_batchnorm(name):
    x = torch.randn(4, 64, 8, 8, requires_grad=True)
    counts = {}
    for fast in (True, False):
        layer = dynnorm.create_norm(name, 64)
        with F.fast_path(fast):
            out = layer(x)
        upstream = torch.ones_like(out)
        with _LargeAllocations(x.nbytes) as allocations:
            torch.autograd.grad(out, x, upstream)
        counts[fast] = allocations.count
    assert counts[True] == 1 < counts[False]


def test_output_is_not_a_view_so_inplace_ops_on_it_work():
    layer = nn.Sequential(dynnorm.SwitchNorm2d(4), nn.ReLU(inplace=True))
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    expected = torch.relu(dynnorm.SwitchNorm2d(4)(x))
    out = layer(x)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_switch_selects_the_implementation_and_restores_it():
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    assert F.fast_path_enabled()
    with F.fast_path(False):
        assert not _fused.applies(x)
        assert F.instance_moments(x)[0].grad_fn.name() != "_InstanceMomentsBackward"
    assert _fused.applies(x)
    assert F.instance_moments(x)[0].grad_fn.name() == "_InstanceMomentsBackward"
    out = F.scale_shift(x, torch.ones(2, 4), torch.zeros(2, 4))
    assert out.grad_fn.next_functions[0][0].name() == "_ScaleShiftBackward"  # then reshaped to x's shape


def test_unsupported_inputs_fall_back_to_the_reference():
    non_contiguous = torch.randn(2, 4, 6, 6)[:, :, ::2]
    assert not _fused.applies(non_contiguous)
    assert not _fused.applies(torch.randn(0, 4, 3, 3))
    assert not _fused.applies(torch.randn(2, 4, 3, 3), torch.float64)  # float32 input, float64 coefficients
    mean, var = F.instance_moments(non_contiguous)
    torch.testing.assert_close(mean, non_contiguous.mean((2, 3)))
    torch.testing.assert_close(var, non_contiguous.var((2, 3), unbiased=False))


_TRITON_CHECK = """
import torch
from dynnorm import _triton
torch.manual_seed(0)
for dtype in (torch.float32, torch.bfloat16):
    for shape in ((2, 3, 7, 9), (1, 2, 70, 70), (3, 2, 5)):
        x = (torch.randn(shape, dtype=torch.float64) * 3 + 100).to(dtype)
        flat = x.double().reshape(shape[0], shape[1], -1)
        mean, var = _triton.row_moments(x)
        assert mean.dtype == var.dtype == torch.float32
        torch.testing.assert_close(mean.double(), flat.mean(-1), rtol=1e-6, atol=0)
        torch.testing.assert_close(var.double(), flat.var(-1, unbiased=False), rtol=1e-5, atol=0)
        g, a, b = torch.randn(shape).to(dtype), torch.randn(shape[:2]), torch.randn(shape[:2])
        view = shape[:2] + (1,) * (len(shape) - 2)
        expected = g.float() + a.view(view) * x.float() + b.view(view)
        out = _triton.accumulate_affine_(g, x, a, b)
        assert out is g
        torch.testing.assert_close(g.float(), expected, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=1e-4)
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_triton_kernels_match_torch_in_the_interpreter():
    """The CUDA kernels' arithmetic, run by Triton's CPU interpreter (no GPU here)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", _TRITON_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_cpu_never_uses_the_triton_kernels():
    from dynnorm import _triton

    assert not _triton.available(torch.randn(2, 3, 4, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_cuda_fast_path_equals_reference(case, layout, dtype):
    """On CUDA (Triton kernels where installed) against the reference ops, in float32 for the comparison."""
    fast_layer = randomize(case.build(8)).cuda()
    reference_layer = copy.deepcopy(fast_layer)
    x = _layout((torch.randn(4, 8, 5, 6) * 2 + 0.5).to(dtype).cuda(), layout)
    for step in range(2):
        out_fast, grads_fast = _train_step(fast_layer, x, fast=True)
        out_ref, grads_ref = _train_step(reference_layer, x, fast=False)
        tolerance = TOLERANCES[torch.float32] if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(out_fast.float(), out_ref.float(), **tolerance, msg=f"output, step {step}")
        for name in grads_fast:
            scale = max(1.0, grads_ref[name].abs().max().item())
            torch.testing.assert_close(grads_fast[name].float() / scale, grads_ref[name].float() / scale,
                                       **tolerance, msg=name)
