"""Every layer against its float64 reference, plus the behaviour users switching from BatchNorm rely on."""
from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import dynnorm
from layer_cases import BATCH_CASES, CASES, REFERENCE_CASES, randomize

SHAPE = (4, 8, 5, 6)


def _x(shape=SHAPE, dtype=torch.float64, scale=2.0, shift=0.5):
    return torch.randn(shape, dtype=dtype) * scale + shift


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=str)
def test_training_forward_matches_reference(case):
    layer = randomize(case.build(SHAPE[1], dtype=torch.float64))
    x = _x()
    torch.testing.assert_close(layer(x), case.reference(layer, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=str)
def test_eval_forward_matches_reference_with_running_statistics(case):
    layer = randomize(case.build(SHAPE[1], dtype=torch.float64))
    for _ in range(3):
        layer(_x())
    layer.eval()
    x = _x(shift=-1.0)
    torch.testing.assert_close(layer(x), case.reference(layer, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", BATCH_CASES, ids=str)
def test_running_statistics_follow_torch_momentum(case):
    layer = case.build(SHAPE[1], dtype=torch.float64, momentum=0.25)
    x = _x()
    layer(x)
    batch_mean = x.mean((0, 2, 3))
    batch_var = x.var((0, 2, 3), unbiased=True)
    torch.testing.assert_close(layer.running_mean, 0.25 * batch_mean)
    torch.testing.assert_close(layer.running_var, 0.75 + 0.25 * batch_var)
    assert int(layer.num_batches_tracked) == 1


@pytest.mark.parametrize("case", BATCH_CASES, ids=str)
def test_momentum_none_is_cumulative_average(case):
    layer = case.build(SHAPE[1], dtype=torch.float64, momentum=None)
    batches = [_x() for _ in range(3)]
    for x in batches:
        layer(x)
    expected = torch.stack([x.mean((0, 2, 3)) for x in batches]).mean(0)
    torch.testing.assert_close(layer.running_mean, expected)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_eval_leaves_buffers_untouched_and_is_per_sample(case):
    layer = randomize(case.build(SHAPE[1], dtype=torch.float64))
    layer(_x())
    layer.eval()
    buffers = {k: v.clone() for k, v in layer.state_dict().items()}
    x = _x()
    batch_out = layer(x)
    for key, value in layer.state_dict().items():
        assert torch.equal(value, buffers[key]), key
    torch.testing.assert_close(layer(x[1:2]), batch_out[1:2])


@pytest.mark.parametrize("case", CASES, ids=str)
def test_training_differs_from_eval_only_through_batch_statistics(case):
    layer = randomize(case.build(SHAPE[1], dtype=torch.float64))
    x = _x()
    train_out = layer(x)
    layer.eval()
    eval_out = layer(x)
    assert torch.allclose(train_out, eval_out) != case.batch_statistics


@pytest.mark.parametrize("case", CASES, ids=str)
def test_gradcheck(case):
    layer = randomize(case.build(4, dtype=torch.float64))
    if case.name.startswith("AssocNorm"):
        layer = randomize(dynnorm.AssociateNorm2d(4, num_groups=2, dtype=torch.float64,
                                                  scale_from=layer.scale_from))
    x = _x((3, 4, 3, 2)).requires_grad_()
    params = tuple(p for p in layer.parameters())

    def fn(inp, *ps):
        return torch.func.functional_call(layer, dict(zip([n for n, _ in layer.named_parameters()], ps)), (inp,))

    # running statistics change on every call in training; gradcheck needs a pure function
    layer.track_running_stats = False
    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_state_dict_and_pickle_round_trip(case):
    layer = randomize(case.build(SHAPE[1]))
    layer(_x(dtype=torch.float32))
    fresh = case.build(SHAPE[1])
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    restored = pickle.loads(pickle.dumps(layer))
    x = _x(dtype=torch.float32)
    for other in (fresh, restored):
        layer.eval(), other.eval()
        torch.testing.assert_close(other(x), layer(x))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_factory_kwargs_reach_every_parameter_and_buffer(case):
    layer = case.build(SHAPE[1], device="cpu", dtype=torch.float64)
    for name, tensor in list(layer.named_parameters()) + list(layer.named_buffers()):
        assert tensor.device.type == "cpu", name
        if tensor.is_floating_point():
            assert tensor.dtype == torch.float64, name
    assert layer(_x()).dtype == torch.float64


@pytest.mark.parametrize("case", CASES, ids=str)
def test_channels_last_and_non_contiguous_inputs(case):
    layer = randomize(case.build(SHAPE[1]))
    x = _x(dtype=torch.float32)
    expected = copy.deepcopy(layer)(x)
    torch.testing.assert_close(copy.deepcopy(layer)(x.to(memory_format=torch.channels_last)), expected)
    transposed = x.transpose(2, 3).contiguous().transpose(2, 3)
    torch.testing.assert_close(copy.deepcopy(layer)(transposed), expected)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bf16_autocast_accumulates_in_float32(case):
    layer = randomize(case.build(SHAPE[1]))
    x = _x(dtype=torch.float32, scale=50.0, shift=300.0).bfloat16()  # E[x^2]-E[x]^2 in bf16 would cancel
    expected = copy.deepcopy(layer)(x.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.1)
    assert layer.weight.grad is None
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_torch_compile_matches_eager(case):
    torch._dynamo.reset()  # every layer class shares DynNormBase.forward: start from an empty code cache
    layer = randomize(case.build(SHAPE[1]))
    x = _x(dtype=torch.float32)
    eager = copy.deepcopy(layer)
    compiled = torch.compile(copy.deepcopy(layer), backend="aot_eager")
    out_compiled = compiled(x)
    out_eager = eager(x)
    torch.testing.assert_close(out_compiled, out_eager)
    out_compiled.square().sum().backward()
    out_eager.square().sum().backward()
    # Eager CPU runs the fused operators, compiled code the reference ops: the rounding differs by ulps,
    # which the mixture logits' gradients (sums of terms that nearly cancel) amplify.
    for (name, p_eager), p_compiled in zip(eager.named_parameters(), compiled.parameters()):
        if p_eager.grad is not None:
            torch.testing.assert_close(p_compiled.grad, p_eager.grad, rtol=1e-4, atol=1e-4, msg=name)
    for (name, b_eager), b_compiled in zip(eager.named_buffers(), compiled.buffers()):
        torch.testing.assert_close(b_compiled, b_eager, msg=name)


def test_switchnorm_inductor_compile_matches_eager():
    torch._dynamo.reset()
    layer = randomize(dynnorm.SwitchNorm2d(8))
    x = _x(dtype=torch.float32)
    compiled = torch.compile(copy.deepcopy(layer), fullgraph=True)
    torch.testing.assert_close(compiled(x), copy.deepcopy(layer)(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_empty_batch_gives_empty_output(case):
    layer = randomize(case.build(SHAPE[1]))
    x = torch.empty(0, *SHAPE[1:], requires_grad=True)
    out = layer(x)
    assert out.shape == x.shape
    out.sum().backward()
    if case.batch_statistics:
        assert int(layer.num_batches_tracked) == 0


@pytest.mark.parametrize("case", BATCH_CASES, ids=str)
def test_one_value_per_channel_in_training_raises_like_batchnorm(case):
    layer = case.build(SHAPE[1])
    x = torch.randn(1, SHAPE[1], 1, 1)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        nn.BatchNorm2d(SHAPE[1])(x)
    with pytest.raises(ValueError, match=r"Expected more than 1 value per channel when training, got input size \[1, 8, 1, 1\]"):
        layer(x)
    layer.eval()
    assert torch.isfinite(layer(x)).all()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_wrong_rank_and_channel_mismatch_name_the_values(case):
    layer = case.build(SHAPE[1])
    with pytest.raises(ValueError, match=r"expected 4D input \(got 3D input"):
        layer(torch.randn(2, 8, 5))
    with pytest.raises(ValueError, match="expected 8 channels, got 6 channels"):
        layer(torch.randn(2, 6, 4, 4))
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.ones(2, 8, 4, 4, dtype=torch.long))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: dynnorm.SwitchNorm2d(0), r"num_features must be a positive int, got 0"),
        (lambda: dynnorm.SwitchNorm2d(8, momentum=2.0), r"momentum must be in \[0, 1\].*got 2.0"),
        (lambda: dynnorm.SwitchNorm2d(8, eps=0.0), r"eps must be positive, got 0.0"),
        (lambda: dynnorm.ExemplarNorm2d(8, hidden_size=0), r"hidden_size must be a positive int, got 0"),
        (lambda: dynnorm.DynamicNormB2d(8, reduction=0), r"reduction must be a positive int, got 0"),
        (lambda: dynnorm.AssociateNorm2d(48, 32), r"num_features \(48\) must be divisible by num_groups \(32\)"),
        (lambda: dynnorm.AssociateNorm2d(64, scale_from="gamma"), r"scale_from must be 'mean' or 'var', got 'gamma'"),
    ],
)
def test_invalid_options_name_the_value(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_unknown_keyword_is_rejected_not_swallowed():
    with pytest.raises(TypeError, match="num_groups"):
        dynnorm.SwitchNorm2d(64, num_groups=32)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_constructible_from_num_features_alone_and_accepts_eps(case):
    layer = type(case.build(32))(32, eps=1e-3)
    assert layer.eps == 1e-3
    assert layer.weight.shape == (32,) and layer.bias.shape == (32,)
    if case.batch_statistics:
        assert layer.running_mean.shape == (32,) and torch.equal(layer.running_var, torch.ones(32))
    assert not isinstance(layer, nn.modules.batchnorm._BatchNorm)
    assert not isinstance(layer, nn.GroupNorm)
    assert repr(layer).startswith(type(layer).__name__ + "(32")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_eval_layer_exports_with_torch_export(case):
    layer = randomize(case.build(SHAPE[1]))
    layer(_x(dtype=torch.float32))
    layer.eval()
    x = _x(dtype=torch.float32)
    exported = torch.export.export(layer, (x,))
    torch.testing.assert_close(exported.module()(x), layer(x))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_num_features_accepts_any_integer_like_batchnorm(case):
    import numpy as np

    layer = case.build(np.int64(8))
    assert layer.num_features == 8 and type(layer.num_features) is int
    with pytest.raises(ValueError, match=r"num_features must be a positive int, got 8.0"):
        case.build(8.0)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_input_dtype_must_match_the_parameters_as_for_batchnorm(case):
    layer = case.build(SHAPE[1])
    with pytest.raises(TypeError, match=r"got a torch.float64 input but its parameters are torch.float32"):
        layer(_x(dtype=torch.float64))
    with pytest.raises((TypeError, RuntimeError)):  # what nn.BatchNorm2d does
        nn.BatchNorm2d(SHAPE[1])(_x(dtype=torch.float64))
    assert layer(_x(dtype=torch.bfloat16)).dtype == torch.bfloat16  # as under autocast: half input, float32 layer


@pytest.mark.parametrize("channels, groups", [(16, 16), (24, 24), (96, 32), (144, 24), (7, 7)])
def test_associate_norm_defaults_to_the_largest_divisor_up_to_32_groups(channels, groups):
    layer = dynnorm.create_norm("AssocNorm", channels)
    assert layer.num_groups == groups
    assert layer(torch.randn(2, channels, 3, 3)).shape == (2, channels, 3, 3)


def test_associate_norm_fits_a_whole_torchvision_mobilenet():
    import torchvision

    model = torchvision.models.mobilenet_v2(num_classes=10, norm_layer=dynnorm.AssociateNorm2d)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
