"""The Triton kernels (:mod:`dynnorm.kernels.triton`) on CPU tensors under the Triton interpreter, against the
reference ops of :mod:`dynnorm.functional` (float64 autograd as the oracle for every gradient).

The interpreter is chosen when ``triton`` is first imported in a process (``TRITON_INTERPRET=1``). Run with that
variable set (``TRITON_INTERPRET=1 pytest tests/test_triton_kernels.py``) the tests run in this process; otherwise
one test re-runs this module in a child pytest with the variable set, so the rest of the test session (and any
compiled Triton it uses) is left as it is.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from dynnorm import functional

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

import dynnorm.kernels.triton as kernels  # noqa: E402  (does not import triton)


def _interpreted_here() -> bool:
    """Whether triton is (or will be, on first import) running ``@triton.jit`` functions under the interpreter."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    from triton.language import standard
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(standard.sum, InterpretedFunction)


IN_PROCESS = _interpreted_here()
in_process = pytest.mark.skipif(not IN_PROCESS, reason="run by test_interpreter_in_subprocess")


@pytest.mark.skipif(IN_PROCESS, reason="the interpreter runs in this process")
def test_interpreter_in_subprocess(request):
    """This module's tests in a child pytest whose triton is imported under the interpreter."""
    command = [sys.executable, "-m", "pytest", __file__, "-q", "-rs", "-p", "no:cacheprovider", "-W", "ignore"]
    if request.config.option.markexpr:
        command += ["-m", request.config.option.markexpr]
    environment = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run(command, cwd=Path(__file__).resolve().parent.parent, env=environment,
                            capture_output=True, text=True, timeout=1100)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert re.search(r"\d+ passed", result.stdout.strip().splitlines()[-1]), result.stdout[-3000:]
    assert "run by test_interpreter_in_subprocess" not in result.stdout, result.stdout[-3000:]  # none skipped


