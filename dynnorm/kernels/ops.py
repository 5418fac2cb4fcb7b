"""The fused operators' definitions, shared by every implementation of them.

Each layer has a forward and a backward operator with one schema, defined here for a namespace
(``dynnorm``: the C++ CPU operators of ``dynnorm/csrc``; ``dynnorm_triton``: the Triton kernels) together
with what :mod:`torch.library` needs beyond the implementation:

- **fake kernels** (output shapes, strides and dtypes), so ``torch.compile(..., fullgraph=True)`` keeps the
  operators in its graph instead of tracing into the reference ops;
- **autograd**: the first-order gradients come from the layer's backward operator (one call, closed form).
  When the backward is itself differentiated (``create_graph=True``: gradient penalties, meta-learning,
  Hessian-vector products, ``gradgradcheck``), the layer is recomputed through the reference ops of
  :mod:`dynnorm.functional` with the same inputs and statistics, and that recomputation is differentiated,
  so second-order gradients are exact while first-order speed is unchanged.

The operators are functional: a forward returns the output, the statistics buffer (:class:`StatsLayout`),
the batch statistics for the running averages (``batch``: ``(2, C)``, the mean and the unbiased variance)
and the layer's extra outputs, and writes nothing; the running statistics are averaged in by the caller
(:mod:`dynnorm.kernels.fused`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor

from .. import functional

__all__ = ["LAYER_OPS", "LayerOp", "StatsLayout", "define", "double_backward", "keep"]


@dataclasses.dataclass(frozen=True)
class StatsLayout:
    """The statistics buffer of a forward operator for an ``(N, C, *)`` input: one 1-D tensor in the accumulation
    dtype (float32; float64 for float64 inputs), read by the backward and by the running-statistics update.

    - ``mean``: ``N * C`` instance means minus ``R`` (index ``n * C + c``); ``var``: ``N * C`` biased variances;
    - ``bn_mean``: ``C``, the BN term's mean minus ``R`` (of the batch, or the running mean given); ``bn_var``:
      ``C``, its variance (biased batch variance, or the running variance given); 0 for layers without a BN term;
    - ``reference``: ``R``, a value close to the data that the means are relative to.

    Examples::

        >>> layout = StatsLayout(2, 3)
        >>> layout.size, layout.bn_mean, layout.reference
        (19, slice(12, 15, None), 18)
    """

    n: int
    c: int

    @property
    def mean(self) -> slice:
        return slice(0, self.n * self.c)

    @property
    def var(self) -> slice:
        return slice(self.n * self.c, 2 * self.n * self.c)

    @property
    def bn_mean(self) -> slice:
        return slice(2 * self.n * self.c, 2 * self.n * self.c + self.c)

    @property
    def bn_var(self) -> slice:
        return slice(2 * self.n * self.c + self.c, 2 * self.n * self.c + 2 * self.c)

    @property
    def reference(self) -> int:
        return 2 * self.n * self.c + 2 * self.c

    @property
    def size(self) -> int:
        return 2 * self.n * self.c + 2 * self.c + 1


def _reference_batch_arguments(training: bool, batch_from_input: bool, stats: Tensor, x: Tensor) -> dict:
    """The BN-term arguments of a reference function that reproduce what a forward operator used: the statistics
    of the batch (recomputed from ``x``, so differentiable), or the running statistics it was given (constants)."""
    if batch_from_input:
        return {"running_mean": None, "running_var": None, "training": training}
    layout = StatsLayout(x.shape[0], x.shape[1])
    mean = stats[layout.bn_mean] + stats[layout.reference]
    return {"running_mean": mean, "running_var": stats[layout.bn_var], "training": False}


def _switch_reference(v: dict) -> Tensor:
    return functional.switch_norm(
        v["x"], weight=v["weight"], bias=v["bias"], mean_mixture=v["mean_mixture"], var_mixture=v["var_mixture"],
        num_batches_tracked=None, momentum=0.0, eps=v["eps"], mixture_logits=v["mixture_logits"],
        **_reference_batch_arguments(v["training"], v["batch_from_input"], v["stats"], v["x"]))


def _sparse_reference(v: dict) -> Tensor:
    state = v["state"].tolist()
    mixtures = []
    for logits, fixed, selected in ((v["mean_weight"], state[0], state[2]), (v["var_weight"], state[1], state[3])):
        acc = functional.accumulation_dtype(logits.dtype)
        if fixed:
            mixtures.append(functional.one_hot(selected, logits.numel(), acc, logits.device))
        else:
            mixtures.append(functional.sparsestmax(logits.to(acc), v["radius"].to(acc)))
    return functional.switch_norm(
        v["x"], weight=v["weight"], bias=v["bias"], mean_mixture=mixtures[0], var_mixture=mixtures[1],
        num_batches_tracked=None, momentum=0.0, eps=v["eps"], mixture_logits=False,
        **_reference_batch_arguments(v["training"], v["batch_from_input"], v["stats"], v["x"]))


def _exemplar_reference(v: dict) -> Tensor:
    return functional.exemplar_norm(
        v["x"], weight=v["weight"], bias=v["bias"], ratio_w1=v["ratio_w1"], ratio_b1=v["ratio_b1"],
        ratio_w2=v["ratio_w2"], ratio_b2=v["ratio_b2"], num_batches_tracked=None, momentum=0.0, eps=v["eps"],
        **_reference_batch_arguments(v["training"], v["batch_from_input"], v["stats"], v["x"]))[0]


def _dynamic_reference(v: dict) -> Tensor:
    return functional.dynamic_norm(
        v["x"], weight=v["weight"], bias=v["bias"], mean_gate_logits=v["mean_gate_logits"],
        var_gate_logits=v["var_gate_logits"], mean_batch_logit=v["mean_batch_logit"],
        var_batch_logit=v["var_batch_logit"], factors=v["factors"], num_batches_tracked=None, momentum=0.0,
        eps=v["eps"], **_reference_batch_arguments(v["training"], v["batch_from_input"], v["stats"], v["x"]))


def _dynamic_affine_reference(v: dict) -> Tensor:
    return functional.dynamic_affine_norm(
        v["x"], weight=v["weight"], bias=v["bias"], sc_w1=v["sc_w1"], sc_b1=v["sc_b1"], sc_w2=v["sc_w2"],
        sc_b2=v["sc_b2"], num_batches_tracked=None, momentum=0.0, eps=v["eps"], per_sample=v["per_sample"],
        **_reference_batch_arguments(v["training"], v["batch_from_input"], v["stats"], v["x"]))


def _associate_reference(v: dict) -> Tensor:
    return functional.associate_norm(
        v["x"], weight=v["weight"], bias=v["bias"], encoder_weight=v["encoder_weight"],
        scale_decoder_weight=v["scale_decoder_weight"], shift_decoder_weight=v["shift_decoder_weight"],
        num_groups=v["num_groups"], eps=v["eps"], scale_from_mean=v["scale_from_mean"])


def _no_extras(x: Tensor, v: dict) -> tuple[Tensor, ...]:
    return ()


def _acc(x: Tensor) -> torch.dtype:
    return functional.accumulation_dtype(x.dtype)


@dataclasses.dataclass(frozen=True)
class LayerOp:
    """One layer's pair of operators: schemas, what autograd saves and how the layer is recomputed.

    Args:
        name: the forward operator's name (``switch_norm``); the backward is ``<name>_backward``.
        layer: the layer's name in error messages (``SwitchNorm``).
        arguments, outputs, backward_arguments: the schemas' argument lists and the forward's named outputs
            (the first two are always ``y`` and ``stats``); the backward returns ``Tensor[]``: ``dx`` and one
            gradient per entry of ``parameters``.
        parameters: the differentiable arguments besides ``x``, in the order of the backward's gradients.
        saved_outputs: the forward outputs the backward reads (``stats`` and the layer's extras).
        snapshot: tensor arguments that the caller may modify in place after the forward (SSN's radius);
            autograd keeps a copy.
        reference: recomputes ``y`` through :mod:`dynnorm.functional` from the forward's arguments, its saved
            outputs and ``batch_from_input`` (for double backward).
        fake_extras: the shapes of the outputs after ``y`` and ``stats``.
    """

    name: str
    layer: str
    arguments: str
    outputs: tuple[str, ...]
    backward_arguments: str
    parameters: tuple[str, ...]
    reference: Callable[[dict], Tensor]
    saved_outputs: tuple[str, ...] = ("stats",)
    snapshot: tuple[str, ...] = ()
    fake_extras: Callable[[Tensor, dict], tuple[Tensor, ...]] = _no_extras

    def forward_schema(self) -> str:
        return f"({self.arguments}) -> ({', '.join('Tensor ' + name for name in self.outputs)})"

    def backward_schema(self) -> str:
        return f"({self.backward_arguments}) -> Tensor[]"


_BN = "Tensor? running_mean, Tensor? running_var, bool training, float eps"

LAYER_OPS: tuple[LayerOp, ...] = (
    LayerOp(
        "switch_norm", "SwitchNorm",
        f"Tensor x, Tensor? weight, Tensor? bias, Tensor mean_mixture, Tensor var_mixture, {_BN}, bool mixture_logits",
        ("y", "stats", "batch"),
        "Tensor grad_y, Tensor x, Tensor stats, Tensor? weight, Tensor? bias, Tensor mean_mixture, "
        "Tensor var_mixture, bool batch_from_input, float eps, bool mixture_logits, bool input_grad",
        ("weight", "bias", "mean_mixture", "var_mixture"), _switch_reference),
    LayerOp(
        "sparse_switch_norm", "SparseSwitchNorm",
        "Tensor x, Tensor? weight, Tensor? bias, Tensor mean_weight, Tensor var_weight, Tensor radius, "
        f"Tensor mean_fixed, Tensor var_fixed, Tensor mean_selected, Tensor var_selected, {_BN}, bool freeze",
        ("y", "stats", "batch", "mixtures", "state"),
        "Tensor grad_y, Tensor x, Tensor stats, Tensor? weight, Tensor? bias, Tensor mean_weight, "
        "Tensor var_weight, Tensor radius, Tensor mixtures, Tensor state, bool batch_from_input, float eps, "
        "bool input_grad",
        ("weight", "bias", "mean_weight", "var_weight"), _sparse_reference,
        saved_outputs=("stats", "mixtures", "state"), snapshot=("radius",),
        fake_extras=lambda x, v: (x.new_empty((2, v["mean_weight"].numel()), dtype=_acc(x)),
                                  x.new_empty((4,), dtype=torch.long))),
    LayerOp(
        "exemplar_norm", "ExemplarNorm",
        "Tensor x, Tensor? weight, Tensor? bias, Tensor ratio_w1, Tensor ratio_b1, Tensor ratio_w2, "
        f"Tensor ratio_b2, {_BN}",
        ("y", "stats", "batch", "ratios"),
        "Tensor grad_y, Tensor x, Tensor stats, Tensor? weight, Tensor? bias, Tensor ratio_w1, Tensor ratio_b1, "
        "Tensor ratio_w2, Tensor ratio_b2, bool batch_from_input, float eps, bool input_grad",
        ("weight", "bias", "ratio_w1", "ratio_b1", "ratio_w2", "ratio_b2"), _exemplar_reference,
        fake_extras=lambda x, v: (x.new_empty((3,), dtype=_acc(x)),)),
    LayerOp(
        "dynamic_norm", "DynamicNorm",
        "Tensor x, Tensor? weight, Tensor? bias, Tensor mean_gate_logits, Tensor var_gate_logits, "
        f"Tensor mean_batch_logit, Tensor var_batch_logit, int[] factors, {_BN}",
        ("y", "stats", "batch"),
        "Tensor grad_y, Tensor x, Tensor stats, Tensor? weight, Tensor? bias, Tensor mean_gate_logits, "
        "Tensor var_gate_logits, Tensor mean_batch_logit, Tensor var_batch_logit, int[] factors, "
        "bool batch_from_input, float eps, bool input_grad",
        ("weight", "bias", "mean_gate_logits", "var_gate_logits", "mean_batch_logit", "var_batch_logit"),
        _dynamic_reference),
    LayerOp(
        "dynamic_affine_norm", "DynamicAffineNorm",
        f"Tensor x, Tensor? weight, Tensor? bias, Tensor sc_w1, Tensor sc_b1, Tensor sc_w2, Tensor sc_b2, {_BN}, "
        "bool per_sample",
        ("y", "stats", "batch"),
        "Tensor grad_y, Tensor x, Tensor stats, Tensor? weight, Tensor? bias, Tensor sc_w1, Tensor sc_b1, "
        "Tensor sc_w2, Tensor sc_b2, bool batch_from_input, float eps, bool per_sample, bool input_grad",
        ("weight", "bias", "sc_w1", "sc_b1", "sc_w2", "sc_b2"), _dynamic_affine_reference),
    LayerOp(
        "associate_norm", "AssociateNorm",
        "Tensor x, Tensor weight, Tensor bias, Tensor encoder_weight, Tensor scale_decoder_weight, "
        "Tensor shift_decoder_weight, int num_groups, float eps, bool scale_from_mean",
        ("y", "stats", "batch"),
        "Tensor grad_y, Tensor x, Tensor stats, Tensor weight, Tensor bias, Tensor encoder_weight, "
        "Tensor scale_decoder_weight, Tensor shift_decoder_weight, int num_groups, float eps, "
        "bool scale_from_mean, bool input_grad",
        ("weight", "bias", "encoder_weight", "scale_decoder_weight", "shift_decoder_weight"), _associate_reference),
)


def _argument_names(schema: torch._C.FunctionSchema) -> list[str]:
    return [argument.name for argument in schema.arguments]


_SPECS = {spec.name: spec for spec in LAYER_OPS}


def double_backward(name: str, values: dict, wanted: list[bool]) -> list[Tensor | None]:
    """The gradients of a layer's forward operator when its backward is itself differentiated: the layer
    recomputed through the reference ops of :mod:`dynnorm.functional` (with the statistics the forward used)
    and differentiated with ``create_graph=True``, so the result has a graph for the next order.

    Args:
        name: the forward operator's name (``'switch_norm'``).
        values: the forward's arguments by name, its saved outputs (``stats`` and the layer's extras),
            ``batch_from_input`` and the upstream gradient ``grad_y``.
        wanted: for ``x`` and each parameter (the order of :attr:`LayerOp.parameters`), whether its gradient is
            needed.

    Returns:
        One gradient (or ``None``) per entry of ``wanted``.
    """
    spec = _SPECS[name]
    names = [n for n, w in zip(("x", *spec.parameters), wanted) if w and values[n] is not None]
    if not names:
        return [None] * len(wanted)
    with torch.enable_grad():
        y = spec.reference(values)
        grads = dict(zip(names, torch.autograd.grad(y, [values[n] for n in names], values["grad_y"],
                                                    create_graph=True, allow_unused=True)))
    return [grads.get(n) for n in ("x", *spec.parameters)]


class _Autograd:
    """Autograd of one layer's forward operator registered from Python (the Triton operators; the C++ operators
    have the same in C++, ``dynnorm/csrc/autograd.cpp``): the backward operator for first-order gradients,
    :func:`double_backward` when the backward is differentiated."""

    def __init__(self, spec: LayerOp, namespace: str) -> None:
        self.spec = spec
        self.backward_op = getattr(getattr(torch.ops, namespace), f"{spec.name}_backward").default
        self.names = _argument_names(getattr(getattr(torch.ops, namespace), spec.name).default._schema)
        self.backward_names = _argument_names(self.backward_op._schema)
        self.differentiable = ("x", *spec.parameters)
        self.saved_inputs = [n for n in self.backward_names if n in self.names]

    def setup_context(self, ctx, inputs: tuple, output: tuple) -> None:
        values = dict(zip(self.names, inputs))
        outputs = dict(zip(self.spec.outputs, output))
        tensors = [n for n in self.saved_inputs if isinstance(values[n], Tensor) or values[n] is None]
        ctx.tensor_names = (*tensors, *self.spec.saved_outputs)
        ctx.save_for_backward(*(values[n].clone() if n in self.spec.snapshot else values[n] for n in tensors),
                              *(outputs[n] for n in self.spec.saved_outputs))
        ctx.constants = {n: values[n] for n in (*self.saved_inputs, "training") if n in values and n not in tensors}
        ctx.constants["batch_from_input"] = values.get("running_mean", 0) is None
        ctx.mark_non_differentiable(*output[1:])

    def _values(self, ctx) -> dict:
        try:
            tensors = ctx.saved_tensors
        except RuntimeError as error:
            if "modified by an inplace operation" not in str(error):
                raise
            raise RuntimeError(
                f"dynnorm: a tensor that the {self.spec.layer} layer saved for backward (its input or a parameter) "
                "was modified in place between the forward and the backward pass, so its gradient cannot be "
                "computed. Clone the tensor before modifying it in place (e.g. use an out-of-place op on the "
                f"layer's input). Details: {error}") from None
        return {**dict(zip(ctx.tensor_names, tensors)), **ctx.constants}

    def backward(self, ctx, grad_y: Tensor, *unused: Tensor) -> tuple[Tensor | None, ...]:
        values = self._values(ctx)
        values["grad_y"] = grad_y
        needed = dict(zip(self.names, ctx.needs_input_grad))
        wanted = [needed[n] for n in self.differentiable]
        if torch.is_grad_enabled():
            grads = dict(zip(self.differentiable, double_backward(self.spec.name, values, wanted)))
        else:
            values["input_grad"] = needed["x"]
            computed = self.backward_op(*(values[n] for n in self.backward_names))
            grads = {n: g for n, g, w in zip(self.differentiable, computed, wanted) if w}
        return tuple(grads.get(n) for n in self.names)


def _fake_forward(spec: LayerOp, names: list[str]) -> Callable:
    def fake(*args):
        values = dict(zip(names, args))
        x = values["x"]
        layout = StatsLayout(x.shape[0], x.shape[1])
        return (torch.empty_like(x), x.new_empty((layout.size,), dtype=_acc(x)),
                x.new_empty((2, x.shape[1]), dtype=_acc(x)), *spec.fake_extras(x, values))

    return fake


def _fake_backward(spec: LayerOp, names: list[str]) -> Callable:
    def fake(*args):
        values = dict(zip(names, args))
        x = values["x"]
        dx = torch.empty_like(x) if values["input_grad"] else x.new_empty((0,))
        params = [values[name] for name in spec.parameters]
        return [dx, *(torch.empty_like(p) if p is not None else x.new_empty((0,), dtype=_acc(x)) for p in params)]

    return fake


def define(namespace: str, *, autograd: bool) -> None:
    """Define every layer's forward and backward operator in ``namespace``, with fake kernels and, if
    ``autograd``, their autograd (the C++ operators register theirs in C++). The implementations are
    registered separately, per device."""
    library = torch.library.Library(namespace, "DEF")
    keep(library)
    for spec in LAYER_OPS:
        library.define(spec.name + spec.forward_schema())
        library.define(f"{spec.name}_backward" + spec.backward_schema())
        ops = getattr(torch.ops, namespace)
        forward_names = _argument_names(getattr(ops, spec.name).default._schema)
        backward_names = _argument_names(getattr(ops, f"{spec.name}_backward").default._schema)
        torch.library.register_fake(f"{namespace}::{spec.name}", _fake_forward(spec, forward_names), lib=library)
        torch.library.register_fake(f"{namespace}::{spec.name}_backward", _fake_backward(spec, backward_names),
                                    lib=library)
        if autograd:
            rule = _Autograd(spec, namespace)
            torch.library.register_autograd(f"{namespace}::{spec.name}", rule.backward,
                                            setup_context=rule.setup_context, lib=library)


_LIBRARIES: list[torch.library.Library] = []


def keep(library: torch.library.Library) -> None:
    """Keep ``library`` (and so its definitions and registrations) alive for the life of the process."""
    _LIBRARIES.append(library)
