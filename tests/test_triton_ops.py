"""The Triton kernels as registered operators (``torch.ops.dynnorm_triton.*``, :mod:`dynnorm.kernels.triton_ops`)
driving the layers end to end, on CPU tensors under the Triton interpreter: training steps and evaluation equal to
the reference path (running statistics included), three launches each way, input-sized saved memory, double
backward, and torch.compile keeping the operators.

As in ``test_triton_kernels.py``, the tests run in this process when ``TRITON_INTERPRET=1`` was set before triton
was imported; otherwise one test re-runs this module in a child pytest with the variable set.
"""
from __future__ import annotations

import copy
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import dynnorm
from layer_cases import CASES, randomize

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

import dynnorm.kernels.triton as triton_kernels  # noqa: E402  (does not import triton)

IN_PROCESS = os.environ.get("TRITON_INTERPRET") == "1" and triton_kernels.interpreting()
in_process = pytest.mark.skipif(not IN_PROCESS, reason="run by test_registered_operators_in_subprocess")


@pytest.mark.skipif(IN_PROCESS, reason="the interpreter runs in this process")
def test_registered_operators_in_subprocess():
    command = [sys.executable, "-m", "pytest", __file__, "-q", "-rs", "-p", "no:cacheprovider", "-W", "ignore"]
    environment = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run(command, cwd=Path(__file__).resolve().parent.parent, env=environment,
                            capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert re.search(r"\d+ passed", result.stdout.strip().splitlines()[-1]), result.stdout[-3000:]
    assert "run by test_registered_operators_in_subprocess" not in result.stdout, result.stdout[-3000:]


@pytest.fixture
def triton_path(monkeypatch):
    """The layers run the Triton operators on CPU tensors (as they do on CUDA after set_cuda_kernels('triton'))."""
    from dynnorm.kernels import triton_ops

    def select(x, *, synchronized=False):
        return dynnorm.functional if synchronized or not dynnorm.fast_path_enabled() else triton_ops.layers

    monkeypatch.setattr(dynnorm.kernels, "select", select)
    return triton_ops


def _step(layer: nn.Module, x: torch.Tensor):
    x = x.detach().clone().requires_grad_()
    out = layer(x)
    upstream = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    params = [p for p in layer.parameters() if p.requires_grad]
    grads = torch.autograd.grad((out * upstream).sum(), [x, *params], allow_unused=True)
    return out, grads


@in_process
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_layers_on_the_triton_operators_equal_the_reference(case, layout, triton_path):
    triton_layer = randomize(case.build(8, dtype=torch.float64))
    reference_layer = copy.deepcopy(triton_layer)
    x = torch.randn(3, 8, 4, 5, dtype=torch.float64) * 2 + 0.5
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    for training, steps in ((True, 2), (False, 1)):
        triton_layer.train(training), reference_layer.train(training)
        for _ in range(steps):
            out, grads = _step(triton_layer, x)
            assert out.grad_fn.name().startswith("GeneratedBackwardFor_dynnorm_triton_")
            with dynnorm.fast_path(False):
                expected, expected_grads = _step(reference_layer, x)
            assert out.stride() == expected.stride()
            torch.testing.assert_close(out, expected, rtol=1e-7, atol=1e-7)
            for a, b in zip(grads, expected_grads):
                torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-7)
    for (name, a), b in zip(triton_layer.named_buffers(), reference_layer.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-7, msg=name)


@in_process
@pytest.mark.parametrize("case", CASES, ids=str)
def test_three_launches_each_way_and_input_sized_saved_memory(case, triton_path):
    layer = randomize(case.build(8))
    x = torch.randn(2, 8, 24, 24, requires_grad=True)  # large enough that O(C) statistics are small beside it
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with triton_kernels.record_launches() as forward, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    with triton_kernels.record_launches() as backward:
        out.sum().backward()
    assert forward.launches == 3 and backward.launches == 3, (forward.kernels, backward.kernels)
    assert sum(saved.values()) <= 1.05 * x.nbytes


@in_process
@pytest.mark.parametrize("case", CASES, ids=str)
def test_double_backward_through_the_triton_operators(case, triton_path):
    layer = randomize(case.build(4, dtype=torch.float64))
    x = torch.randn(2, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    names = [name for name, _ in layer.named_parameters()]

    def fn(inp, *params):
        return torch.func.functional_call(layer, dict(zip(names, params)), (inp,))

    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
    assert fn(x, *params).grad_fn.name().startswith("GeneratedBackwardFor_dynnorm_triton_")
    assert torch.autograd.gradgradcheck(fn, (x, *params), atol=1e-5, fast_mode=True)


@in_process
@pytest.mark.parametrize("case", [c for c in CASES if c.name in ("SN", "SSN", "EN", "DN", "AssocNorm")], ids=str)
def test_compile_keeps_the_triton_operators(case, triton_path):
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    torch._dynamo.reset()
    graphs = []

    def compiler(gm, example_inputs):
        graphs.append({str(node.target) for node in gm.graph.nodes if node.op == "call_function"})
        return make_boxed_func(gm.forward)

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), randomize(case.build(8)), nn.ReLU())
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, backend=aot_autograd(fw_compiler=compiler, bw_compiler=compiler), fullgraph=True)
    x = torch.randn(2, 3, 6, 6)
    out = compiled(x)
    out.square().sum().backward()
    expected = eager(x)
    expected.square().sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for a, b in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
    assert any(op.startswith("dynnorm_triton.") and not op.endswith("_backward.default") for op in graphs[0])
    assert any(op.startswith("dynnorm_triton.") and op.endswith("_backward.default") for op in graphs[1])