@pytest.mark.slow
@pytest.mark.skipif(IN_PROCESS, reason="the kernels are interpreted in this process")
def test_kernels_compile_for_h100(monkeypatch):
    """Every kernel a layer call launches compiles to an sm_90 binary (no GPU needed): what the interpreter cannot
    check (types, constexpr branches, layouts). The launches are captured instead of run."""
    from triton import compile as triton_compile
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import native_specialize_impl

    assert not kernels.interpreting() and not kernels.available("cpu")
    launches = {}

    def capture(kernel):
        def launch(*args, **meta):  # the specialization triton's launcher makes (an int equal to 1 is a constexpr)
            signature, constants, attributes = {}, {}, {}
            for i, param in enumerate(kernel.params):
                value = args[i] if i < len(args) else meta[param.name]
                kind, attribute = ("constexpr", None) if param.is_constexpr else native_specialize_impl(
                    BaseBackend, value, False, True, True)
                signature[param.name] = kind
                if kind == "constexpr":
                    constants[param.name] = value
                if attribute == "D":
                    attributes[(i,)] = [["tt.divisibility", 16]]
            key = (kernel.fn.__name__, tuple(signature.items()), tuple(constants.items()))
            launches[key] = (kernel, signature, constants, attributes, meta.get("num_warps", 4))
        return launch

    monkeypatch.setattr(torch.library, "wrap_triton", lambda kernel: _Grid(capture(kernel)))
    cases = (Case((1, 4, 3, 3), channels_last=True, dtype=torch.float32),  # N == 1: a constexpr
             Case((3, 5), dtype=torch.bfloat16, training=False, affine=False, bn_term=False))  # and L == 1
    for layer in LAYERS:
        for case in cases:
            C = case.shape[1]
            p = _cast(layer.parameters(case, C), case.dtype)
            p.update({k: v for k, v in (("freeze", True), ("mixture_logits", case.affine)) if k in p})
            x = _input(case)
            rm, rv = (None, None) if case.training else _running(C, torch.float32)
            outputs = layer.forward(x, p, rm, rv, case.training)
            layer.backward(torch.randn_like(x), x, outputs, p, case.training, True)
    names = {key[0] for key in launches}
    assert {"moments_kernel", "normalize_kernel", "gradient_sums_kernel", "input_gradient_kernel"} <= names
    assert all({f"_{layer.name}_forward_kernel", f"_{layer.name}_backward_kernel"} <= names for layer in LAYERS)
    for kernel, signature, constants, attributes, warps in launches.values():
        compiled = triton_compile(ASTSource(kernel, signature, constants, attributes),
                                  target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
        assert compiled.asm["cubin"], kernel.fn.__name__


class _Grid:
    """``wrap_triton(kernel)`` replaced: ``[grid]`` gives ``launch``."""

    def __init__(self, launch: Callable) -> None:
        self.launch = launch

    def __getitem__(self, grid) -> Callable:
        return self.launch


# ---- the layers ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    """One call: input shape, layout, dtype, training (batch statistics) or evaluation (running statistics)."""

    shape: tuple[int, ...]
    channels_last: bool = False
    dtype: torch.dtype = torch.float64
    training: bool = True
    affine: bool = True
    bn_term: bool = True  # K = 3 mixtures (SN/SSN)
    offset: float = 0.0

    def __str__(self) -> str:
        layout = "cl" if self.channels_last else "contiguous"
        mode = "train" if self.training else "eval"
        extra = ("" if self.affine else "-noaffine") + ("" if self.bn_term else "-K2") + (
            f"-offset{self.offset:g}" if self.offset else "")
        return f"{'x'.join(map(str, self.shape))}-{layout}-{str(self.dtype)[6:]}-{mode}{extra}"


@dataclasses.dataclass(frozen=True)
class Layer:
    """How to call one layer's Triton functions and its reference.

    ``parameters(case, C)`` -> dict of the differentiable parameters (float64, None when absent) and options;
    ``forward(x, p, running_mean, running_var, training)`` -> the Triton forward's outputs;
    ``backward(grad_y, x, outputs, p, batch_from_input, input_grad)`` -> the Triton backward's outputs;
    ``reference(x, p, running_mean, running_var, training)`` -> y of :mod:`dynnorm.functional`.
    ``names``: the parameters in the order of the backward's gradients.
    """

    name: str
    names: tuple[str, ...]
    parameters: Callable
    forward: Callable
    backward: Callable
    reference: Callable
    has_bn: Callable = lambda p: True


def _affine(case: Case, C: int) -> dict:
    if not case.affine:
        return {"weight": None, "bias": None}
    return {"weight": 1 + 0.3 * torch.randn(C, dtype=torch.float64), "bias": torch.randn(C, dtype=torch.float64)}


def _switch_parameters(case: Case, C: int) -> dict:
    K = 3 if case.bn_term else 2
    logits = bool(torch.rand(()) < 0.7)
    if logits:
        mean_mixture, var_mixture = torch.randn(K, dtype=torch.float64), torch.randn(K, dtype=torch.float64)
    else:
        mean_mixture = torch.softmax(torch.randn(K, dtype=torch.float64), 0)
        var_mixture = torch.softmax(torch.randn(K, dtype=torch.float64), 0)
    return {**_affine(case, C), "mean_mixture": mean_mixture, "var_mixture": var_mixture, "mixture_logits": logits}


def _sparse_parameters(case: Case, C: int, radius: float | None = None) -> dict:
    K = 3 if case.bn_term else 2
    single = _values_per_row(case.shape) == 1
    mean_weight, var_weight = torch.randn(K, dtype=torch.float64), torch.randn(K, dtype=torch.float64)
    if single:  # IN alone is undefined for one value per (n, c)
        mean_weight[0] -= 3
        var_weight[0] -= 3
    radius = float(torch.rand(()) * 0.8) if radius is None else radius
    return {**_affine(case, C), "mean_weight": mean_weight, "var_weight": var_weight,
            "radius": torch.tensor(radius, dtype=torch.float64), "mean_fixed": torch.tensor(False),
            "var_fixed": torch.tensor(False), "mean_selected": torch.tensor(0), "var_selected": torch.tensor(0),
            "freeze": False}


SWITCH = Layer(
    "switch_norm", ("weight", "bias", "mean_mixture", "var_mixture"), _switch_parameters,
    forward=lambda x, p, rm, rv, training: kernels.switch_norm(
        x, p["weight"], p["bias"], p["mean_mixture"], p["var_mixture"], rm, rv, training, 1e-5,
        p["mixture_logits"]),
    backward=lambda g, x, out, p, batch, input_grad: kernels.switch_norm_backward(
        g, x, out[1], p["weight"], p["bias"], p["mean_mixture"], p["var_mixture"], batch, 1e-5, p["mixture_logits"],
        input_grad),
    reference=lambda x, p, rm, rv, training: functional.switch_norm(
        x, weight=p["weight"], bias=p["bias"], mean_mixture=p["mean_mixture"], var_mixture=p["var_mixture"],
        running_mean=rm, running_var=rv, num_batches_tracked=None, training=training, momentum=0.1, eps=1e-5,
        mixture_logits=p["mixture_logits"]),
    has_bn=lambda p: p["mean_mixture"].numel() == 3)

SPARSE = Layer(
    "sparse_switch_norm", ("weight", "bias", "mean_weight", "var_weight"), _sparse_parameters,
    forward=lambda x, p, rm, rv, training: kernels.sparse_switch_norm(
        x, p["weight"], p["bias"], p["mean_weight"], p["var_weight"], p["radius"], p["mean_fixed"], p["var_fixed"],
        p["mean_selected"], p["var_selected"], rm, rv, training, 1e-5, p["freeze"]),
    backward=lambda g, x, out, p, batch, input_grad: kernels.sparse_switch_norm_backward(
        g, x, out[1], p["weight"], p["bias"], p["mean_weight"], p["var_weight"], p["radius"], out[3], out[4], batch,
        1e-5, input_grad),
    reference=lambda x, p, rm, rv, training: functional.sparse_switch_norm(
        x, weight=p["weight"], bias=p["bias"], mean_weight=p["mean_weight"], var_weight=p["var_weight"],
        radius=p["radius"], mean_fixed=p["mean_fixed"].clone(), var_fixed=p["var_fixed"].clone(),
        mean_selected=p["mean_selected"].clone(), var_selected=p["var_selected"].clone(), running_mean=rm,
        running_var=rv, num_batches_tracked=None, training=training, momentum=0.1, eps=1e-5, freeze=p["freeze"]),
    has_bn=lambda p: p["mean_weight"].numel() == 3)


#: the layers of this module (EN, DN-B/DN-C, DN and AssocNorm: test_triton_math.py, with these checks)
LAYERS = [SWITCH, SPARSE]


# ---- helpers -------------------------------------------------------------------------------------------------------

def _values_per_row(shape: tuple[int, ...]) -> int:
    size = 1
    for s in shape[2:]:
        size *= s
    return size


def _input(case: Case) -> torch.Tensor:
    x = (torch.randn(case.shape, dtype=torch.float64) * 1.5 + 0.5 + case.offset).to(case.dtype)
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x


def _running(C: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.randn(C, dtype=torch.float64) + 0.5).to(dtype), (torch.rand(C, dtype=torch.float64) + 0.5).to(dtype)


def _cast(p: dict, dtype: torch.dtype) -> dict:
    """Float parameters in ``dtype`` (float32 for half-precision inputs, as a mixed-precision model keeps them)."""
    target = torch.float64 if dtype == torch.float64 else torch.float32
    return {k: v.to(target) if isinstance(v, torch.Tensor) and v.is_floating_point() and k != "radius" else v
            for k, v in p.items()}


def _tolerance(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-9, torch.float32: 2e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    tol = _tolerance(dtype)
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual.double(), expected.double(), rtol=tol, atol=tol * max(scale, 1.0),
                               msg=lambda m: f"{what}: {m}")


def _check_layer(layer: Layer, case: Case) -> None:
    """Forward, stats and every gradient of ``layer`` on ``case`` against the float64 reference."""
    N, C = case.shape[:2]
    p = _cast(layer.parameters(case, C), case.dtype)
    x = _input(case)
    buffers = torch.float64 if case.dtype == torch.float64 else torch.float32
    rm, rv = (None, None) if case.training else _running(C, buffers)
    outputs = layer.forward(x, p, rm, rv, case.training)
    y, stats = outputs[0], outputs[1]
    assert y.dtype == x.dtype and y.shape == x.shape and y.stride() == x.stride()
    assert stats.dtype == functional.accumulation_dtype(x.dtype) and stats.shape == (2 * N * C + 2 * C + 1,)

    # the reference in float64, on the same values of the input, parameters and running statistics
    xr = x.double().requires_grad_()
    pr = {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in p.items()}
    pr.update({k: pr[k].detach().requires_grad_() for k in layer.names if pr[k] is not None})
    rm_ref, rv_ref = (None, None) if rm is None else (rm.double(), rv.double())
    y_ref = layer.reference(xr, pr, rm_ref, rv_ref, case.training)
    _close(y, y_ref, case.dtype, "y")
    _check_stats(stats, x, case, rm_ref, rv_ref, layer.has_bn(p))
    _check_batch(outputs[2], x, case, layer.has_bn(p))

    grad_y = torch.randn(case.shape, dtype=torch.float64).to(case.dtype)
    y_ref.backward(grad_y.double())
    grads = layer.backward(grad_y, x, outputs, p, rm is None, True)
    dx = grads[0]
    assert dx.dtype == x.dtype and dx.stride() == x.stride()
    _close(dx, xr.grad, case.dtype, "dx")
    for name, grad in zip(layer.names, grads[1:]):
        if p[name] is None:
            assert grad.numel() == 0, name
            continue
        assert grad.shape == p[name].shape and grad.dtype == p[name].dtype, name
        expected = pr[name].grad if pr[name].grad is not None else torch.zeros_like(pr[name])
        _close(grad, expected, case.dtype, f"d_{name}")


def _check_stats(stats: torch.Tensor, x: torch.Tensor, case: Case, running_mean, running_var, has_bn: bool) -> None:
    N, C = case.shape[:2]
    NC = N * C
    flat = x.double().reshape(N, C, -1)
    reference = stats[-1].double()
    assert torch.isfinite(reference)
    tol = _tolerance(torch.float32 if case.dtype != torch.float64 else torch.float64)
    mean = stats[:NC].double().reshape(N, C) + reference
    var = stats[NC:2 * NC].double().reshape(N, C)
    torch.testing.assert_close(mean, flat.mean(2), rtol=tol, atol=tol * (1 + abs(case.offset)))
    torch.testing.assert_close(var, flat.var(2, correction=0), rtol=tol, atol=tol)
    bn_mean = stats[2 * NC:2 * NC + C].double() + reference
    bn_var = stats[2 * NC + C:2 * NC + 2 * C].double()
    if not has_bn:
        assert torch.all(stats[2 * NC:2 * NC + 2 * C] == 0)
    elif running_mean is not None:
        torch.testing.assert_close(bn_mean, running_mean, rtol=tol, atol=tol)
        torch.testing.assert_close(bn_var, running_var, rtol=tol, atol=tol)
    else:
        torch.testing.assert_close(bn_mean, flat.mean((0, 2)), rtol=tol, atol=tol * (1 + abs(case.offset)))
        torch.testing.assert_close(bn_var, flat.transpose(0, 1).reshape(C, -1).var(1, correction=0), rtol=tol,
                                   atol=tol)


def _check_batch(batch: torch.Tensor, x: torch.Tensor, case: Case, has_bn: bool) -> None:
    """The batch statistics for the running averages: mean and unbiased variance, or zeros."""
    C = case.shape[1]
    assert batch.shape == (2, C) and batch.dtype == functional.accumulation_dtype(x.dtype)
    if not (case.training and has_bn):
        assert torch.all(batch == 0)
        return
    values = x.double().transpose(0, 1).reshape(C, -1)
    tol = _tolerance(torch.float32 if case.dtype != torch.float64 else torch.float64)
    torch.testing.assert_close(batch[0].double(), values.mean(1), rtol=tol, atol=tol * (1 + abs(case.offset)))
    torch.testing.assert_close(batch[1].double(), values.var(1, correction=1 if values.shape[1] > 1 else 0),
                               rtol=tol, atol=tol)


CASES = [
    Case((2, 5, 6, 7)),
    Case((3, 6, 4, 5), channels_last=True, dtype=torch.float32),
    Case((2, 4, 3, 4, 5), channels_last=True, training=False),
    Case((1, 7, 9), dtype=torch.float32, training=False),  # 1d rank, N = 1 in evaluation
    Case((4, 6)),  # one value per (n, c): IN left out
    Case((5, 3, 1, 1), dtype=torch.float32, bn_term=False),
    Case((2, 5, 4, 6), channels_last=True, dtype=torch.bfloat16),
    Case((2, 3, 5, 5), dtype=torch.float16, training=False, affine=False),
    Case((3, 4, 20), dtype=torch.float32, offset=1000.0),  # a large common offset costs no precision
    Case((2, 3, 2, 3, 2), bn_term=False, affine=False),
]


@in_process
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: layer.name)
def test_matches_reference(layer, case):
    _check_layer(layer, case)


