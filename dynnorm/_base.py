"""The state every dynnorm layer shares: affine parameters, running statistics, input checks, dispatch."""
from __future__ import annotations

import math
import operator
from types import ModuleType
from typing import ClassVar

import torch
from torch import Tensor, nn

from . import kernels
from .distributed import synchronized_batch_moments, world_size

_HALF_DTYPES = (torch.bfloat16, torch.float16)


def positive_int(name: str, value: object) -> int:
    """``value`` as an int (anything with ``__index__``, e.g. ``numpy.int64``), rejecting bools and values < 1."""
    try:
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or number <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return number


def head_parameters(in_features: int, hidden: int, out_features: int, **factory) -> tuple[nn.Parameter, ...]:
    """``(W_1 (hidden, in), b_1 (hidden,), W_2 (out, hidden), b_2 (out,))`` of a two-layer head, uninitialised
    (see :func:`init_head`): plain parameters rather than an ``nn.Linear`` submodule, so init code that
    zero-fills every submodule's ``weight`` (such as mmdet's ``zero_init_residual``) leaves them alone."""
    shapes = ((hidden, in_features), (hidden,), (out_features, hidden), (out_features,))
    return tuple(nn.Parameter(torch.empty(shape, **factory)) for shape in shapes)


def init_head(w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> None:
    """Initialise a two-layer head ``W_2 act(W_1 s + b_1) + b_2``: ``W_1`` as ``nn.Linear`` does (uniform in
    ``+-1/sqrt(fan_in)``), everything after it zero, so a new head outputs exactly zero."""
    bound = 1 / math.sqrt(w1.shape[1])
    nn.init.uniform_(w1, -bound, bound)
    for tensor in (b1, w2, b2):
        nn.init.zeros_(tensor)


@torch.no_grad()
def copy_norm_state(source: nn.Module, target: nn.Module) -> None:
    """Copy ``weight``, ``bias``, ``running_mean``, ``running_var`` and ``num_batches_tracked`` from one norm layer
    to another where both have them with the same shape."""
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        src, dst = getattr(source, name, None), getattr(target, name, None)
        if isinstance(src, Tensor) and isinstance(dst, Tensor) and src.shape == dst.shape:
            dst.copy_(src)


_EXAMPLE_SHAPES = {2: "4, 16", 3: "2, 16, 7", 4: "2, 16, 8, 8", 5: "2, 16, 3, 4, 4"}
_INPUT_SHAPES = {2: "(N, C)", 3: "(N, C, L)", 4: "(N, C, H, W)", 5: "(N, C, D, H, W)"}


class DynNormBase(nn.Module):
    """Base of the dynnorm layers (a plain ``nn.Module``: not a ``_BatchNorm``, on purpose).

    It owns what users switching from ``nn.BatchNorm2d`` expect, with the same names, shapes and meaning:
    ``weight``/``bias`` ``(C,)``, ``running_mean``/``running_var``/``num_batches_tracked`` buffers (the
    variance starts at 1 and is stored unbiased) when the layer has a BN term, torch's ``momentum``
    (``None`` = cumulative average), ``track_running_stats``. Subclasses pass ``batch_statistics`` (whether
    the layer has a BN term) and implement :meth:`_normalize`, which calls the layer's function on the
    implementation chosen by :func:`dynnorm.kernels.select`.

    Batch statistics can be synchronized across processes (``sync_batch_stats=True`` or the ``Sync*``
    classes), with autograd through the reduction; they fall back to local statistics when not
    distributed. Not subclassing ``_BatchNorm`` keeps ``convert_sync_batchnorm``, conv-BN fusion and
    ``norm_eval`` code from silently treating these layers as BatchNorm.

    Args:
        num_features: channels ``C`` of an ``(N, C, *)`` input.
        eps: added to every variance. Default: 1e-5
        momentum: weight of the current batch in the running statistics; ``None`` for a cumulative average.
            Default: 0.1
        affine: learn ``weight`` and ``bias``. Default: True
        track_running_stats: keep running statistics of the BN term for evaluation; if False the BN term
            uses batch statistics in evaluation too. Default: True
        batch_statistics: the layer has a BN term (keyword-only, passed by each layer class).
        sync_batch_stats: synchronize the BN term's statistics across ``process_group``. Default: the
            class's setting (False; True for ``Sync*`` classes)
        process_group: the group to synchronize over (``None``: the default group).
    """

    #: State-dict format (``nn.Module``'s versioning, as ``nn.BatchNorm`` does): 2 adds SSN's ``mean_selected`` /
    #: ``var_selected`` buffers and names EN's static logits ``ratio_b2`` (``ratio_bias`` before); layers migrate
    #: older checkpoints in ``_load_from_state_dict``.
    _version = 2
    _abbr_: ClassVar[str] = "bn"  # mmcv layer naming: keeps the state-dict keys of BN networks (bn1.weight, ...)
    input_ranks: ClassVar[tuple[int, ...]] = (4,)
    sync_batch_stats_default: ClassVar[bool] = False
    #: Names of the parameters that select or mix normalizers (SN/SSN logits, DN gate logits): the SSN
    #: authors train them in their own optimizer group (lr/10, no weight decay, gradient norm clipped).
    mixture_parameter_names: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, *, input_ranks: tuple[int, ...] | None = None, synchronized: bool | None = None,
                          **kwargs) -> None:
        """Declare a variant in its class statement: ``class SwitchNorm1d(_SwitchNorm, input_ranks=(2, 3))``
        (other input ranks) or ``class SyncSwitchNorm2d(SwitchNorm2d, synchronized=True)`` (synchronized batch
        statistics by default). A variant without a docstring gets one naming what it changes."""
        super().__init_subclass__(**kwargs)
        if input_ranks is not None:
            cls.input_ranks = input_ranks
        if synchronized is not None:
            cls.sync_batch_stats_default = synchronized
        if "__doc__" not in cls.__dict__ or cls.__dict__["__doc__"] is None:
            cls.__doc__ = cls._variant_doc(cls.__mro__[1], synchronized)

    @classmethod
    def _variant_doc(cls, parent: type, synchronized: bool | None) -> str:
        name, rank = cls.__name__, max(cls.input_ranks)
        see = parent.__name__.lstrip("_") + ("" if parent.__name__[-2:] == "2d" else "2d")
        if synchronized:
            summary = (f":class:`{parent.__name__}` with its batch statistics synchronized across processes "
                       "(local statistics when not distributed).")
            example = f">>> {name}(16).sync_batch_stats\n        True"
        else:
            shapes = " or ".join(_INPUT_SHAPES[r] for r in cls.input_ranks)
            summary = f"{parent.__doc__.strip().splitlines()[0].rstrip('.')}, over ``{shapes}`` inputs."
            example = (f">>> {name}(16)(torch.randn({_EXAMPLE_SHAPES[rank]})).shape\n"
                       f"        torch.Size([{_EXAMPLE_SHAPES[rank]}])")
        return f"{summary}\n\n    See :class:`{see}`.\n\n    Examples::\n\n        {example}\n"

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        batch_statistics: bool,
        sync_batch_stats: bool | None = None,
        process_group: object | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        num_features = positive_int("num_features", num_features)
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] (torch convention) or None, got {momentum!r}")
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = affine
        self.uses_batch_statistics = batch_statistics
        self.track_running_stats = track_running_stats and batch_statistics
        self.sync_batch_stats = self.sync_batch_stats_default if sync_batch_stats is None else sync_batch_stats
        self.process_group = process_group
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            self.bias = nn.Parameter(torch.empty(num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    # -- state -------------------------------------------------------------------------------------------

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset running statistics and the affine parameters (weight 1, bias 0)."""
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        text = f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"
        if self.uses_batch_statistics:
            text += f", track_running_stats={self.track_running_stats}"
            if self.sync_batch_stats:
                text += ", sync_batch_stats=True"
        return text

    def torch_equivalent(self) -> nn.Module | None:
        """The plain torch layer that computes exactly what this layer computes in its current state (with its
        parameters and statistics copied), or ``None`` when there is none."""
        return None

    def load_torch_state(self, source: nn.Module) -> None:
        """Take over a torch norm layer's affine parameters and running statistics (those with matching shapes),
        as :func:`dynnorm.convert` does for the layer it replaces."""
        copy_norm_state(source, self)

    def _with_state(self, plain: nn.Module) -> nn.Module:
        """``plain`` with this layer's affine parameters, running statistics and training mode."""
        copy_norm_state(self, plain)
        return plain.train(self.training)

    def __getstate__(self) -> dict:
        # A process group handle cannot be pickled; a restored layer uses the default group.
        state = self.__dict__.copy()
        state["process_group"] = None
        return state

    def __prepare_scriptable__(self) -> nn.Module:
        raise RuntimeError(
            f"{type(self).__name__} cannot be compiled by torch.jit.script (its forward dispatches between fused "
            "operators and reference ops in Python). Export with torch.export.export or "
            "torch.onnx.export(..., dynamo=True), or trace it with torch.jit.trace."
        )

    # -- forward -----------------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        synchronized = self._synchronized()
        if x.shape[0] == 0 and not synchronized:
            return self._empty_output(x)
        return self._normalize(kernels.select(x, synchronized=synchronized), x, synchronized)

    def _normalize(self, ops: ModuleType, x: Tensor, synchronized: bool) -> Tensor:
        """Apply the layer's function from ``ops`` (:mod:`dynnorm.functional` or a fused implementation chosen by
        :func:`dynnorm.kernels.select`) to ``x``."""
        raise NotImplementedError

    def _batch_arguments(self, synchronized: bool) -> dict:
        """The arguments of the layer functions that concern the BN term. As in ``nn.BatchNorm``, the running
        statistics are passed (and updated) in training only while ``track_running_stats`` is set, and used in
        evaluation whenever they exist, so setting ``layer.track_running_stats = False`` after construction
        behaves as it does for BatchNorm."""
        tracked = not self.training or self.track_running_stats
        return {
            "running_mean": self.running_mean if tracked else None,
            "running_var": self.running_var if tracked else None,
            "num_batches_tracked": self.num_batches_tracked if tracked else None,
            "training": self.training,
            "momentum": self.momentum,
            "eps": self.eps,
            "batch_moments": synchronized_batch_moments(self.process_group) if synchronized else None,
        }

    def _check_input(self, x: Tensor) -> None:
        if x.dim() not in self.input_ranks:
            ranks = " or ".join(f"{r}D" for r in self.input_ranks)
            raise ValueError(f"{type(self).__name__} expected {ranks} input (got {x.dim()}D input of shape {list(x.shape)})")
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__} expected {self.num_features} channels, got {x.shape[1]} channels "
                f"(input of shape {list(x.shape)})"
            )
        if not x.is_floating_point():
            raise TypeError(f"{type(self).__name__} expected a floating-point input, got {x.dtype}")
        reference = self.weight if self.weight is not None else self.running_mean
        if reference is not None and x.dtype != reference.dtype and not (
            reference.dtype == torch.float32 and x.dtype in _HALF_DTYPES
        ):
            raise TypeError(
                f"{type(self).__name__} got a {x.dtype} input but its parameters are {reference.dtype}: convert "
                f"the layer (layer.to({x.dtype})) or the input (as nn.BatchNorm2d requires; bfloat16/float16 "
                "inputs with float32 parameters are supported, as under autocast)"
            )

    def _synchronized(self) -> bool:
        return self.training and self.sync_batch_stats and world_size(self.process_group) > 1

    def _empty_output(self, x: Tensor) -> Tensor:
        """An empty output shaped like ``x``, still connected to the affine parameters (zero gradients)."""
        if self.weight is None:
            return x.clone()
        view = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.weight.view(view).to(x.dtype) + self.bias.view(view).to(x.dtype)
