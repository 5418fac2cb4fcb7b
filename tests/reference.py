"""Independent float64 references, written directly from each method's equations.

Nothing here reuses dynnorm's code: statistics are taken straight over the axes each normalizer averages
(not derived from instance moments), and DN's pooling matrices are materialised as explicit Kronecker
products. Inputs are ``(N, C, H, W)`` float64 tensors.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _stats(x: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    return x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)


def _affine(y: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    if weight is not None:
        y = y * weight.view(1, -1, 1, 1)
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    return y


def batch_stats(x, running_mean=None, running_var=None):
    """BN statistics: of the batch, or the running ones when given."""
    if running_mean is not None:
        return running_mean.view(1, -1, 1, 1), running_var.view(1, -1, 1, 1)
    return _stats(x, (0, 2, 3))


def switch_norm(x, weight, bias, mean_logits, var_logits, eps, running_mean=None, running_var=None):
    """SN: softmax mixtures of IN, LN (and BN, if the logits have 3 entries) statistics."""
    stats = [_stats(x, (2, 3)), _stats(x, (1, 2, 3))]
    if mean_logits.numel() == 3:
        stats.append(batch_stats(x, running_mean, running_var))
    mw, vw = torch.softmax(mean_logits, 0), torch.softmax(var_logits, 0)
    mean = sum(w * m for w, (m, _) in zip(mw, stats))
    var = sum(w * v for w, (_, v) in zip(vw, stats))
    return _affine((x - mean) / torch.sqrt(var + eps), weight, bias)


def exemplar_norm(x, weight, bias, w1, b1, w2, b2, eps, running_mean=None, running_var=None):
    """EN: per-sample softmax ratios from the descriptor [(mu_IN - mu_BN) / s_BN; s_IN / s_BN - 1], mixing
    IN-, LN- and BN-normalized outputs (s = sqrt(var + eps))."""
    n, c = x.shape[:2]
    mean_in, var_in = _stats(x, (2, 3))
    mean_bn, var_bn = batch_stats(x, running_mean, running_var)
    s_bn = torch.sqrt(var_bn.view(1, c) + eps)
    descriptor = torch.cat([(mean_in.view(n, c) - mean_bn.view(1, c)) / s_bn,
                            torch.sqrt(var_in.view(n, c) + eps) / s_bn - 1], 1)
    ratios = torch.softmax(torch.relu(descriptor @ w1.T + b1) @ w2.T + b2, 1)
    outputs = [(x - m) / torch.sqrt(v + eps) for m, v in
               (_stats(x, (2, 3)), _stats(x, (1, 2, 3)), (mean_bn, var_bn))]
    mixed = sum(ratios[:, k].view(n, 1, 1, 1) * out for k, out in enumerate(outputs))
    return _affine(mixed, weight, bias)


def _averaging_matrix(gate: Tensor, size: int) -> Tensor:
    return gate * torch.full((size, size), 1.0 / size, dtype=torch.float64) + (1 - gate) * torch.eye(size, dtype=torch.float64)


def dynamic_pooling_matrix(n: int, factors: tuple[int, ...], channel_gates: Tensor, batch_gate: Tensor) -> Tensor:
    """The explicit ``(NC, NC)`` matrix ``B kron U_1 kron ... kron U_K``."""
    matrix = _averaging_matrix(batch_gate, n)
    for gate, size in zip(channel_gates, factors):
        matrix = torch.kron(matrix, _averaging_matrix(gate, size))
    return matrix


def dynamic_norm(x, weight, bias, factors, mean_gates, var_gates, mean_batch, var_batch, eps,
                 running_mean=None, running_var=None):
    """DN: mu = A m1, sigma^2 = A' m2 - (A' m1)^2 with explicit pooling matrices (eval: running BN moments)."""
    n, c = x.shape[:2]
    m1 = x.mean((2, 3))
    m2 = (x * x).mean((2, 3))
    if running_mean is None:
        a_mean = dynamic_pooling_matrix(n, factors, mean_gates, mean_batch)
        a_var = dynamic_pooling_matrix(n, factors, var_gates, var_batch)
        mean = (a_mean @ m1.reshape(-1)).view(n, c)
        var = (a_var @ m2.reshape(-1)).view(n, c) - ((a_var @ m1.reshape(-1)).view(n, c)) ** 2
    else:  # the batch-pooled part uses the running moments
        def pooled(values, batch_values, channel_gates, batch_gate):
            mixed = (1 - batch_gate) * values + batch_gate * batch_values
            a = dynamic_pooling_matrix(1, factors, channel_gates, torch.tensor(0.0, dtype=torch.float64))
            return mixed @ a.T
        mean = pooled(m1, running_mean, mean_gates, mean_batch)
        var = pooled(m2, running_var + running_mean**2, var_gates, var_batch) - pooled(m1, running_mean, var_gates, var_batch) ** 2
    y = (x - mean.view(n, c, 1, 1)) / torch.sqrt(var.clamp_min(0).view(n, c, 1, 1) + eps)
    return _affine(y, weight, bias)


def dynamic_affine_norm(x, weight, bias, w1, b1, w2, b2, eps, per_sample: bool, running_mean=None, running_var=None):
    """DN-B (per_sample: from each sample's standardized mean/std) / DN-C (from the batch [mu; sigma]):
    BN standardization with a tanh-bounded generated scale and shift."""
    n, c = x.shape[:2]
    mean_bn, var_bn = batch_stats(x, running_mean, running_var)
    standardized = (x - mean_bn) / torch.sqrt(var_bn + eps)
    if per_sample:  # mean and std of each sample's standardized map
        m = standardized.mean((2, 3))
        s = torch.sqrt(x.var((2, 3), unbiased=False) / (var_bn.view(1, c) + eps) + eps / (var_bn.view(1, c) + eps))
        stats = torch.cat([m, s], 1)
    else:
        stats = torch.cat([mean_bn.view(1, c), torch.sqrt(var_bn.view(1, c) + eps)], 1)
    delta = torch.tanh(torch.relu(stats @ w1.T + b1) @ w2.T + b2)
    gamma = weight.view(1, c) + delta[:, :c]
    beta = bias.view(1, c) + delta[:, c:]
    return gamma.view(-1, c, 1, 1) * standardized + beta.view(-1, c, 1, 1)


def associate_norm(x, weight, bias, num_groups, w1, w2, w3, eps, scale_from="mean"):
    """AssocNorm, equations 3-6: GN standardization, omega = sigmoid(W2 ReLU(W1 mu)) + B_w, beta = tanh(W3 ReLU(W1 var)) + B_b."""
    n, c, h, w = x.shape
    grouped = x.reshape(n, num_groups, -1)
    mu = grouped.mean(2)
    var = grouped.var(2, unbiased=False)
    standardized = ((grouped - mu[..., None]) / torch.sqrt(var[..., None] + eps)).view(n, c, h, w)
    scale_key, shift_key = (mu, var) if scale_from == "mean" else (var, mu)
    omega = torch.sigmoid(torch.relu(scale_key @ w1.T) @ w2.T)
    beta = torch.tanh(torch.relu(shift_key @ w1.T) @ w3.T)
    per_group = c // num_groups
    omega = omega.repeat_interleave(per_group, 1) + weight.view(1, c)
    beta = beta.repeat_interleave(per_group, 1) + bias.view(1, c)
    return omega.view(n, c, 1, 1) * standardized + beta.view(n, c, 1, 1)