@in_process
@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: layer.name)
@pytest.mark.parametrize("channels_last", [False, True])
def test_small_tiles_split_rows_and_loop_over_blocks(layer, channels_last, monkeypatch):
    """Tiles smaller than the shapes: several spatial splits per row (merged by the math kernel), several tiles per
    program, and (N, C) blocks that do not divide N or C."""
    passes = importlib.import_module("dynnorm.kernels.triton.passes")
    monkeypatch.setattr(passes, "TILE", 16)
    monkeypatch.setattr(passes, "MAX_BLOCK_L", 8)
    monkeypatch.setattr(passes, "MAX_BLOCK_C", 4)
    monkeypatch.setattr(passes, "MATH_TILE", 8)
    monkeypatch.setattr(passes, "MATH_MAX_BLOCK_C", 4)
    monkeypatch.setattr(passes, "PROGRAMS_PER_SM", 12)
    case = Case((3, 7, 4, 5), channels_last=channels_last, dtype=torch.float32)
    g = passes.geometry(_input(case))
    assert g.splits > 1 and g.chunk > g.block_l and g.math_block_n < 3 and 7 % g.math_block_c != 0
    _check_layer(layer, case)


# ---- launches, allocations, errors ----------------------------------------------------------------------------------

@in_process
@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: layer.name)
@pytest.mark.parametrize("channels_last", [False, True])
def test_three_launches_each_way_and_input_sized_memory(layer, channels_last):
    case = Case((2, 6, 5, 7), channels_last=channels_last, dtype=torch.float32)
    N, C = case.shape[:2]
    x = _input(case)
    p = _cast(layer.parameters(case, C), torch.float32)
    input_bytes = x.numel() * x.element_size()
    small = 64 * (N * C + C + 1) * 4  # O(N C) work, for any number of spatial splits (<= MAX_SPLITS)
    passes = importlib.import_module("dynnorm.kernels.triton.passes")
    small += 2 * passes.geometry(x).splits * N * C * 4
    with kernels.record_launches() as forward:
        outputs = layer.forward(x, p, None, None, True)
    assert forward.launches == 3, forward.kernels
    assert forward.allocated_bytes("output") == input_bytes
    assert forward.allocated_bytes() - input_bytes <= small, forward.allocations
    grad_y = torch.randn_like(x)
    with kernels.record_launches() as backward:
        grads = layer.backward(grad_y, x, outputs, p, True, True)
    assert backward.launches == 3, backward.kernels
    assert backward.allocated_bytes("input_grad") == input_bytes
    assert backward.allocated_bytes() - input_bytes <= small, backward.allocations
    with kernels.record_launches() as parameters_only:
        grads_without_dx = layer.backward(grad_y, x, outputs, p, True, False)
    assert parameters_only.launches == 2 and parameters_only.allocated_bytes() <= small
    assert grads_without_dx[0].numel() == 0
    for with_dx, without_dx in zip(grads[1:], grads_without_dx[1:]):
        assert torch.equal(with_dx, without_dx)  # deterministic: the same bits
    again = layer.forward(x, p, None, None, True)
    assert all(torch.equal(a, b) for a, b in zip(outputs, again))


