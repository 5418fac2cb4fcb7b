"""benchmarks/norm_cost.py: its counts agree with hand-computed ones on a tiny network."""
from __future__ import annotations

import pytest
from torch import nn

import dynnorm
from benchmarks import norm_cost


def _tiny(norm_layer) -> nn.Sequential:
    """3 -> 32 channels, 3x3 convolution without bias on 8x8 (6x6 out), the norm, a 32 -> 5 linear layer."""
    return nn.Sequential(nn.Conv2d(3, 32, 3, bias=False), norm_layer(32), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 5))


CONV_MACS = 6 * 6 * 32 * 3 * 3 * 3  # output positions x output channels x (input channels x kernel)
LINEAR_MACS = 32 * 5


def test_counts_of_a_network_with_associate_norm_match_the_hand_count():
    model = _tiny(lambda c: dynnorm.AssociateNorm2d(c, num_groups=8))
    # AssocNorm, G = 8 groups, embedding E = max(8 // 16, 2) = 2: the encoder (E x G) embeds the group means
    # and the group variances, each decoder (G x E) decodes one embedding.
    heads = 2 * (2 * 8) + 2 * (8 * 2)
    assert norm_cost.head_multiply_adds(model) == heads == 64
    assert norm_cost.multiply_adds(model, (1, 3, 8, 8)) == CONV_MACS + LINEAR_MACS + heads
    assert norm_cost.multiply_adds(model, (4, 3, 8, 8)) == CONV_MACS + LINEAR_MACS + heads  # per image
    assert norm_cost.parameter_count(model) == 32 * 27 + (2 * 32 + 3 * 16) + (32 * 5 + 5)


def test_excess_over_batchnorm():
    norms = {"BN": nn.BatchNorm2d, "SN": dynnorm.SwitchNorm2d, "AssocNorm": lambda c: dynnorm.AssociateNorm2d(c, 8)}
    rows = {name: norm_cost.measure(_tiny, factory, (1, 3, 8, 8)) for name, factory in norms.items()}
    table = norm_cost.relative_to_baseline(rows)
    assert table["BN"]["extra_parameters"] == 0 and table["BN"]["multiply_adds"] == CONV_MACS + LINEAR_MACS
    assert table["SN"]["extra_parameters"] == 6 and table["SN"]["extra_multiply_adds"] == 0
    assert table["SN"]["extra_parameters_pct"] == pytest.approx(100 * 6 / (32 * 27 + 64 + 165))
    assert table["AssocNorm"]["extra_parameters"] == 48 and table["AssocNorm"]["extra_multiply_adds"] == 64
    assert all(row["cross_check"] for row in table.values())
    assert "| AssocNorm | " in norm_cost.markdown({"tiny": table})


@pytest.mark.parametrize("norm", list(norm_cost.NORMS))
def test_the_counter_and_the_shapes_agree_for_every_normalizer(norm):
    rows = {name: norm_cost.measure(_tiny, norm_cost.NORMS[name], (1, 3, 8, 8)) for name in {"BN", norm}}
    assert norm_cost.relative_to_baseline(rows)[norm]["cross_check"]
