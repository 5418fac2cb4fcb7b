"""The Triton kernels' ``(N, C)``-sized math of EN, DN-B/DN-C, AssocNorm and DN, run by Triton's interpreter on CPU
tensors, against the reference layer functions of :mod:`dynnorm.functional` in float64.

The reference sees an input built to have the chosen instance moments (two values ``mean +- sqrt(var)`` per
(n, c), or the mean alone for one value per (n, c)); the coefficients it normalizes with are read where every
layer applies them (``functional._normalize``), and their gradients come from autograd. The kernels get the same
moments in a statistics buffer (relative to a reference value ``R``) and must give the same ``scale``/``shift``
and, from random ``g_scale``/``g_shift``, the same gradients of the moments, of the BN term's statistics and of
every parameter. In training the BN term's statistics are the batch's (pooled from the moments), and the
kernels' BN gradients are folded into the moments' by autograd through :func:`dynnorm.functional.pooled_moments`.

The layer functions of the operator contract (moments pass, math kernel, normalize; gradient sums, math backward,
input gradient) are then checked end to end with the SN kernels' harness (``test_triton_kernels.py``): outputs,
statistics, input and parameter gradients on its cases, launches and memory, small tiles, and an sm_90 compile of
every kernel. As there, the interpreter tests run in a child pytest unless ``TRITON_INTERPRET=1`` was set.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable
from unittest import mock

import pytest
import torch

from dynnorm import functional

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

import test_triton_kernels as harness  # noqa: E402  (the SN/SSN kernel tests: cases, checks, the interpreter's setup)

IN_PROCESS = harness.IN_PROCESS  # TRITON_INTERPRET=1 was set before triton was imported: the tests run here
in_process = harness.in_process

from dynnorm.kernels.triton import associate, dynamic, dynamic_affine, exemplar, passes  # noqa: E402

REFERENCE = 0.75  # R of the statistics buffers
EPS = 1e-5


@pytest.mark.skipif(IN_PROCESS, reason="the interpreter runs in this process")
def test_interpreter_in_subprocess():
    """This module's tests in a child pytest whose triton is imported under the interpreter (triton decides that
    when it is first imported, so the rest of the test session and any compiled Triton it uses are left alone)."""
    result = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-W", "ignore"],
                            env=dict(os.environ, TRITON_INTERPRET="1"), capture_output=True, text=True, timeout=1100,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0 and " passed" in result.stdout, result.stdout[-6000:] + result.stderr[-3000:]


# ---- the reference: functional's layer functions on an input with the chosen moments ---------------------------

def _input(mean: torch.Tensor, var: torch.Tensor, single_value: bool) -> torch.Tensor:
    if single_value:
        return mean.unsqueeze(-1)
    std = var.sqrt()
    return torch.stack([mean + std, mean - std], dim=-1)


def _reference_coefficients(layer: Callable, x: torch.Tensor, **arguments):
    """``(scale, shift, output)`` of a functional layer call: the ``(N, C)`` coefficients it normalizes with."""
    captured = []
    normalize = functional._normalize

    def capture(x, reference, mean, scale, shift, *rest):
        captured.append((scale, shift))
        return normalize(x, reference, mean, scale, shift, *rest)

    with mock.patch.object(functional, "_normalize", capture):
        output = layer(x, **arguments)
    scale, shift = captured[-1]
    n, c = x.shape[:2]
    return scale.expand(n, c), shift.expand(n, c), output


def _statistics(mean, var, bn_mean, bn_var, dtype) -> torch.Tensor:
    """A statistics buffer (contract layout) from absolute means."""
    reference = torch.tensor([REFERENCE], dtype=torch.float64)
    return torch.cat([(mean - REFERENCE).flatten(), var.flatten(), bn_mean - REFERENCE, bn_var, reference]).to(dtype)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float, name: str) -> None:
    expected = expected.detach()
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual.double().reshape(expected.shape), expected, rtol=tolerance,
                               atol=tolerance * scale, msg=lambda message: f"{name}: {message}")


@dataclass
class MathLayer:
    """How to call one layer's reference and its kernels' math."""
    name: str
    parameters: Callable[..., dict]        # (C, generator, options) -> name -> float64 tensor
    reference: Callable[..., object]        # the functional layer function, called as (x, **arguments, **options)
    forward: Callable[..., tuple]           # (stats, N, C, params, options, **blocks) -> scale, shift, extra
    backward: Callable[..., tuple]          # (..., g_scale, g_shift, **blocks) -> (scale, g_mean, g_var, ...), grads
    batch_term: bool = True
    reference_options: tuple[str, ...] = ()  # the options the reference function takes


def _head(generator, rows, columns, scale=0.5):
    return torch.randn(rows, columns, generator=generator, dtype=torch.float64) * scale


def _affine(c, generator) -> dict:
    return {"weight": torch.rand(c, generator=generator, dtype=torch.float64) + 0.5,
            "bias": torch.randn(c, generator=generator, dtype=torch.float64) * 0.3}


def _exemplar_parameters(c, generator, options):
    hidden = options.get("hidden", 4)
    return {**_affine(c, generator), "ratio_w1": _head(generator, hidden, 2 * c),
            "ratio_b1": _head(generator, 1, hidden)[0], "ratio_w2": _head(generator, 3, hidden, 1.0),
            "ratio_b2": _head(generator, 1, 3)[0]}


def _optional(tensor, like):
    return like.new_empty(0) if tensor is None else tensor


def _grad_like(tensor, like):
    return like.new_empty(0) if tensor is None else torch.empty_like(tensor)


def _forward(math, stats, n, c, scratch, *args, **meta):
    """``(scale, shift)`` from a layer's forward math (a device function ``(stats, coef, scratch, N, C, ...)``),
    launched alone on one program with the given buffers."""
    coef = torch.full((2 * n * c,), float("nan"), dtype=stats.dtype)
    math[(1,)](stats, coef, stats.new_empty(max(scratch, 1)), n, c, *args, **meta)
    return coef[:n * c], coef[n * c:]


def _backward(math, stats, n, c, scratch, g_scale, g_shift, *args, **meta):
    """``(scale, g_mean, g_var, g_bn_mean, g_bn_var)`` from a layer's backward math (a device function
    ``(stats, work, scratch, N, C, ...)``), launched alone on one program."""
    nc = n * c
    work = torch.full((5 * nc + 2 * c,), float("nan"), dtype=stats.dtype)
    work[:nc], work[nc:2 * nc] = g_shift, g_scale
    math[(1,)](stats, work, stats.new_empty(max(scratch, 1)), n, c, *args, **meta)
    return work[2 * nc:3 * nc], work[3 * nc:4 * nc], work[4 * nc:5 * nc], work[5 * nc:5 * nc + c], work[5 * nc + c:]


def _exemplar_meta(p, single, block_n, block_c):
    return dict(**passes.affine_meta(p["weight"], p["bias"]), SINGLE=single, BLOCK_N=block_n, BLOCK_C=block_c)


def _exemplar_forward(stats, n, c, p, options, single, block_n, block_c):
    hidden = p["ratio_b1"].numel()
    ratios = stats.new_empty(3)
    scale, shift = _forward(
        exemplar._exemplar_math, stats, n, c, exemplar._exemplar_scratch(n, hidden),
        _optional(p["weight"], stats), _optional(p["bias"], stats), p["ratio_w1"], p["ratio_b1"], p["ratio_w2"],
        p["ratio_b2"], ratios, hidden, EPS, **_exemplar_meta(p, single, block_n, block_c))
    return scale, shift, ratios


def _exemplar_backward(stats, n, c, p, options, g_scale, g_shift, single, block_n, block_c):
    hidden = p["ratio_b1"].numel()
    grads = [_grad_like(p[k], stats) for k in ("weight", "bias", "ratio_w1", "ratio_b1", "ratio_w2", "ratio_b2")]
    results = _backward(
        exemplar._exemplar_math_backward, stats, n, c, exemplar._exemplar_scratch(n, hidden), g_scale,
        g_shift, _optional(p["weight"], stats), _optional(p["bias"], stats), p["ratio_w1"], p["ratio_b1"],
        p["ratio_w2"], p["ratio_b2"], *grads, hidden, EPS, **_exemplar_meta(p, single, block_n, block_c))
    return results, grads


EXEMPLAR = MathLayer("EN", _exemplar_parameters, functional.exemplar_norm, _exemplar_forward, _exemplar_backward)


def _dynamic_affine_parameters(c, generator, options):
    hidden = options.get("hidden", 4)
    return {**_affine(c, generator), "sc_w1": _head(generator, hidden, 2 * c),
            "sc_b1": _head(generator, 1, hidden)[0], "sc_w2": _head(generator, 2 * c, hidden),
            "sc_b2": _head(generator, 1, 2 * c)[0]}


_GENERATOR = ("weight", "bias", "sc_w1", "sc_b1", "sc_w2", "sc_b2")


def _dynamic_affine_meta(p, options, block_n, block_c):
    return dict(**passes.affine_meta(p["weight"], p["bias"]), PER_SAMPLE=options["per_sample"], BLOCK_N=block_n,
                BLOCK_C=block_c)


def _dynamic_affine_forward(stats, n, c, p, options, single, block_n, block_c):
    hidden, per_sample = p["sc_b1"].numel(), options["per_sample"]
    scale, shift = _forward(
        dynamic_affine._dynamic_affine_math, stats, n, c,
        dynamic_affine._dynamic_affine_scratch(n, c, hidden, per_sample), *(_optional(p[k], stats) for k in _GENERATOR),
        hidden, EPS, **_dynamic_affine_meta(p, options, block_n, block_c))
    return scale, shift, None


def _dynamic_affine_backward(stats, n, c, p, options, g_scale, g_shift, single, block_n, block_c):
    hidden, per_sample = p["sc_b1"].numel(), options["per_sample"]
    grads = [_grad_like(p[k], stats) for k in _GENERATOR]
    results = _backward(
        dynamic_affine._dynamic_affine_math_backward, stats, n, c,
        dynamic_affine._dynamic_affine_scratch(n, c, hidden, per_sample), g_scale, g_shift,
        *(_optional(p[k], stats) for k in _GENERATOR), *grads, hidden, EPS,
        **_dynamic_affine_meta(p, options, block_n, block_c))
    return results, grads


DYNAMIC_AFFINE = MathLayer("DN-B/C", _dynamic_affine_parameters, functional.dynamic_affine_norm,
                           _dynamic_affine_forward, _dynamic_affine_backward, reference_options=("per_sample",))


def _associate_parameters(c, generator, options):
    groups = options["num_groups"]
    embedding = options.get("embedding", 2)
    return {**_affine(c, generator), "encoder_weight": _head(generator, embedding, groups),
            "scale_decoder_weight": _head(generator, groups, embedding, 1.0),
            "shift_decoder_weight": _head(generator, groups, embedding, 1.0)}


_AUTOENCODER = ("weight", "bias", "encoder_weight", "scale_decoder_weight", "shift_decoder_weight")


def _associate_meta(c, options, block_n, block_c):
    return dict(SCALE_FROM_MEAN=options["scale_from_mean"], BLOCK_N=block_n, BLOCK_C=block_c,
                BLOCK_S=associate.pow2(c // options["num_groups"]))


def _associate_forward(stats, n, c, p, options, single, block_n, block_c):
    groups, embedding = options["num_groups"], p["encoder_weight"].shape[0]
    scale, shift = _forward(
        associate._associate_math, stats, n, c, associate._associate_scratch(n, groups, embedding),
        *(p[k] for k in _AUTOENCODER), groups, embedding, EPS, **_associate_meta(c, options, block_n, block_c))
    return scale, shift, None


def _associate_backward(stats, n, c, p, options, g_scale, g_shift, single, block_n, block_c):
    groups, embedding = options["num_groups"], p["encoder_weight"].shape[0]
    grads = [_grad_like(p[k], stats) for k in _AUTOENCODER]
    results = _backward(
        associate._associate_math_backward, stats, n, c, associate._associate_scratch(n, groups, embedding), g_scale,
        g_shift, *(p[k] for k in _AUTOENCODER), *grads, groups, embedding, EPS,
        **_associate_meta(c, options, block_n, block_c))
    return results, grads


ASSOCIATE = MathLayer("AssocNorm", _associate_parameters, functional.associate_norm, _associate_forward,
                      _associate_backward, batch_term=False, reference_options=("num_groups", "scale_from_mean"))


def _dynamic_parameters(c, generator, options):
    k = len(options["factors"])
    shapes = {"mean_gate_logits": (k,), "var_gate_logits": (k,), "mean_batch_logit": (), "var_batch_logit": ()}
    return {**_affine(c, generator),
            **{name: torch.randn(shape, generator=generator, dtype=torch.float64) for name, shape in shapes.items()}}


_GATES = ("weight", "bias", "mean_gate_logits", "var_gate_logits", "mean_batch_logit", "var_batch_logit")


def _dynamic_meta(p, options, block_n, block_c):
    return dict(**passes.affine_meta(p["weight"], p["bias"]), FACTORS=tuple(options["factors"]), BLOCK_N=block_n,
                BLOCK_C=block_c)


def _dynamic_forward(stats, n, c, p, options, single, block_n, block_c):
    scale, shift = _forward(
        dynamic._dynamic_math, stats, n, c, dynamic._dynamic_scratch(n, c, options["factors"], backward=False),
        *(_optional(p[k], stats) for k in _GATES), EPS, **_dynamic_meta(p, options, block_n, block_c))
    return scale, shift, None


def _dynamic_backward(stats, n, c, p, options, g_scale, g_shift, single, block_n, block_c):
    grads = [_grad_like(p[k], stats) for k in _GATES]
    results = _backward(
        dynamic._dynamic_math_backward, stats, n, c, dynamic._dynamic_scratch(n, c, options["factors"], backward=True),
        g_scale, g_shift, *(_optional(p[k], stats) for k in _GATES), *grads, EPS,
        **_dynamic_meta(p, options, block_n, block_c))
    return results, grads


DYNAMIC = MathLayer("DN", _dynamic_parameters, functional.dynamic_norm, _dynamic_forward, _dynamic_backward,
                    reference_options=("factors",))


def _moments(n, c, single_value, generator):
    """Leaf instance means (with an offset) and variances (0 for one value per (n, c))."""
    mean = (torch.randn(n, c, generator=generator, dtype=torch.float64) * 0.7 + REFERENCE + 2).requires_grad_()
    if single_value:
        return mean, torch.zeros(n, c, dtype=torch.float64)
    return mean, (torch.rand(n, c, generator=generator, dtype=torch.float64) + 0.2).requires_grad_()


def _check(layer: MathLayer, n: int, c: int, *, training: bool = True, single_value: bool = False,
           dtype: torch.dtype = torch.float64, block_n: int = 2, block_c: int = 16, affine: bool = True,
           seed: int = 0, **options) -> None:
    """The layer's kernel math against the reference: coefficients, then every gradient."""
    generator = torch.Generator().manual_seed(seed)
    mean, var = _moments(n, c, single_value, generator)
    params = {name: p.requires_grad_() for name, p in layer.parameters(c, generator, options).items()}
    if not affine:
        params["weight"] = params["bias"] = None
    arguments = dict(params)
    running = None
    if layer.batch_term:
        if not training:
            running = (torch.randn(c, generator=generator, dtype=torch.float64) * 0.5 + REFERENCE + 2,
                       torch.rand(c, generator=generator, dtype=torch.float64) + 0.3)
            running = tuple(r.requires_grad_() for r in running)
        arguments.update(running_mean=running and running[0], running_var=running and running[1],
                         num_batches_tracked=None, training=training, momentum=0.1)
    ref_scale, ref_shift, ref_output = _reference_coefficients(
        layer.reference, _input(mean, var, single_value), eps=EPS, **arguments,
        **{k: v for k, v in options.items() if k in layer.reference_options})

    with torch.no_grad():
        if not layer.batch_term:
            bn_mean, bn_var = torch.full((c,), REFERENCE, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
        elif training:
            bn_mean, bn_var = (s[0] for s in functional.pooled_moments(mean, var, dim=0))
        else:
            bn_mean, bn_var = running
        stats = _statistics(mean, var, bn_mean, bn_var, dtype)
    kernel_params = {name: None if p is None else p.detach().to(dtype) for name, p in params.items()}
    tolerance = 1e-9 if dtype == torch.float64 else 2e-4
    blocks = dict(single=single_value, block_n=block_n, block_c=block_c)
    scale, shift, extra = layer.forward(stats, n, c, kernel_params, options, **blocks)
    _assert_close(scale, ref_scale, tolerance, "scale")
    _assert_close(shift, ref_shift, tolerance, "shift")
    if extra is not None:
        _assert_close(extra, ref_output[1], tolerance, "extra output")

    g_scale = torch.randn(n, c, generator=generator, dtype=torch.float64)
    g_shift = torch.randn(n, c, generator=generator, dtype=torch.float64)
    leaves = {"mean": mean, "var": var, **{k: p for k, p in params.items() if p is not None}}
    if running is not None:
        leaves.update(running_mean=running[0], running_var=running[1])
    names = [k for k, v in leaves.items() if v.requires_grad]
    expected = dict(zip(names, torch.autograd.grad((g_scale * ref_scale + g_shift * ref_shift).sum(),
                                                   [leaves[k] for k in names], allow_unused=True)))
    (scale_again, g_mean, g_var, g_bn_mean, g_bn_var), grads = layer.backward(
        stats, n, c, kernel_params, options, g_scale.to(dtype).flatten(), g_shift.to(dtype).flatten(),
        **blocks)
    torch.testing.assert_close(scale_again, scale, rtol=0, atol=0)
    g_mean, g_var = g_mean.double().reshape(n, c), g_var.double().reshape(n, c)
    g_bn_mean, g_bn_var = g_bn_mean.double(), g_bn_var.double()
    if not layer.batch_term:
        assert not g_bn_mean.any() and not g_bn_var.any()
    elif training:  # the batch statistics are functions of the moments
        pooled_mean, pooled_var = functional.pooled_moments(mean, var, dim=0)
        pooled = [t for t in (mean, var) if t.requires_grad]
        folded = torch.autograd.grad((pooled_mean, pooled_var), pooled, (g_bn_mean[None], g_bn_var[None]))
        g_mean = g_mean + folded[0]
        if not single_value:
            g_var = g_var + folded[1]
    else:
        _assert_close(g_bn_mean, expected["running_mean"], tolerance, "g_bn_mean")
        _assert_close(g_bn_var, expected["running_var"], tolerance, "g_bn_var")
    _assert_close(g_mean, expected["mean"], tolerance, "g_mean")
    if not single_value:
        _assert_close(g_var, expected["var"], tolerance, "g_var")
    for name, grad in zip(params, grads):
        if params[name] is None:
            assert grad.numel() == 0, name
        else:
            assert grad.dtype == dtype and grad.shape == params[name].shape, name
            unused = torch.zeros_like(params[name])  # a parameter that does not reach the coefficients
            _assert_close(grad, unused if expected[name] is None else expected[name], tolerance, f"d_{name}")


# ---- EN -------------------------------------------------------------------------------------------------------------

@in_process
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("n, c, block_n, block_c", [(2, 5, 2, 16), (3, 21, 2, 16), (1, 16, 4, 16), (5, 8, 4, 8)])
def test_exemplar(n, c, block_n, block_c, training):
    _check(EXEMPLAR, n, c, training=training, block_n=block_n, block_c=block_c)


@in_process
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_exemplar_one_value_per_row(training):
    """L == 1: IN is left out of the ratios."""
    _check(EXEMPLAR, 3, 6, training=training, single_value=True)


@in_process
def test_exemplar_wide_head_no_affine_float32():
    _check(EXEMPLAR, 2, 21, dtype=torch.float32, affine=False, hidden=5)


# ---- DN-B / DN-C ----------------------------------------------------------------------------------------------------

@in_process
@pytest.mark.parametrize("per_sample", [True, False], ids=["DN-B", "DN-C"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("n, c, block_n, block_c", [(2, 6, 2, 16), (3, 21, 2, 16), (1, 9, 2, 8)])
def test_dynamic_affine(n, c, block_n, block_c, training, per_sample):
    _check(DYNAMIC_AFFINE, n, c, training=training, block_n=block_n, block_c=block_c, per_sample=per_sample)


@in_process
@pytest.mark.parametrize("per_sample", [True, False], ids=["DN-B", "DN-C"])
def test_dynamic_affine_one_value_per_row_no_affine_float32(per_sample):
    _check(DYNAMIC_AFFINE, 4, 10, single_value=True, dtype=torch.float32, affine=False, hidden=5,
           per_sample=per_sample)


# ---- AssocNorm -----------------------------------------------------------------------------------------------------

@in_process
@pytest.mark.parametrize("scale_from_mean", [True, False], ids=["scale-from-mean", "scale-from-var"])
@pytest.mark.parametrize("n, c, groups, block_n, block_c", [(2, 12, 4, 2, 8), (3, 10, 1, 2, 8), (2, 9, 9, 4, 4),
                                                            (1, 24, 6, 2, 16)])
def test_associate(n, c, groups, block_n, block_c, scale_from_mean):
    _check(ASSOCIATE, n, c, block_n=block_n, block_c=block_c, num_groups=groups, scale_from_mean=scale_from_mean)


@in_process
def test_associate_one_value_per_row_float32():
    _check(ASSOCIATE, 3, 8, single_value=True, dtype=torch.float32, num_groups=2, scale_from_mean=True, embedding=3)


# ---- DN ------------------------------------------------------------------------------------------------------------

@in_process
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("n, factors, block_n, block_c", [(2, (3, 2, 2), 2, 8), (3, (5,), 2, 4), (2, (1,), 2, 2),
                                                          (3, (), 2, 2), (2, (2, 2, 2, 2), 2, 16), (1, (3, 2), 2, 8)])
def test_dynamic(n, factors, block_n, block_c, training):
    c = 1
    for size in factors:
        c *= size
    _check(DYNAMIC, n, c, training=training, block_n=block_n, block_c=block_c, factors=factors)


@in_process
def test_dynamic_one_value_per_row_no_affine_float32():
    _check(DYNAMIC, 4, 6, single_value=True, dtype=torch.float32, affine=False, factors=(3, 2))


# ---- the assembled layer functions (three launches each way) against the reference layers -------------------------


def _heads(C: int, hidden: int, outputs: int, prefix: str) -> dict:
    return {f"{prefix}w1": torch.randn(hidden, 2 * C, dtype=torch.float64) * 0.5,
            f"{prefix}b1": torch.randn(hidden, dtype=torch.float64) * 0.5,
            f"{prefix}w2": torch.randn(outputs, hidden, dtype=torch.float64) * 0.5,
            f"{prefix}b2": torch.randn(outputs, dtype=torch.float64) * 0.5}


def _reference_batch(rm, rv, training) -> dict:
    return dict(running_mean=rm, running_var=rv, num_batches_tracked=None, training=training, momentum=0.1, eps=EPS)


EXEMPLAR_NORM = harness.Layer(
    "exemplar_norm", ("weight", "bias", "ratio_w1", "ratio_b1", "ratio_w2", "ratio_b2"),
    lambda case, C: {**harness._affine(case, C), **_heads(C, 4, 3, "ratio_")},
    forward=lambda x, p, rm, rv, training: exemplar.exemplar_norm(
        x, p["weight"], p["bias"], p["ratio_w1"], p["ratio_b1"], p["ratio_w2"], p["ratio_b2"], rm, rv, training, EPS),
    backward=lambda g, x, out, p, batch, input_grad: exemplar.exemplar_norm_backward(
        g, x, out[1], p["weight"], p["bias"], p["ratio_w1"], p["ratio_b1"], p["ratio_w2"], p["ratio_b2"], batch, EPS,
        input_grad),
    reference=lambda x, p, rm, rv, training: functional.exemplar_norm(
        x, weight=p["weight"], bias=p["bias"], ratio_w1=p["ratio_w1"], ratio_b1=p["ratio_b1"],
        ratio_w2=p["ratio_w2"], ratio_b2=p["ratio_b2"], **_reference_batch(rm, rv, training))[0])


def _dynamic_affine_layer(per_sample: bool) -> harness.Layer:
    return harness.Layer(
        "dynamic_affine_norm", ("weight", "bias", "sc_w1", "sc_b1", "sc_w2", "sc_b2"),
        lambda case, C: {**harness._affine(case, C), **_heads(C, 3, 2 * C, "sc_")},
        forward=lambda x, p, rm, rv, training: dynamic_affine.dynamic_affine_norm(
            x, p["weight"], p["bias"], p["sc_w1"], p["sc_b1"], p["sc_w2"], p["sc_b2"], rm, rv, training, EPS,
            per_sample),
        backward=lambda g, x, out, p, batch, input_grad: dynamic_affine.dynamic_affine_norm_backward(
            g, x, out[1], p["weight"], p["bias"], p["sc_w1"], p["sc_b1"], p["sc_w2"], p["sc_b2"], batch, EPS,
            per_sample, input_grad),
        reference=lambda x, p, rm, rv, training: functional.dynamic_affine_norm(
            x, weight=p["weight"], bias=p["bias"], sc_w1=p["sc_w1"], sc_b1=p["sc_b1"], sc_w2=p["sc_w2"],
            sc_b2=p["sc_b2"], per_sample=per_sample, **_reference_batch(rm, rv, training)))


def _associate_layer_parameters(case, C: int) -> dict:
    groups = max(g for g in (1, 2, 3, 4) if C % g == 0)
    return {"weight": 0.5 + torch.rand(C, dtype=torch.float64), "bias": torch.randn(C, dtype=torch.float64),
            "encoder_weight": torch.randn(2, groups, dtype=torch.float64) * 0.5,
            "scale_decoder_weight": torch.randn(groups, 2, dtype=torch.float64),
            "shift_decoder_weight": torch.randn(groups, 2, dtype=torch.float64), "num_groups": groups,
            "scale_from_mean": C % 2 == 1}


ASSOCIATE_NORM = harness.Layer(
    "associate_norm", ("weight", "bias", "encoder_weight", "scale_decoder_weight", "shift_decoder_weight"),
    _associate_layer_parameters,
    forward=lambda x, p, rm, rv, training: associate.associate_norm(
        x, p["weight"], p["bias"], p["encoder_weight"], p["scale_decoder_weight"], p["shift_decoder_weight"],
        p["num_groups"], EPS, p["scale_from_mean"]),
    backward=lambda g, x, out, p, batch, input_grad: associate.associate_norm_backward(
        g, x, out[1], p["weight"], p["bias"], p["encoder_weight"], p["scale_decoder_weight"],
        p["shift_decoder_weight"], p["num_groups"], EPS, p["scale_from_mean"], input_grad),
    reference=lambda x, p, rm, rv, training: functional.associate_norm(
        x, weight=p["weight"], bias=p["bias"], encoder_weight=p["encoder_weight"],
        scale_decoder_weight=p["scale_decoder_weight"], shift_decoder_weight=p["shift_decoder_weight"],
        num_groups=p["num_groups"], eps=EPS, scale_from_mean=p["scale_from_mean"]),
    has_bn=lambda p: False)


def _dynamic_layer_parameters(case, C: int) -> dict:
    from dynnorm.dynamic import channel_factors

    factors = channel_factors(C)
    return {**harness._affine(case, C), "mean_gate_logits": torch.randn(len(factors), dtype=torch.float64),
            "var_gate_logits": torch.randn(len(factors), dtype=torch.float64),
            "mean_batch_logit": torch.randn((), dtype=torch.float64),
            "var_batch_logit": torch.randn((), dtype=torch.float64), "factors": factors}


DYNAMIC_NORM = harness.Layer(
    "dynamic_norm", _GATES, _dynamic_layer_parameters,
    forward=lambda x, p, rm, rv, training: dynamic.dynamic_norm(
        x, *(p[k] for k in _GATES), p["factors"], rm, rv, training, EPS),
    backward=lambda g, x, out, p, batch, input_grad: dynamic.dynamic_norm_backward(
        g, x, out[1], *(p[k] for k in _GATES), p["factors"], batch, EPS, input_grad),
    reference=lambda x, p, rm, rv, training: functional.dynamic_norm(
        x, **{k: p[k] for k in _GATES}, factors=p["factors"], **_reference_batch(rm, rv, training)))

LAYERS = [EXEMPLAR_NORM, _dynamic_affine_layer(True), _dynamic_affine_layer(False), ASSOCIATE_NORM, DYNAMIC_NORM]
LAYER_IDS = ["EN", "DN-B", "DN-C", "AssocNorm", "DN"]


@in_process
@pytest.mark.parametrize("case", harness.CASES, ids=str)
@pytest.mark.parametrize("layer", LAYERS, ids=LAYER_IDS)
def test_layer_functions(layer, case):
    harness._check_layer(layer, case)



@in_process
@pytest.mark.parametrize("layer", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "cl"])
def test_layer_functions_launches_and_memory(layer, channels_last):
    """Three launches each way, input-sized memory, deterministic results (the SN kernels' test, on these layers)."""
    harness.test_three_launches_each_way_and_input_sized_memory(layer, channels_last)


@in_process
@pytest.mark.parametrize("layer", LAYERS, ids=LAYER_IDS)
def test_layer_functions_small_tiles(layer, monkeypatch):
    """Tiles smaller than the shapes: several spatial splits per row, (N, C) blocks that do not divide N or C."""
    harness.test_small_tiles_split_rows_and_loop_over_blocks(layer, True, monkeypatch)


@pytest.mark.skipif(IN_PROCESS, reason="the kernels are interpreted in this process")
@pytest.mark.parametrize("layer", LAYERS, ids=LAYER_IDS)
def test_kernels_compile_for_h100(layer, monkeypatch):
    """Every kernel a layer call launches compiles to an sm_90 binary (no GPU needed; the SN kernels' test)."""
    monkeypatch.setattr(harness, "LAYERS", [layer])
    harness.test_kernels_compile_for_h100(monkeypatch)


@in_process
@pytest.mark.parametrize("layer", LAYERS, ids=LAYER_IDS)
def test_a_non_finite_head_parameter_shows_in_the_output(layer):
    case = harness.Case((2, 6, 4))
    p = layer.parameters(case, 6)
    p[layer.names[2]].view(-1)[0] = float("nan")  # the head's first matrix, or DN's first gate logit
    y = layer.forward(harness._input(case), p, None, None, True)[0]
    assert torch.isnan(y).all()


def test_errors_name_the_bad_value():
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    gates = (torch.zeros(2), torch.zeros(2), torch.zeros(()), torch.zeros(()))
    with pytest.raises(ValueError, match=r"factors \[4, 2\] must be positive with product C = 6"):
        dynamic.dynamic_norm(x, None, None, *gates, (4, 2), None, None, True, EPS)
    with pytest.raises(ValueError, match=r"gate logits must be \(2,\) tensors .* got \[3\] and \[2\]"):
        dynamic.dynamic_norm(x, None, None, torch.zeros(3), *gates[1:], (3, 2), None, None, True, EPS)
    autoencoder = (torch.zeros(2, 4), torch.zeros(4, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"num_groups \(4\) must be positive and divide C = 6"):
        associate.associate_norm(x, torch.ones(6), torch.zeros(6), *autoencoder, 4, EPS, True)
    with pytest.raises(ValueError, match=r"the encoder must be \(E, 3\) and the decoders \(3, E\), got \[2, 4\]"):
        associate.associate_norm(x, torch.ones(6), torch.zeros(6), *autoencoder, 3, EPS, True)
    head = (torch.zeros(4, 12), torch.zeros(4), torch.zeros(3, 4), torch.zeros(3))
    with pytest.raises(ValueError, match=r"exemplar_norm: the head must be \(4, 12\), \(4,\), \(3, 4\), \(3,\) .* "
                                         r"got \[4, 12\], \[4\], \[2, 4\]"):
        exemplar.exemplar_norm(x, None, None, head[0], head[1], torch.zeros(2, 4), head[3], None, None, True, EPS)
    with pytest.raises(ValueError, match=r"dynamic_affine_norm: the head must be \(4, 12\)"):
        dynamic_affine.dynamic_affine_norm(x, None, None, *head, None, None, True, EPS, True)