@in_process
def test_gradient_with_other_strides():
    """An expanded gradient (zero strides, as from ``y.sum()``) and a permuted one (copied) give the same dx."""
    case = Case((2, 3, 4, 5))
    x = _input(case)
    p = SWITCH.parameters(case, 3)
    outputs = SWITCH.forward(x, p, None, None, True)
    ones = torch.ones((), dtype=x.dtype).expand(x.shape)
    expected = SWITCH.backward(ones.contiguous(), x, outputs, p, True, True)
    for grad_y in (ones, ones.contiguous().transpose(2, 3).contiguous().transpose(2, 3)):
        actual = SWITCH.backward(grad_y, x, outputs, p, True, True)
        for a, e in zip(actual, expected):
            torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


@in_process
def test_errors_name_the_bad_value():
    assert kernels.interpreting() and kernels.available("cpu") and not kernels.available("cuda")
    p = SWITCH.parameters(Case((1, 3)), 3)
    with pytest.raises(ValueError, match=r"Expected more than 1 value per channel when training, got input size \[1, 3\]"):
        SWITCH.forward(torch.randn(1, 3, dtype=torch.float64), p, None, None, True)
    SWITCH.forward(torch.randn(1, 3, dtype=torch.float64), p, *_running(3), False)  # evaluation: fine
    with pytest.raises(ValueError, match=r"non-empty \(N, C, \*\) input, got shape \[0, 3, 4\]"):
        SWITCH.forward(torch.randn(0, 3, 4, dtype=torch.float64), p, None, None, True)
    with pytest.raises(ValueError, match="contiguous or channels-last"):
        SWITCH.forward(torch.randn(2, 3, 4, 5, dtype=torch.float64).transpose(2, 3), p, None, None, True)
    with pytest.raises(ValueError, match=r"\(2,\) \(IN, LN\) or \(3,\).*got \[4\]"):
        kernels.switch_norm(torch.randn(2, 3, 4), None, None, torch.zeros(4), torch.zeros(4), None, None, True, 1e-5,
                            True)


