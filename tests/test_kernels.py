"""The fused CPU operators (dynnorm.kernels.cpu) against the reference ops (dynnorm.functional).

Values, gradients and running statistics must match the reference for every layer, layout and dtype the
operators accept (float64: to rounding; float32/bf16/fp16: to their rounding); autograd must save no more
than the input, backward must allocate one input-sized tensor, and the switch must really select the
implementation. Where the operators do not apply (graph capture, transforms, other layouts), the layers
must run the reference.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import dynnorm
from dynnorm import functional, kernels
from layer_cases import CASES, randomize

TOLERANCES = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=2e-5, atol=2e-5)}
FUSED_BACKWARD = "dynnorm::"


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x


def _train_step(layer: nn.Module, x: torch.Tensor, fast: bool):
    x = x.detach().clone().requires_grad_()
    with dynnorm.fast_path(fast):
        out = layer(x)
    upstream = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    names = [n for n, p in layer.named_parameters() if p.requires_grad]
    params = dict(layer.named_parameters())
    grads = torch.autograd.grad((out * upstream).sum(), [x, *(params[n] for n in names)], allow_unused=True)
    return out, dict(zip(["input", *names], grads))


def _assert_steps_match(fast_layer, reference_layer, x, tolerance, steps=2):
    for step in range(steps):  # a second step uses the running statistics updated by the first
        out_fast, grads_fast = _train_step(fast_layer, x, fast=True)
        out_ref, grads_ref = _train_step(reference_layer, x, fast=False)
        assert out_fast.dtype == x.dtype and out_fast.stride() == out_ref.stride()
        torch.testing.assert_close(out_fast, out_ref, **tolerance, msg=f"output, step {step}")
        assert grads_fast.keys() == grads_ref.keys()
        for name in grads_fast:
            if grads_ref[name] is None:
                assert grads_fast[name] is None, name
            else:
                torch.testing.assert_close(grads_fast[name], grads_ref[name], **tolerance, msg=name)
    for (name, a), b in zip(fast_layer.named_buffers(), reference_layer.buffers()):
        torch.testing.assert_close(a, b, **tolerance, msg=name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_every_layer_fused_equals_reference_in_training_and_eval(case, layout, dtype):
    fast_layer = randomize(case.build(8, dtype=dtype))
    reference_layer = copy.deepcopy(fast_layer)
    x = _layout((torch.randn(4, 8, 5, 6, dtype=torch.float64) * 2 + 0.5).to(dtype), layout)
    _assert_steps_match(fast_layer, reference_layer, x, TOLERANCES[dtype])
    fast_layer.eval(), reference_layer.eval()
    _assert_steps_match(fast_layer, reference_layer, x, TOLERANCES[dtype], steps=1)  # running statistics


@pytest.mark.parametrize(
    "build, shape",
    [
        (lambda: dynnorm.SwitchNorm1d(6), (5, 6)),                   # one value per (n, c): IN left out
        (lambda: dynnorm.SparseSwitchNorm1d(6), (5, 6)),
        (lambda: dynnorm.SwitchNorm1d(6), (3, 6, 11)),
        (lambda: dynnorm.SwitchNorm3d(6), (2, 6, 3, 4, 5)),
        (lambda: dynnorm.ExemplarNorm2d(6), (4, 6, 1, 1)),
        (lambda: dynnorm.DynamicNorm2d(12), (3, 12, 2, 3)),          # a non-power-of-two width: factors (3, 2, 2)
        (lambda: dynnorm.SwitchNorm2d(6, affine=False), (3, 6, 4, 4)),
        (lambda: dynnorm.DynamicNormB2d(6, momentum=None), (3, 6, 4, 4)),
        (lambda: dynnorm.ExemplarNorm2d(6, track_running_stats=False), (3, 6, 4, 4)),
    ],
    ids=["SN1d-NC", "SSN1d-NC", "SN1d-NCL", "SN3d", "EN-1x1", "DN-12", "SN-no-affine", "DNB-cumulative", "EN-untracked"],
)
def test_fused_equals_reference_for_other_ranks_and_options(build, shape):
    torch.manual_seed(1)
    fast_layer = randomize(build().double())
    reference_layer = copy.deepcopy(fast_layer)
    x = torch.randn(shape, dtype=torch.float64) * 2 + 0.5
    _assert_steps_match(fast_layer, reference_layer, x, TOLERANCES[torch.float64])
    fast_layer.eval(), reference_layer.eval()
    _assert_steps_match(fast_layer, reference_layer, x, TOLERANCES[torch.float64], steps=1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_half_precision_training_step_fused_equals_reference(case, dtype):
    """bf16/fp16 inputs with float32 parameters (as under autocast): statistics in float32, output in the input dtype."""
    fast_layer = randomize(case.build(8))
    reference_layer = copy.deepcopy(fast_layer)
    x = (torch.randn(4, 8, 5, 6) * 2 + 300).to(dtype)  # E[x^2] - E[x]^2 would cancel in 16 bits
    out_fast, grads_fast = _train_step(fast_layer, x, fast=True)
    out_ref, grads_ref = _train_step(reference_layer, x, fast=False)
    assert out_fast.dtype == grads_fast["input"].dtype == dtype
    torch.testing.assert_close(out_fast, out_ref, rtol=2e-2, atol=2e-2)
    for name in grads_fast:
        scale = grads_ref[name].abs().max().item()  # half rounding is relative to the gradient's size
        torch.testing.assert_close(grads_fast[name], grads_ref[name], rtol=2e-2, atol=2e-2 * scale, msg=name)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_gradcheck_of_the_fused_operators(case, layout):
    layer = randomize(case.build(4, dtype=torch.float64))
    if hasattr(layer, "track_running_stats"):
        layer.track_running_stats = False  # gradcheck needs a pure function: no running-statistics update
    x = _layout(torch.randn(3, 4, 3, 2, dtype=torch.float64) + 1, layout).requires_grad_()
    names = [n for n, _ in layer.named_parameters()]

    def fn(inp, *params):
        return torch.func.functional_call(layer, dict(zip(names, params)), (inp,))

    assert fn(x, *layer.parameters()).grad_fn.name().startswith(FUSED_BACKWARD)
    assert torch.autograd.gradcheck(fn, (x, *layer.parameters()), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_input_without_grad_still_gives_parameter_gradients_like_the_reference(case):
    """The first layer of a network: its input needs no gradient, its parameters do."""
    fast_layer = randomize(case.build(8, dtype=torch.float64))
    reference_layer = copy.deepcopy(fast_layer)
    x = torch.randn(4, 8, 5, 6, dtype=torch.float64) * 2 + 0.5
    grads = []
    for layer, fast in ((fast_layer, True), (reference_layer, False)):
        with dynnorm.fast_path(fast):
            out = layer(x)
        params = [p for p in layer.parameters() if p.requires_grad]
        grads.append(torch.autograd.grad(out.square().sum(), params, allow_unused=True))
    for fast_grad, reference_grad in zip(*grads):
        if reference_grad is None:
            assert fast_grad is None
        else:
            torch.testing.assert_close(fast_grad, reference_grad, **TOLERANCES[torch.float64])


@pytest.mark.parametrize("name", ["SN", "EN", "AssocNorm", "DNB", "DN"])
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
    assert sum(storages.values()) <= 1.05 * x.nbytes


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


@pytest.mark.parametrize("name", ["SN", "EN", "AssocNorm", "DN"])
def test_backward_allocates_one_input_sized_gradient_like_batchnorm(name):
    x = torch.randn(4, 64, 8, 8, requires_grad=True)
    counts = {}
    for fast in (True, False):
        layer = dynnorm.create_norm(name, 64)
        with dynnorm.fast_path(fast):
            out = layer(x)
        upstream = torch.ones_like(out)
        with _LargeAllocations(x.nbytes) as allocations:
            torch.autograd.grad(out, x, upstream)
        counts[fast] = allocations.count
    assert counts[True] == 1 < counts[False]


def test_input_used_elsewhere_too_gets_the_sum_of_all_gradients():
    layer = dynnorm.SwitchNorm2d(4, dtype=torch.float64)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    grads = {}
    for fast in (True, False):
        with dynnorm.fast_path(fast):
            out = layer(x) * torch.arange(36.0, dtype=torch.float64).view(1, 4, 3, 3) + x.square()
        grads[fast] = torch.autograd.grad(out.sum(), x)[0]
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-10, atol=1e-10)


def test_output_is_not_a_view_so_inplace_ops_on_it_work():
    layer = nn.Sequential(dynnorm.SwitchNorm2d(4), nn.ReLU(inplace=True))
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    expected = torch.relu(dynnorm.SwitchNorm2d(4)(x))
    out = layer(x)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_switch_selects_the_implementation_and_restores_it():
    layer = dynnorm.SwitchNorm2d(4)
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    assert dynnorm.fast_path_enabled() and kernels.select(x) is kernels.cpu.layers
    assert layer(x).grad_fn.name() == "dynnorm::SwitchNormBackward"
    with dynnorm.fast_path(False):
        assert not dynnorm.fast_path_enabled() and kernels.select(x) is functional
        assert not layer(x).grad_fn.name().startswith(FUSED_BACKWARD)
    assert dynnorm.fast_path_enabled() and layer(x).grad_fn.name() == "dynnorm::SwitchNormBackward"


def test_exports_traces_transforms_and_other_layouts_take_the_reference_and_compile_keeps_the_operators():
    x = torch.randn(2, 4, 6, 6)
    assert kernels.select(x[:, :, ::2]) is functional  # neither contiguous nor channels-last
    assert kernels.select(x, synchronized=True) is functional
    seen = []

    def probe(t):
        seen.append(kernels.select(t))
        return t.sum()

    torch.func.grad(probe)(x)
    torch.func.vmap(probe)(x)
    torch.jit.trace(lambda t: probe(t) * 1, (x,), check_trace=False)

    class Probe(nn.Module):
        def forward(self, t):
            return probe(t)

    torch.export.export(Probe(), (x,))
    assert seen and all(impl is functional for impl in seen), seen
    seen.clear()
    torch.compile(probe, backend="eager", fullgraph=True)(x)
    assert seen == [kernels.cpu.layers]


def test_double_backward_through_the_fused_operator_matches_the_reference():
    layer = randomize(dynnorm.SwitchNorm2d(4, dtype=torch.float64))
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    results = []
    for fast in (True, False):
        with dynnorm.fast_path(fast):
            out = layer(x)
        (grad,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
        results.append(torch.autograd.grad(grad.square().sum(), [x, *layer.parameters()]))
    for fast_grad, reference_grad in zip(*results):
        torch.testing.assert_close(fast_grad, reference_grad, **TOLERANCES[torch.float64])


def test_inplace_change_of_the_input_before_backward_is_named_clearly():
    layer = dynnorm.SwitchNorm2d(4)
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    hidden = x * 2
    out = layer(hidden)
    hidden.add_(1)
    with pytest.raises(RuntimeError, match=r"SwitchNorm layer saved for backward .* was modified in place"):
        out.sum().backward()
