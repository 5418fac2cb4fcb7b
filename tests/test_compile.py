"""torch.compile keeps the fused operators: a compiled network calls them in its forward and backward graphs
(their fake kernels give the shapes, their autograd the backward) and computes what the eager network computes,
running statistics included."""
from __future__ import annotations

import copy

import pytest
import torch
from functorch.compile import make_boxed_func
from torch import nn
from torch._dynamo.backends.common import aot_autograd

import dynnorm
from layer_cases import CASES, randomize

OPERATOR = {"SN": "switch_norm", "SN-noBN": "switch_norm", "SSN": "sparse_switch_norm", "EN": "exemplar_norm",
            "DN": "dynamic_norm", "DNB": "dynamic_affine_norm", "DNC": "dynamic_affine_norm",
            "AssocNorm": "associate_norm", "AssocNorm-ILM": "associate_norm"}


class Block(nn.Module):
    def __init__(self, norm) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.norm1, self.norm2 = norm(), norm()

    def forward(self, x):
        return torch.relu(x + self.norm2(self.conv2(torch.relu(self.norm1(self.conv1(x))))))


def small_resnet(case) -> nn.Module:
    """A two-block residual network with the case's layer after every convolution."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), randomize(case.build(8)), nn.ReLU(),
                         Block(lambda: randomize(case.build(8))), Block(lambda: randomize(case.build(8))),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def _recording_backend(graphs: list):
    def compiler(gm, example_inputs):
        graphs.append({str(node.target) for node in gm.graph.nodes if node.op == "call_function"})
        return make_boxed_func(gm.forward)

    return aot_autograd(fw_compiler=compiler, bw_compiler=compiler)


def _step(model: nn.Module, x: torch.Tensor):
    out = model(x)
    out.square().sum().backward()
    return out, [p.grad.clone() for p in model.parameters()], [b.clone() for b in model.buffers()]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_compiled_network_calls_the_fused_operators_and_matches_eager(case):
    torch._dynamo.reset()
    eager = small_resnet(case)
    compiled_model = copy.deepcopy(eager)
    graphs: list[set[str]] = []
    compiled = torch.compile(compiled_model, backend=_recording_backend(graphs), fullgraph=True)
    x = torch.randn(2, 3, 8, 8)
    for _ in range(2):  # the second step uses running statistics the first one updated
        expected, compiled_result = _step(eager, x), _step(compiled, x)
        for a, b in zip(expected, compiled_result):
            for ta, tb in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
                torch.testing.assert_close(tb, ta, rtol=1e-5, atol=1e-5)
    forward, backward = graphs[0], graphs[1]
    name = OPERATOR[case.name]
    assert f"dynnorm.{name}.default" in forward, forward
    assert f"dynnorm.{name}_backward.default" in backward, backward
    eager.eval(), compiled_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SN", "SSN", "EN"])
def test_inductor_compiles_a_network_with_the_fused_operators(name):
    torch._dynamo.reset()
    case = next(c for c in CASES if c.name == name)
    eager = small_resnet(case)
    compiled = torch.compile(copy.deepcopy(eager), fullgraph=True)
    x = torch.randn(2, 3, 8, 8)
    for a, b in zip(_step(eager, x), _step(compiled, x)):
        for ta, tb in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
            torch.testing.assert_close(tb, ta, rtol=1e-4, atol=1e-4)


def test_the_fused_operators_have_fake_kernels_with_the_real_shapes_and_strides():
    layer = randomize(dynnorm.ExemplarNorm2d(6))
    x = torch.randn(3, 6, 4, 5).contiguous(memory_format=torch.channels_last)
    args = (x, layer.weight, layer.bias, layer.ratio_w1, layer.ratio_b1, layer.ratio_w2, layer.ratio_b2, None, None,
            True, 1e-5)
    real = torch.ops.dynnorm.exemplar_norm.default(*args)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = torch.ops.dynnorm.exemplar_norm.default(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                                                         for a in args))
    for r, f in zip(real, fake):
        assert (r.shape, r.stride(), r.dtype) == (f.shape, f.stride(), f.dtype)