# ---- non-finite values ---------------------------------------------------------------------------------------------

@in_process
def test_non_finite_input_reaches_only_its_statistics():
    case = Case((3, 4, 5))
    x = _input(case)
    x[0, 0, 2] = float("nan")
    p = SWITCH.parameters(case, 4)
    y, stats, batch = SWITCH.forward(x, p, None, None, True)
    assert torch.isfinite(stats[-1])  # R averages the finite first values
    assert torch.isnan(y[0]).all() and torch.isnan(y[:, 0]).all()  # its sample (LN) and channel (BN)
    assert torch.isfinite(y[1:, 1:]).all()


@in_process
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_give_nan_never_freeze(bad):
    case = Case((2, 3, 4))
    x = _input(case)
    p = SPARSE.parameters(case, 3, radius=0.9)
    p["mean_weight"][1] = bad
    p["freeze"] = True
    y, stats, batch, mixtures, state = SPARSE.forward(x, p, None, None, True)
    assert torch.isnan(mixtures[0]).all() and torch.isnan(y).all()
    assert state[0] == 0 and state[2] == 0  # the mean mixture did not freeze
    grads = SPARSE.backward(torch.randn_like(x), x, (y, stats, batch, mixtures, state), p, True, True)
    assert torch.all(grads[3] == 0)  # NaN weights do not depend on the logits
    p = SWITCH.parameters(case, 3)
    p["mixture_logits"], p["var_mixture"][0] = True, bad
    assert torch.isnan(SWITCH.forward(x, p, None, None, True)[0]).all()


