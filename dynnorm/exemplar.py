"""Exemplar Normalization (EN): per-sample importance ratios over IN, LN and BN.

Zhang, Peng, Wu, Li, Luo, "Exemplar Normalization for Learning Deep Representation", CVPR 2020,
https://arxiv.org/abs/2003.08761.
"""
from __future__ import annotations

from types import ModuleType

from torch import Tensor

from ._base import DynNormBase, head_parameters, init_head, positive_int
from .switchable import NORMALIZERS


class ExemplarNorm2d(DynNormBase):
    r"""Exemplar Normalization: a mixture of IN-, LN- and BN-normalized outputs with per-sample ratios.

    .. math::
        y_n = \gamma \odot \sum_k \lambda_{n,k} \frac{x_n - \mu_k}{\sqrt{\sigma^2_k + \epsilon}} + \beta,
        \qquad \lambda_n = \mathrm{softmax}\big(W_2\,\mathrm{ReLU}(W_1 d_n + b_1) + b_2\big)

    with the descriptor of sample ``n`` relative to the batch (``s = sqrt(var + eps)``, per channel):

    .. math::
        d_n = \Big[\frac{\mu_{IN}(n) - \mu_{BN}}{s_{BN}} \,;\ \frac{s_{IN}(n)}{s_{BN}} - 1\Big] \in R^{2C}

    ``W_1: 2C -> hidden_size``, ``W_2: hidden_size -> 3``. The mixture of outputs is folded into one
    per-(n, c) scale and shift (no copies of the input). In evaluation the BN term uses the running
    statistics and the ratios are computed from the test sample; for inputs with a single value per
    (n, c) IN is left out. A new layer (``W_2 = 0``, ``b_2 = 0``) mixes the three outputs uniformly.

    .. note::
        Confirmed from the paper (abstract and figure caption only): per-sample importance ratios over several
        normalizers; one shared ``gamma``/``beta`` after the mixture; ratios learned "by using merely a few
        parameters"; SN as the static special case (``W_2 = 0``: the ratios are ``softmax(b_2)``).
        **Interpretation** (the ratio module is not specified in the available text): the normalizers are
        IN, LN and BN (as in SN); the head sees each sample's channel statistics *relative to the batch
        statistics* — the mean and std of the BN-standardized sample — which do not change when the input is
        offset or rescaled, so the head neither saturates on raw pixel values nor needs to learn the scale of
        its input layer; and it is narrow (``hidden_size = 4``): about ``8 C`` parameters per layer, +0.8%
        parameters on a ResNet-50 (``benchmarks/norm_cost.py``), in keeping with "a few parameters". Pooling the
        normalized maps instead would be degenerate for IN (its pooled mean is 0 and its pooled std 1).

    Args:
        num_features, eps, momentum, affine, track_running_stats, sync_batch_stats, process_group:
            as :class:`SwitchNorm2d`.
        hidden_size: width of the ratio head's hidden layer. Default: 4

    Attributes:
        ratio_w1, ratio_b1, ratio_w2, ratio_b2: the ratio head (plain parameters, not submodules).
            ``ratio_b2`` is the static (SN-like) part of the logits, order (IN, LN, BN).
        last_ratios: batch-averaged ratios ``(3,)`` of the last training batch (for logging).

    Shape:
        - Input: ``(N, C, H, W)``; Output: same shape and dtype.

    Examples::

        >>> layer = ExemplarNorm2d(64)
        >>> out = layer(torch.randn(2, 64, 8, 8))
        >>> layer.importance_ratios()  # a new layer mixes IN, LN and BN uniformly
        {'ratio': {'IN': 0.333..., 'LN': 0.333..., 'BN': 0.333...}}
    """

    normalizer_names = NORMALIZERS

    def __init__(self, num_features: int, *args, hidden_size: int = 4, **kwargs) -> None:
        super().__init__(num_features, *args, batch_statistics=True, **kwargs)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        self.ratio_w1, self.ratio_b1, self.ratio_w2, self.ratio_b2 = head_parameters(
            2 * self.num_features, self.hidden_size, len(self.normalizer_names), device=kwargs.get("device"),
            dtype=kwargs.get("dtype"))
        self.last_ratios: Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        init_head(self.ratio_w1, self.ratio_b1, self.ratio_w2, self.ratio_b2)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", hidden_size={self.hidden_size}"

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args) -> None:
        # Checkpoints written before version 2 call the static logits ``ratio_bias``.
        if local_metadata.get("version", 1) < 2 and prefix + "ratio_bias" in state_dict:
            state_dict[prefix + "ratio_b2"] = state_dict.pop(prefix + "ratio_bias")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)

    def importance_ratios(self) -> dict[str, dict[str, float]]:
        """Batch-averaged ratios of the last training batch, ``{'ratio': {'IN': .., 'LN': .., 'BN': ..}}``."""
        values = [float("nan")] * 3 if self.last_ratios is None else self.last_ratios.tolist()
        return {"ratio": dict(zip(self.normalizer_names, values))}

    def _normalize(self, ops: ModuleType, x: Tensor, synchronized: bool) -> Tensor:
        out, ratios = ops.exemplar_norm(
            x, weight=self.weight, bias=self.bias, ratio_w1=self.ratio_w1, ratio_b1=self.ratio_b1,
            ratio_w2=self.ratio_w2, ratio_b2=self.ratio_b2, **self._batch_arguments(synchronized))
        if self.training:
            self.last_ratios = ratios
        return out


class SyncExemplarNorm2d(ExemplarNorm2d, synchronized=True):
    pass
