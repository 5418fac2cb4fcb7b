"""Exports that are right or refuse: torch.export, ONNX (onnxruntime), torch.compile(fullgraph=True), tracing,
torch.jit.script, torch.func transforms.

Graph captures run the reference ops, which have no Python branch on tensor values, so a captured graph is
right for every input, not only for the one it was captured with.
"""
from __future__ import annotations

import copy
import importlib.util
import warnings

import pytest
import torch
from torch import nn

import dynnorm
from layer_cases import CASES, randomize, ready_to_freeze

CHANNELS = 8
ONNX_AVAILABLE = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))


def _x(n: int = 4, offset: float = 0.0) -> torch.Tensor:
    return torch.randn(n, CHANNELS, 5, 6) * 2 + offset


def _trained(case, steps: int = 2) -> nn.Module:
    layer = randomize(case.build(CHANNELS))
    if isinstance(layer, dynnorm.SparseSwitchNorm2d):
        dynnorm.set_sparsestmax_radius(layer, 0.3)  # pushes off the sparsemax point: every branch is used
    for _ in range(steps):
        layer(_x())
    return layer


@pytest.mark.parametrize("case", CASES, ids=str)
def test_torch_export_in_eval_matches_eager_for_other_batch_sizes_and_offsets(case):
    layer = _trained(case).eval()
    batch = torch.export.Dim("batch", min=1)
    exported = torch.export.export(layer, (_x(),), dynamic_shapes={"x": {0: batch}})
    for x in (_x(3), _x(1, offset=3e3), _x(6, offset=-50.0)):
        torch.testing.assert_close(exported.module()(x), layer(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_sparse_switchnorm_compiles_with_fullgraph_and_exports(training):
    torch._dynamo.reset()
    case = next(c for c in CASES if c.name == "SSN")
    layer = _trained(case).train(training)
    eager = copy.deepcopy(layer)
    compiled = torch.compile(copy.deepcopy(layer), fullgraph=True, backend="aot_eager")
    x = _x()
    torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-5)
    torch.export.export(copy.deepcopy(layer), (x,))  # no data-dependent guard in training or evaluation


def test_sparse_switchnorm_freezes_the_same_way_compiled_and_eager():
    torch._dynamo.reset()
    layer = ready_to_freeze(CHANNELS)
    eager, compiled_layer = copy.deepcopy(layer), copy.deepcopy(layer)
    compiled = torch.compile(compiled_layer, fullgraph=True, backend="aot_eager")
    x = _x()
    eager(x).sum().backward()
    compiled(x).sum().backward()
    for name in ("mean_fixed", "var_fixed"):
        assert bool(getattr(eager, name)) and bool(getattr(compiled_layer, name)), name
    for layer_ in (eager, compiled_layer):  # frozen in the buffers, the logits left alone
        assert (int(layer_.mean_selected), int(layer_.var_selected)) == (2, 0)
        torch.testing.assert_close(layer_.var_weight, torch.tensor([0.3, 0.2, 0.1]), rtol=0, atol=0)
    torch.testing.assert_close(compiled_layer.mean_weight, eager.mean_weight)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_trace_is_right_for_every_input(case):
    """A trace records the reference ops, which do not depend on the tracing input's values."""
    layer = _trained(case).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(layer, (_x(),), check_trace=False)
    for x in (_x(offset=3e3), _x(offset=-1e4), _x() * 1e-3):
        torch.testing.assert_close(traced(x), layer(x), rtol=1e-4, atol=1e-4)


def test_torch_jit_script_refuses_with_a_clear_error():
    model = nn.Sequential(nn.Conv2d(3, CHANNELS, 1), dynnorm.SwitchNorm2d(CHANNELS))
    with pytest.raises(RuntimeError, match=r"cannot be compiled by torch.jit.script.*torch.export"):
        torch.jit.script(model)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_torch_func_transforms_work(case):
    layer = _trained(case).eval()
    x = _x(2)
    per_sample = torch.func.vmap(lambda row: layer(row.unsqueeze(0)).squeeze(0))(x)
    torch.testing.assert_close(per_sample, torch.cat([layer(x[i:i + 1]) for i in range(2)]))
    small = _x(1)[:, :, :2, :2].contiguous()
    jacobian = torch.func.jacrev(layer)(small)
    tangent = torch.randn_like(small)
    _, jvp = torch.func.jvp(layer, (small,), (tangent,))
    torch.testing.assert_close(jvp, (jacobian.reshape(small.numel(), small.numel()) @ tangent.reshape(-1)).view_as(jvp),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not ONNX_AVAILABLE, reason="needs onnx, onnxruntime and onnxscript (the test extra)")
@pytest.mark.parametrize("case", CASES, ids=str)
def test_onnx_export_with_dynamic_batch_matches_onnxruntime(case, tmp_path):
    import onnxruntime

    layer = _trained(case).eval()
    path = tmp_path / f"{case}.onnx"
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, (_x(),), str(path), dynamo=True, input_names=["x"],
                          dynamic_shapes={"x": {0: batch}}, verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for x in (_x(3), _x(1, offset=100.0)):
        (out,) = session.run(None, {"x": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(out), layer(x).detach(), rtol=1e-4, atol=1e-4)