# ---- SSN's freezing --------------------------------------------------------------------------------------------------

@in_process
def test_sparse_freezes_on_device_and_uses_the_selection():
    case = Case((2, 3, 4, 4))
    x = _input(case)
    p = SPARSE.parameters(case, 3, radius=1.0)  # radius beyond the simplex's: SparsestMax is one-hot
    p["mean_weight"] = torch.tensor([0.1, 0.9, 0.3], dtype=torch.float64)
    p["var_weight"] = torch.tensor([0.2, 0.1, 0.8], dtype=torch.float64)
    p["freeze"] = True
    outputs = SPARSE.forward(x, p, None, None, True)
    mixtures, state = outputs[3], outputs[4]
    assert state.dtype == torch.long and state.tolist() == [1, 1, 1, 2]
    torch.testing.assert_close(mixtures, torch.tensor([[0.0, 1, 0], [0, 0, 1]], dtype=torch.float64))
    grads = SPARSE.backward(torch.randn_like(x), x, outputs, p, True, True)
    assert torch.all(grads[3] == 0) and torch.all(grads[4] == 0)  # fixed mixtures' logits: zero gradient
    # without freeze the state is passed through, and a fixed mixture is one-hot at its selection (not the argmax)
    p.update(freeze=False, radius=torch.tensor(0.0, dtype=torch.float64), mean_fixed=torch.tensor(True),
             mean_selected=torch.tensor(2))
    y, stats, batch, mixtures, state = SPARSE.forward(x, p, None, None, True)
    assert state.tolist() == [1, 0, 2, 0]
    assert mixtures[0].tolist() == [0.0, 0.0, 1.0] and 0 < mixtures[1].max() < 1
    _close(y, SPARSE.reference(x, p, None, None, True), torch.float64, "y")


