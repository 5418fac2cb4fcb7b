"""Every layer as dependable as BatchNorm: double backward on every implementation, one answer to non-finite
values, training-mode tracing, thread safety and no leaks."""
from __future__ import annotations

import copy
import math
import os
import threading

import pytest
import torch
from torch import nn

import dynnorm
from layer_cases import CASES, randomize

FUSED_BACKWARD = "dynnorm::"


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def _functional_layer(layer: nn.Module):
    names = [name for name, _ in layer.named_parameters()]

    def fn(inp, *params):
        return torch.func.functional_call(layer, dict(zip(names, params)), (inp,))

    return fn


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_gradgradcheck_through_the_fused_operators(case, layout, mode):
    layer = randomize(case.build(4, dtype=torch.float64)).train(mode == "train")
    x = _layout(torch.randn(2, 4, 2, 3, dtype=torch.float64) + 1, layout).requires_grad_()
    fn = _functional_layer(layer)
    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
    assert fn(x, *params).grad_fn.name().startswith(FUSED_BACKWARD)  # the fused operator runs
    # fast mode (random projections of the Jacobians) keeps the matrix quick; one case runs the full check
    full = case.name == "SN" and layout == "contiguous" and mode == "train"
    assert torch.autograd.gradgradcheck(fn, (x, *params), atol=1e-5, fast_mode=not full)


def _gradient_penalty_training(case, fast: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Two steps of a critic trained with a WGAN-GP style penalty on the input gradient's norm."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), randomize(case.build(4)), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 1)).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    initial = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    for _ in range(2):
        inputs = x.clone().requires_grad_()
        with dynnorm.fast_path(fast):
            score = model(inputs)
        (grad,) = torch.autograd.grad(score.sum(), inputs, create_graph=True)
        loss = score.mean() + 10 * (grad.flatten(1).norm(dim=1) - 1).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return initial, [t.detach() for t in (*model.parameters(), *model.buffers())]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_gradient_penalty_training_matches_the_reference_path(case):
    initial, fast = _gradient_penalty_training(case, True)
    _, reference = _gradient_penalty_training(case, False)
    for a, b in zip(fast, reference):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert all(not torch.equal(a, b) for a, b in zip(initial, fast))  # every parameter trained


# ---- non-finite values --------------------------------------------------------------------------------------

def _outputs(layer: nn.Module, x: torch.Tensor, fast: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    layer = copy.deepcopy(layer)
    with dynnorm.fast_path(fast), torch.no_grad():
        out = layer(x)
    return out, [b.clone() for b in layer.buffers()]


def _assert_same_answer(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert torch.equal(torch.isfinite(a), torch.isfinite(b)), f"{what}: finite in one implementation only"
    finite = torch.isfinite(a)
    torch.testing.assert_close(a[finite], b[finite], rtol=1e-9, atol=1e-9, msg=what)


def _check_policy(case, layer: nn.Module, x: torch.Tensor, what: str, must_show: bool) -> None:
    fast, fast_buffers = _outputs(layer, x, True)
    reference, reference_buffers = _outputs(layer, x, False)
    _assert_same_answer(fast, reference, what)
    for a, b in zip(fast_buffers, reference_buffers):
        if a.is_floating_point():
            _assert_same_answer(a, b, what + " (buffers)")
        else:
            assert torch.equal(a, b), what
    if must_show:
        assert not torch.isfinite(fast).all(), f"{what}: the NaN does not show in the output"
    if case.reference is not None:  # nothing finite where the independent reference is not, nor finite and wrong
        independent = case.reference(layer, x)
        assert not (torch.isfinite(fast) & ~torch.isfinite(independent)).any(), what
        both = torch.isfinite(fast) & torch.isfinite(independent)
        torch.testing.assert_close(fast[both], independent[both], rtol=1e-7, atol=1e-7, msg=what)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_non_finite_parameters_show_up_alike_in_both_implementations(case, bad, mode):
    base = randomize(case.build(4, dtype=torch.float64)).train(mode == "train")
    x = torch.randn(3, 4, 3, 3, dtype=torch.float64) + 0.5
    for name, _ in base.named_parameters():
        layer = copy.deepcopy(base)
        with torch.no_grad():
            layer.get_parameter(name).view(-1)[0] = bad
        _check_policy(case, layer, x, f"{case}.{name} = {bad} ({mode})", must_show=math.isnan(bad))


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_non_finite_inputs_show_up_where_they_are_used(case, bad, mode):
    layer = randomize(case.build(4, dtype=torch.float64)).train(mode == "train")
    x = torch.randn(3, 4, 3, 3, dtype=torch.float64) + 0.5
    x[1, 2, 0, 1] = bad
    _check_policy(case, layer, x, f"{case}: input {bad} ({mode})", must_show=True)
    fast, _ = _outputs(layer, x, True)
    assert torch.isfinite(fast[0]).any() or mode == "train", "one bad value should not poison unrelated samples"


# ---- tracing, threads, leaks --------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_traced_training_module_runs_repeatedly_and_matches_eager(case):
    layer = randomize(case.build(8))
    if isinstance(layer, dynnorm.SparseSwitchNorm2d):
        dynnorm.set_sparsestmax_radius(layer, 1.0)  # the mixtures freeze during the trace's own call
    eager = copy.deepcopy(layer)
    x = torch.randn(4, 8, 5, 6)
    traced = torch.jit.trace(layer, (x,), check_trace=False)
    eager(x)  # the call the tracer made
    for step in range(3):
        inputs = torch.randn(4, 8, 5, 6, requires_grad=True)
        out = traced(inputs)
        out.square().sum().backward()
        torch.testing.assert_close(out, eager(inputs), msg=f"call {step}")
    for (name, a), b in zip(layer.named_buffers(), eager.buffers()):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_layer_shared_by_four_threads_in_evaluation_gives_identical_results(case):
    layer = randomize(case.build(16)).eval()
    x = torch.randn(6, 16, 9, 9)
    expected = layer(x)
    results, barrier = [], threading.Barrier(4)

    def work():
        barrier.wait()
        results.extend(layer(x) for _ in range(10))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 40 and all(torch.equal(out, expected) for out in results)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm (Linux)")
def test_twenty_thousand_training_calls_leave_memory_unchanged():
    """Every layer in one stack, trained for 20,000 calls: the process's resident memory does not grow."""
    stack = nn.Sequential(*(randomize(case.build(8)) for case in CASES))
    x = torch.randn(2, 8, 4, 4, requires_grad=True)

    def steps(count: int) -> None:
        for _ in range(count):
            stack(x).sum().backward()

    steps(2000)  # allocator and caches warm
    before = _resident_bytes()
    steps(20_000)
    assert _resident_bytes() - before < 4 * 2**20