# ---- a longer random fuzz ----------------------------------------------------------------------------------------

@in_process
@pytest.mark.slow
@pytest.mark.parametrize("seed", range(12))
def test_random_shapes(seed, monkeypatch):
    generator = torch.Generator().manual_seed(seed)

    def draw(n: int) -> int:
        return int(torch.randint(1, n + 1, (), generator=generator))

    rank = draw(3)
    shape = (draw(4), draw(9)) + tuple(draw(6) for _ in range(rank))
    channels_last = rank >= 2 and bool(draw(2) == 1)
    dtype = [torch.float64, torch.float32, torch.bfloat16][draw(3) - 1]
    training = bool(draw(3) > 1) and shape[0] * _values_per_row(shape) > 1
    case = Case(shape, channels_last=channels_last and len(shape) in (4, 5), dtype=dtype, training=training,
                affine=bool(draw(4) > 1), bn_term=bool(draw(3) > 1))
    torch.manual_seed(seed)
    if seed % 2:  # small tiles: several splits per row and several (N, C) blocks
        passes = importlib.import_module("dynnorm.kernels.triton.passes")
        for name, value in (("TILE", 16), ("MAX_BLOCK_L", 8), ("MAX_BLOCK_C", 4), ("MIN_TILE", 4),
                            ("MATH_TILE", 8), ("MATH_MAX_BLOCK_C", 4), ("PROGRAMS_PER_SM", 12)):
            monkeypatch.setattr(passes, name, value)
    _check_layer(LAYERS[seed % len(LAYERS)], case)
