// Each layer's (N, C)-sized math: from the instance moments (and the batch statistics in use) to the
// per-(n, c) coefficients of y = (x - mean) * scale + shift, and its backward.
//
// A layer class is built from a LayerInput (which computes and keeps the forward intermediates) and
// exposes `scale`, `shift` (N * C each) and `aux` (extra non-differentiable output, may be empty);
// `backward(g_scale, g_shift, grads)` accumulates the gradients of the instance moments, of the batch
// statistics and of the parameters, given g_scale = sum(dy * (x - mean)) and g_shift = sum(dy) per (n, c).
// Means are relative to the call's reference value R, and shifts are formed from differences of means
// (mean - pooled mean), so a large common offset of the input costs no precision.
// The formulas are those of the Python reference in dynnorm/functional.py, which the tests compare.
#pragma once

#include <c10/util/Exception.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#include "small_math.h"

namespace dynnorm {

constexpr int kMaxParams = 6;

// How SN's mixture parameters become weights.
enum class Mixture { kSoftmax, kWeights, kSparsestMax };

struct LayerOptions {
  bool flag = false;             // DN-B: per sample; AssocNorm: scale from the mean
  Mixture mixture = Mixture::kSoftmax;
  double radius = 0;             // SSN: SparsestMax radius
  std::array<bool, 2> frozen{};  // SSN: mean / variance mixture frozen: one-hot at `selected`
  std::array<int64_t, 2> selected{};
  int64_t groups = 0;            // AssocNorm
  std::vector<int64_t> factors;  // DN: channel factor sizes
};

template <typename T>
struct LayerInput {
  int64_t N, C, L;
  T reference;       // R: the means below are relative to it (mean - R); differences of means need no R
  const T* mean;     // (N, C) instance means minus R
  const T* var;      // (N, C) instance biased variances
  const T* bn_mean;  // (C) batch mean in use (of the batch, or running) minus R, null if the layer has none
  const T* bn_var;
  T eps;
  std::array<const T*, kMaxParams> param;  // null when absent
  std::array<int64_t, kMaxParams> numel;
};

template <typename T>
struct LayerGrads {
  Vec<T> mean, var;        // (N, C)
  Vec<T> bn_mean, bn_var;  // (C)
  std::array<Vec<T>, kMaxParams> param;  // empty when no gradient is needed

  T* p(int i) { return param[i].empty() ? nullptr : param[i].data(); }
};

template <typename T>
inline T rsqrt(T v) {
  return T(1) / std::sqrt(v);
}

// ---- Switchable Normalization (and SSN: weights given, or SparsestMax of the logits) ---------------------

template <typename T>
struct SwitchNorm {
  enum { kWeight, kBias, kMeanMixture, kVarMixture };
  const LayerInput<T>& in;
  const LayerOptions& options;
  const int64_t K;  // 3 (IN, LN, BN) or 2 (IN, LN)
  T wm[3] = {}, wv[3] = {}, norm_m = 1, norm_v = 1;
  std::optional<SparsestMax<T>> sparse_m, sparse_v;
  Vec<T> ln_mean, ln_var, rstd, scale, shift, aux;

  SwitchNorm(const LayerInput<T>& input, const LayerOptions& o)
      : in(input), options(o), K(input.numel[kMeanMixture]) {
    const int64_t N = in.N, C = in.C;
    mixture(in.param[kMeanMixture], 0, sparse_m, wm, norm_m);
    mixture(in.param[kVarMixture], 1, sparse_v, wv, norm_v);
    if (o.mixture == Mixture::kSparsestMax) {  // SSN reports the weights it used
      aux.assign(wm, wm + K);
      aux.insert(aux.end(), wv, wv + K);
    }
    ln_mean.resize(N), ln_var.resize(N), rstd.resize(N * C), scale.resize(N * C), shift.resize(N * C);
    group_moments(N, C, C, in.mean, in.var, ln_mean.data(), ln_var.data());
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        const int64_t j = n * C + c;
        T v = wv[0] * in.var[j] + wv[1] * ln_var[n];
        T deviation = wm[1] * (in.mean[j] - ln_mean[n]);
        if (K == 3) {
          v += wv[2] * in.bn_var[c];
          deviation += wm[2] * (in.mean[j] - in.bn_mean[c]);
        }
        rstd[j] = rsqrt(v + in.eps);
        scale[j] = rstd[j] * weight(c);
        shift[j] = bias(c) + deviation * scale[j];
      }
    }
  }

  T weight(int64_t c) const { return in.param[kWeight] ? in.param[kWeight][c] : T(1); }
  T bias(int64_t c) const { return in.param[kBias] ? in.param[kBias][c] : T(0); }

  // Mixture weights from the parameters (mixture `which`: 0 mean, 1 variance); IN is left out for one value per
  // (n, c). Non-finite SparsestMax logits give NaN weights, so the output shows the diverged parameter.
  void mixture(const T* given, int which, std::optional<SparsestMax<T>>& sparse, T* w, T& total) const {
    const bool single = in.L == 1;
    if (options.mixture == Mixture::kSoftmax) {
      const bool skip[3] = {single, false, false};
      softmax(K, given, skip, w);
      return;
    }
    if (options.mixture == Mixture::kWeights) {
      std::copy(given, given + K, w);
    } else if (options.frozen[which]) {
      std::fill(w, w + K, T(0));
      w[options.selected[which]] = 1;
    } else if (std::all_of(given, given + K, [](T v) { return std::isfinite(v); })) {
      sparse.emplace(K, given, static_cast<T>(options.radius));
      std::copy(sparse->out.begin(), sparse->out.end(), w);
    } else {
      std::fill(w, w + K, std::numeric_limits<T>::quiet_NaN());
    }
    if (!single) return;
    w[0] = 0;
    total = 0;
    for (int64_t k = 1; k < K; ++k) total += w[k];
    TORCH_CHECK_VALUE(total != 0, "the mixture selected IN only, which is undefined for inputs with one value per "
                      "(sample, channel)");
    for (int64_t k = 1; k < K; ++k) w[k] /= total;
  }

  void mixture_backward(const T* w, const T* g_w, T total, const std::optional<SparsestMax<T>>& sparse,
                        T* g_param) const {
    if (!g_param) return;
    if (options.mixture == Mixture::kSoftmax) {
      softmax_backward(K, w, g_w, g_param);
      return;
    }
    T g_given[3] = {g_w[0], g_w[1], g_w[2]};
    if (in.L == 1) {  // renormalized without IN: w'_k = w_k / total for k >= 1
      T dot = 0;
      for (int64_t k = 1; k < K; ++k) dot += w[k] * g_w[k];
      g_given[0] = 0;
      for (int64_t k = 1; k < K; ++k) g_given[k] = (g_w[k] - dot) / total;
    }
    if (options.mixture == Mixture::kWeights) {
      for (int64_t k = 0; k < K; ++k) g_param[k] += g_given[k];
    } else if (sparse.has_value()) {  // not frozen
      sparse->backward(g_given, g_param);
    }
  }

  // Derivation. scale = gamma r with r = (v + eps)^(-1/2), v = sum_k w'_k var_k; shift = beta + d scale with
  // d = sum_{k>=1} w_k (m - m_k). scale reaches the loss directly and through shift, so its total gradient is
  // G = g_scale + g_shift d: dgamma = G r, dv = -r^3 gamma G / 2, dd = g_shift scale. dv goes to var_k with weight
  // w'_k and to w'_k with var_k; dd goes to m with sum_{k>=1} w_k, to m_k with -w_k and to w_k with (m - m_k).
  // The pooled LN/BN moments then go back to the instance moments (group/batch moments backward) and the
  // weights to their parameters (softmax, renormalization or SparsestMax backward).
  void backward(const T* g_scale, const T* g_shift, LayerGrads<T>& g) {
    const int64_t N = in.N, C = in.C;
    T g_wm[3] = {}, g_wv[3] = {};
    Vec<T> g_ln_mean(N), g_ln_var(N);
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        const int64_t j = n * C + c;
        const T to_ln = in.mean[j] - ln_mean[n];
        const T to_bn = K == 3 ? in.mean[j] - in.bn_mean[c] : T(0);
        const T deviation = wm[1] * to_ln + wm[2] * to_bn;
        const T g_total_scale = g_scale[j] + g_shift[j] * deviation;
        if (T* gw = g.p(kWeight)) gw[c] += g_total_scale * rstd[j];
        if (T* gb = g.p(kBias)) gb[c] += g_shift[j];
        const T r = rstd[j];
        const T g_v = T(-0.5) * r * r * r * g_total_scale * weight(c);
        g_wv[0] += g_v * in.var[j];
        g_wv[1] += g_v * ln_var[n];
        g.var[j] += wv[0] * g_v;
        g_ln_var[n] += wv[1] * g_v;
        const T g_deviation = g_shift[j] * scale[j];
        g_wm[1] += g_deviation * to_ln;
        g.mean[j] += (wm[1] + wm[2]) * g_deviation;
        g_ln_mean[n] -= wm[1] * g_deviation;
        if (K == 3) {
          g_wv[2] += g_v * in.bn_var[c];
          g.bn_var[c] += wv[2] * g_v;
          g_wm[2] += g_deviation * to_bn;
          g.bn_mean[c] -= wm[2] * g_deviation;
        }
      }
    }
    group_moments_backward(N, C, C, in.mean, ln_mean.data(), g_ln_mean.data(), g_ln_var.data(), g.mean.data(),
                           g.var.data());
    mixture_backward(wm, g_wm, norm_m, sparse_m, g.p(kMeanMixture));
    mixture_backward(wv, g_wv, norm_v, sparse_v, g.p(kVarMixture));
  }
};

// ---- Exemplar Normalization ------------------------------------------------------------------------------

template <typename T>
struct ExemplarNorm {
  enum { kWeight, kBias, kW1, kB1, kW2, kB2 };
  static constexpr int64_t K = 3;
  const LayerInput<T>& in;
  const int64_t H;
  Vec<T> ln_mean, ln_var, rstd_in, rstd_ln, rstd_bn, descriptor, hidden, ratios, A, B, scale, shift, aux;

  ExemplarNorm(const LayerInput<T>& input, const LayerOptions&) : in(input), H(input.numel[kB1]) {
    const int64_t N = in.N, C = in.C;
    ln_mean.resize(N), ln_var.resize(N), rstd_ln.resize(N), rstd_in.resize(N * C), rstd_bn.resize(C);
    descriptor.resize(N * 2 * C), hidden.resize(N * H), ratios.resize(N * K);
    A.resize(N * C), B.resize(N * C), scale.resize(N * C), shift.resize(N * C), aux.assign(K, T(0));
    group_moments(N, C, C, in.mean, in.var, ln_mean.data(), ln_var.data());
    for (int64_t n = 0; n < N; ++n) rstd_ln[n] = rsqrt(ln_var[n] + in.eps);
    for (int64_t c = 0; c < C; ++c) rstd_bn[c] = rsqrt(in.bn_var[c] + in.eps);
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        const int64_t j = n * C + c;
        rstd_in[j] = rsqrt(in.var[j] + in.eps);
        descriptor[n * 2 * C + c] = (in.mean[j] - in.bn_mean[c]) * rstd_bn[c];
        descriptor[n * 2 * C + C + c] = rstd_bn[c] / rstd_in[j] - T(1);
      }
    }
    linear(N, 2 * C, H, descriptor.data(), in.param[kW1], in.param[kB1], hidden.data());
    for (T& h : hidden) h = std::max(h, T(0));
    Vec<T> logits(N * K);
    linear(N, H, K, hidden.data(), in.param[kW2], in.param[kB2], logits.data());
    const bool skip[K] = {in.L == 1, false, false};
    for (int64_t n = 0; n < N; ++n) {
      softmax(K, logits.data() + n * K, skip, ratios.data() + n * K);
      for (int64_t k = 0; k < K; ++k) aux[k] += ratios[n * K + k] / N;
    }
    for (int64_t n = 0; n < N; ++n) {
      const T* r = ratios.data() + n * K;
      for (int64_t c = 0; c < C; ++c) {
        const int64_t j = n * C + c;
        A[j] = r[0] * rstd_in[j] + r[1] * rstd_ln[n] + r[2] * rstd_bn[c];
        B[j] = r[1] * (in.mean[j] - ln_mean[n]) * rstd_ln[n] + r[2] * (in.mean[j] - in.bn_mean[c]) * rstd_bn[c];
        const T gamma = in.param[kWeight] ? in.param[kWeight][c] : T(1);
        scale[j] = gamma * A[j];
        shift[j] = (in.param[kBias] ? in.param[kBias][c] : T(0)) + gamma * B[j];
      }
    }
  }

  // Derivation. scale = gamma A, A = sum_k r_k s_k (s_k = (var_k + eps)^(-1/2)); shift = beta + gamma B,
  // B = sum_{k>=1} r_k (m - m_k) s_k. With gA = g_scale gamma and gB = g_shift gamma: dgamma = g_scale A +
  // g_shift B, dr_k = (gA + gB (m - m_k)) s_k, ds_k = r_k (gA + gB (m - m_k)), dm_k = -gB r_k s_k. The ratios
  // are a softmax of the head's logits (softmax backward, then the two linear layers with the ReLU's mask) whose
  // input, the descriptor [(m - m_BN) s_BN ; s_BN / s_IN - 1], adds its own terms to dm, dm_BN, ds_BN, ds_IN;
  // finally ds = -s^3 / 2 dvar and the LN/BN moments go back to the instance moments.
  void backward(const T* g_scale, const T* g_shift, LayerGrads<T>& g) {
    const int64_t N = in.N, C = in.C;
    Vec<T> g_ratios(N * K), g_rstd_in(N * C), g_rstd_ln(N), g_rstd_bn(C), g_ln_mean(N), g_ln_var(N);
    for (int64_t n = 0; n < N; ++n) {
      const T* r = ratios.data() + n * K;
      T* gr = g_ratios.data() + n * K;
      for (int64_t c = 0; c < C; ++c) {
        const int64_t j = n * C + c;
        const T gamma = in.param[kWeight] ? in.param[kWeight][c] : T(1);
        if (T* gw = g.p(kWeight)) gw[c] += g_scale[j] * A[j] + g_shift[j] * B[j];
        if (T* gb = g.p(kBias)) gb[c] += g_shift[j];
        const T gA = g_scale[j] * gamma, gB = g_shift[j] * gamma;
        const T to_ln = in.mean[j] - ln_mean[n], to_bn = in.mean[j] - in.bn_mean[c];
        gr[0] += gA * rstd_in[j];
        gr[1] += (gA + gB * to_ln) * rstd_ln[n];
        gr[2] += (gA + gB * to_bn) * rstd_bn[c];
        g_rstd_in[j] += gA * r[0];
        g_rstd_ln[n] += r[1] * (gA + gB * to_ln);
        g_rstd_bn[c] += r[2] * (gA + gB * to_bn);
        g.mean[j] += gB * (r[1] * rstd_ln[n] + r[2] * rstd_bn[c]);
        g_ln_mean[n] -= gB * r[1] * rstd_ln[n];
        g.bn_mean[c] -= gB * r[2] * rstd_bn[c];
      }
    }
    Vec<T> g_logits(N * K), g_hidden(N * H), g_descriptor(N * 2 * C);
    for (int64_t n = 0; n < N; ++n) {
      softmax_backward(K, ratios.data() + n * K, g_ratios.data() + n * K, g_logits.data() + n * K);
    }
    linear_backward(N, H, K, hidden.data(), in.param[kW2], g_logits.data(), g_hidden.data(), g.p(kW2), g.p(kB2));
    for (int64_t i = 0; i < N * H; ++i) {
      if (hidden[i] <= T(0)) g_hidden[i] = 0;
    }
    linear_backward(N, 2 * C, H, descriptor.data(), in.param[kW1], g_hidden.data(), g_descriptor.data(), g.p(kW1),
                    g.p(kB1));
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        const int64_t j = n * C + c;
        const T g_relative_mean = g_descriptor[n * 2 * C + c];
        const T g_relative_std = g_descriptor[n * 2 * C + C + c];
        g.mean[j] += g_relative_mean * rstd_bn[c];
        g.bn_mean[c] -= g_relative_mean * rstd_bn[c];
        g_rstd_bn[c] += g_relative_mean * (in.mean[j] - in.bn_mean[c]) + g_relative_std / rstd_in[j];
        g_rstd_in[j] -= g_relative_std * rstd_bn[c] / (rstd_in[j] * rstd_in[j]);
        g.var[j] += T(-0.5) * rstd_in[j] * rstd_in[j] * rstd_in[j] * g_rstd_in[j];
      }
    }
    for (int64_t n = 0; n < N; ++n) g_ln_var[n] = T(-0.5) * rstd_ln[n] * rstd_ln[n] * rstd_ln[n] * g_rstd_ln[n];
    for (int64_t c = 0; c < C; ++c) g.bn_var[c] += T(-0.5) * rstd_bn[c] * rstd_bn[c] * rstd_bn[c] * g_rstd_bn[c];
    group_moments_backward(N, C, C, in.mean, ln_mean.data(), g_ln_mean.data(), g_ln_var.data(), g.mean.data(),
                           g.var.data());
  }
};

// ---- Dynamic Normalization: pooling by a Kronecker product of mixtures ------------------------------------

// The elements pooled together along one channel factor: for every sample and every other factor index,
// `size` elements `stride` apart.
struct Axis {
  int64_t size, stride;
};

template <typename F>
inline void for_each_group(int64_t N, int64_t C, const Axis& axis, const F& f) {
  const int64_t span = axis.size * axis.stride;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t outer = 0; outer < C / span; ++outer) {
      for (int64_t inner = 0; inner < axis.stride; ++inner) f(n * C + outer * span + inner);
    }
  }
}

template <typename T>
struct DynamicNorm {
  enum { kWeight, kBias, kMeanGates, kVarGates, kMeanBatch, kVarBatch };
  const LayerInput<T>& in;
  std::vector<Axis> axes;
  T mean_batch_gate, var_batch_gate;
  Vec<T> mean_gates, var_gates, batch_mean;
  // means[i] / vars[i]: the (N, C) statistics after i pooling steps (step 0: the batch factor).
  std::vector<Vec<T>> mean_steps, var_means, var_steps;
  Vec<T> rstd, scale, shift, aux;

  DynamicNorm(const LayerInput<T>& input, const LayerOptions& o) : in(input) {
    const int64_t N = in.N, C = in.C, NC = N * C;
    int64_t stride = C;
    for (int64_t size : o.factors) {
      stride /= size;
      axes.push_back({size, stride});
    }
    const int64_t K = static_cast<int64_t>(axes.size());
    mean_gates.resize(K), var_gates.resize(K);
    for (int64_t i = 0; i < K; ++i) {
      mean_gates[i] = sigmoid(in.param[kMeanGates][i]);
      var_gates[i] = sigmoid(in.param[kVarGates][i]);
    }
    mean_batch_gate = sigmoid(in.param[kMeanBatch][0]);
    var_batch_gate = sigmoid(in.param[kVarBatch][0]);
    // Pooling is equivariant to a common shift, so it runs on the means relative to R.
    const Vec<T> relative(in.mean, in.mean + NC);
    batch_mean.assign(in.bn_mean, in.bn_mean + C);

    mean_steps.assign(K + 2, Vec<T>(NC));
    mean_steps[0] = relative;
    for (int64_t j = 0; j < NC; ++j) {
      const T m = relative[j];
      mean_steps[1][j] = m + mean_batch_gate * (batch_mean[j % C] - m);
    }
    for (int64_t i = 0; i < K; ++i) pool_means(axes[i], mean_gates[i], mean_steps[i + 1], mean_steps[i + 2]);

    var_means.assign(K + 2, Vec<T>(NC));
    var_steps.assign(K + 2, Vec<T>(NC));
    var_means[0] = relative;
    var_steps[0].assign(in.var, in.var + NC);
    const T b = var_batch_gate;
    for (int64_t j = 0; j < NC; ++j) {
      const int64_t c = j % C;
      const T e = relative[j] - batch_mean[c];
      var_means[1][j] = relative[j] - b * e;
      var_steps[1][j] = (1 - b) * in.var[j] + b * in.bn_var[c] + b * (1 - b) * e * e;
    }
    for (int64_t i = 0; i < K; ++i) {
      pool_distributions(axes[i], var_gates[i], var_means[i + 1], var_steps[i + 1], var_means[i + 2],
                         var_steps[i + 2]);
    }
    rstd.resize(NC), scale.resize(NC), shift.resize(NC);
    const Vec<T>& pooled_mean = mean_steps[K + 1];
    const Vec<T>& pooled_var = var_steps[K + 1];
    for (int64_t j = 0; j < NC; ++j) {
      const int64_t c = j % C;
      rstd[j] = rsqrt(pooled_var[j] + in.eps);
      scale[j] = rstd[j] * (in.param[kWeight] ? in.param[kWeight][c] : T(1));
      shift[j] = (in.param[kBias] ? in.param[kBias][c] : T(0)) + (mean_steps[0][j] - pooled_mean[j]) * scale[j];
    }
  }

  // out = lerp(values, mean over the axis, gate).
  void pool_means(const Axis& axis, T gate, const Vec<T>& values, Vec<T>& out) const {
    for_each_group(in.N, in.C, axis, [&](int64_t base) {
      T total = 0;
      for (int64_t k = 0; k < axis.size; ++k) total += values[base + k * axis.stride];
      const T average = total / axis.size;
      for (int64_t k = 0; k < axis.size; ++k) {
        const int64_t j = base + k * axis.stride;
        out[j] = values[j] + gate * (average - values[j]);
      }
    });
  }

  // Mixture of each element's (mean, var) with the uniform mixture over its axis, weight `gate`:
  // mean' = lerp(m, mean(m), g), var' = lerp(v, mean(v) + spread, g) + g (1 - g) (m - mean(m))^2.
  void pool_distributions(const Axis& axis, T gate, const Vec<T>& m, const Vec<T>& v, Vec<T>& m_out,
                          Vec<T>& v_out) const {
    for_each_group(in.N, in.C, axis, [&](int64_t base) {
      T sum_m = 0, sum_v = 0, spread = 0;
      for (int64_t k = 0; k < axis.size; ++k) {
        sum_m += m[base + k * axis.stride];
        sum_v += v[base + k * axis.stride];
      }
      const T mean_m = sum_m / axis.size, mean_v = sum_v / axis.size;
      for (int64_t k = 0; k < axis.size; ++k) {
        const T d = m[base + k * axis.stride] - mean_m;
        spread += d * d;
      }
      spread /= axis.size;
      for (int64_t k = 0; k < axis.size; ++k) {
        const int64_t j = base + k * axis.stride;
        const T d = m[j] - mean_m;
        m_out[j] = m[j] - gate * d;
        v_out[j] = (1 - gate) * v[j] + gate * (mean_v + spread) + gate * (1 - gate) * d * d;
      }
    });
  }

  // out_j = (1 - g) v_j + g a with a = mean over the group: dv_j = (1 - g) dout_j + g sum(dout) / s,
  // dg = sum_j dout_j (a - v_j).
  void pool_means_backward(const Axis& axis, T gate, const Vec<T>& values, const Vec<T>& g_out, Vec<T>& g_values,
                           T& g_gate) const {
    for_each_group(in.N, in.C, axis, [&](int64_t base) {
      T total = 0, g_total = 0;
      for (int64_t k = 0; k < axis.size; ++k) {
        total += values[base + k * axis.stride];
        g_total += g_out[base + k * axis.stride];
      }
      const T average = total / axis.size;
      for (int64_t k = 0; k < axis.size; ++k) {
        const int64_t j = base + k * axis.stride;
        g_values[j] = (1 - gate) * g_out[j] + gate * g_total / axis.size;
        g_gate += g_out[j] * (average - values[j]);
      }
    });
  }

  // m'_j = m_j - g d_j, v'_j = (1 - g) v_j + g (mean(v) + spread) + g (1 - g) d_j^2 with d_j = m_j - mean(m),
  // spread = mean(d^2). Differentiating: dv_j = (1 - g) dv'_j + g sum(dv') / s; d_j collects
  // 2 g (1 - g) d_j dv'_j + 2 g sum(dv') d_j / s (through spread), and as d_j = m_j - mean(m) its gradient
  // reaches m_j minus its group average; dm_j also gets (1 - g) dm'_j + g sum(dm') / s; dg sums the partial
  // derivatives -d_j dm'_j + dv'_j (mean(v) + spread - v_j + (1 - 2 g) d_j^2).
  void pool_distributions_backward(const Axis& axis, T gate, const Vec<T>& m, const Vec<T>& v, const Vec<T>& gm_out,
                                   const Vec<T>& gv_out, Vec<T>& gm, Vec<T>& gv, T& g_gate) const {
    const int64_t s = axis.size;
    for_each_group(in.N, in.C, axis, [&](int64_t base) {
      T sum_m = 0, sum_v = 0, spread = 0, g_sum_m = 0, g_sum_v = 0;
      for (int64_t k = 0; k < s; ++k) {
        const int64_t j = base + k * axis.stride;
        sum_m += m[j], sum_v += v[j], g_sum_m += gm_out[j], g_sum_v += gv_out[j];
      }
      const T mean_m = sum_m / s, mean_v = sum_v / s;
      for (int64_t k = 0; k < s; ++k) {
        const T d = m[base + k * axis.stride] - mean_m;
        spread += d * d;
      }
      spread /= s;
      const T g_spread = gate * g_sum_v;
      T g_d_total = 0;
      for (int64_t k = 0; k < s; ++k) {
        const int64_t j = base + k * axis.stride;
        const T d = m[j] - mean_m;
        g_gate += -gm_out[j] * d + gv_out[j] * (mean_v + spread - v[j] + (1 - 2 * gate) * d * d);
        gv[j] = (1 - gate) * gv_out[j] + gate * g_sum_v / s;
        const T g_d = 2 * gate * (1 - gate) * d * gv_out[j] + g_spread * 2 * d / s;
        gm[j] = (1 - gate) * gm_out[j] + gate * g_sum_m / s + g_d;
        g_d_total += g_d;
      }
      for (int64_t k = 0; k < s; ++k) gm[base + k * axis.stride] -= g_d_total / s;
    });
  }

  // Derivation. scale = gamma r, r = (pooled var + eps)^(-1/2), shift = beta + (m - pooled mean) scale, so as in
  // SN the scale's total gradient is g_scale + g_shift (m - pooled mean) and the pooled mean gets -g_shift
  // scale. Both run back through the pooling steps in reverse (pool_*_backward per channel factor, then the
  // batch factor's mixture with the BN statistics, whose derivatives have the same form); the gates' gradients
  // are multiplied by sigmoid' = g (1 - g) to reach the logits.
  void backward(const T* g_scale, const T* g_shift, LayerGrads<T>& g) {
    const int64_t N = in.N, C = in.C, NC = N * C;
    const int64_t K = static_cast<int64_t>(axes.size());
    const Vec<T>& pooled_mean = mean_steps[K + 1];
    Vec<T> g_mean(NC), g_var(NC);
    for (int64_t j = 0; j < NC; ++j) {
      const int64_t c = j % C;
      const T deviation = mean_steps[0][j] - pooled_mean[j];
      const T g_total_scale = g_scale[j] + g_shift[j] * deviation;
      if (T* gw = g.p(kWeight)) gw[c] += g_total_scale * rstd[j];
      if (T* gb = g.p(kBias)) gb[c] += g_shift[j];
      const T weight = in.param[kWeight] ? in.param[kWeight][c] : T(1);
      g_var[j] = T(-0.5) * rstd[j] * rstd[j] * rstd[j] * g_total_scale * weight;
      g_mean[j] = -g_shift[j] * scale[j];
      g.mean[j] += g_shift[j] * scale[j];
    }
    // mean path
    Vec<T> g_prev(NC);
    Vec<T> g_mean_gates(K), g_var_gates(K);
    for (int64_t i = K - 1; i >= 0; --i) {
      pool_means_backward(axes[i], mean_gates[i], mean_steps[i + 1], g_mean, g_prev, g_mean_gates[i]);
      std::swap(g_mean, g_prev);
    }
    T g_mean_batch = 0;
    for (int64_t j = 0; j < NC; ++j) {
      const int64_t c = j % C;
      const T b = mean_batch_gate;
      g.mean[j] += (1 - b) * g_mean[j];
      g.bn_mean[c] += b * g_mean[j];
      g_mean_batch += g_mean[j] * (batch_mean[c] - mean_steps[0][j]);
    }
    // variance path
    Vec<T> gm(NC), gm_prev(NC), gv_prev(NC);
    for (int64_t i = K - 1; i >= 0; --i) {
      pool_distributions_backward(axes[i], var_gates[i], var_means[i + 1], var_steps[i + 1], gm, g_var, gm_prev,
                                  gv_prev, g_var_gates[i]);
      std::swap(gm, gm_prev);
      std::swap(g_var, gv_prev);
    }
    T g_var_batch = 0;
    const T b = var_batch_gate;
    for (int64_t j = 0; j < NC; ++j) {
      const int64_t c = j % C;
      const T e = var_means[0][j] - batch_mean[c];
      g.mean[j] += (1 - b) * gm[j] + 2 * b * (1 - b) * e * g_var[j];
      g.bn_mean[c] += b * gm[j] - 2 * b * (1 - b) * e * g_var[j];
      g.var[j] += (1 - b) * g_var[j];
      g.bn_var[c] += b * g_var[j];
      g_var_batch += -gm[j] * e + g_var[j] * (in.bn_var[c] - in.var[j] + (1 - 2 * b) * e * e);
    }
    if (T* gp = g.p(kMeanGates)) {
      for (int64_t i = 0; i < K; ++i) gp[i] += g_mean_gates[i] * mean_gates[i] * (1 - mean_gates[i]);
    }
    if (T* gp = g.p(kVarGates)) {
      for (int64_t i = 0; i < K; ++i) gp[i] += g_var_gates[i] * var_gates[i] * (1 - var_gates[i]);
    }
    if (T* gp = g.p(kMeanBatch)) gp[0] += g_mean_batch * mean_batch_gate * (1 - mean_batch_gate);
    if (T* gp = g.p(kVarBatch)) gp[0] += g_var_batch * var_batch_gate * (1 - var_batch_gate);
  }
};

// ---- DN-B / DN-C: BatchNorm with a generated scale and shift ---------------------------------------------

template <typename T>
struct DynamicAffineNorm {
  enum { kWeight, kBias, kW1, kB1, kW2, kB2 };
  const LayerInput<T>& in;
  const bool per_sample;
  const int64_t H, M;  // hidden width; rows of the generator (N per sample, 1 per batch)
  Vec<T> rstd_bn, generator_input, hidden, delta, scale, shift, aux;

  DynamicAffineNorm(const LayerInput<T>& input, const LayerOptions& o)
      : in(input), per_sample(o.flag), H(input.numel[kB1]), M(o.flag ? input.N : 1) {
    const int64_t N = in.N, C = in.C;
    rstd_bn.resize(C), generator_input.resize(M * 2 * C), hidden.resize(M * H), delta.resize(M * 2 * C);
    scale.resize(N * C), shift.resize(N * C);
    for (int64_t c = 0; c < C; ++c) rstd_bn[c] = rsqrt(in.bn_var[c] + in.eps);
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t c = 0; c < C; ++c) {
        T* row = generator_input.data() + m * 2 * C;
        if (per_sample) {  // the sample's standardized mean and std: scale-invariant
          const int64_t j = m * C + c;
          row[c] = (in.mean[j] - in.bn_mean[c]) * rstd_bn[c];
          row[C + c] = std::sqrt(in.var[j] + in.eps) * rstd_bn[c];
        } else {  // the raw batch statistics
          row[c] = in.reference + in.bn_mean[c];
          row[C + c] = std::sqrt(in.bn_var[c] + in.eps);
        }
      }
    }
    linear(M, 2 * C, H, generator_input.data(), in.param[kW1], in.param[kB1], hidden.data());
    for (T& h : hidden) h = std::max(h, T(0));
    linear(M, H, 2 * C, hidden.data(), in.param[kW2], in.param[kB2], delta.data());
    for (T& d : delta) d = std::tanh(d);
    for (int64_t n = 0; n < N; ++n) {
      const T* d = delta.data() + (per_sample ? n : 0) * 2 * C;
      for (int64_t c = 0; c < C; ++c) {
        const int64_t j = n * C + c;
        const T gamma = (in.param[kWeight] ? in.param[kWeight][c] : T(1)) + d[c];
        const T beta = (in.param[kBias] ? in.param[kBias][c] : T(0)) + d[C + c];
        scale[j] = gamma * rstd_bn[c];
        shift[j] = beta + (in.mean[j] - in.bn_mean[c]) * scale[j];
      }
    }
  }

  // Derivation. scale = (gamma + dgamma_gen) r_BN, shift = beta + dbeta_gen + (m - m_BN) scale, so the scale's
  // total gradient is G = g_scale + g_shift (m - m_BN): the generated and the learned gamma get G r_BN, r_BN gets
  // G (gamma + dgamma_gen), m and m_BN get +-g_shift scale. The generator's outputs go through tanh' = 1 - t^2
  // and its two linear layers (ReLU mask between); its input adds terms to the moments it was built from
  // (DN-B: (m - m_BN) r_BN and sqrt(var + eps) r_BN per sample; DN-C: m_BN + R and sqrt(var_BN + eps)); last
  // dvar_BN = -r_BN^3 / 2 dr_BN.
  void backward(const T* g_scale, const T* g_shift, LayerGrads<T>& g) {
    const int64_t N = in.N, C = in.C;
    Vec<T> g_delta(M * 2 * C), g_rstd_bn(C), g_hidden(M * H), g_input(M * 2 * C);
    for (int64_t n = 0; n < N; ++n) {
      const int64_t m = per_sample ? n : 0;
      const T* d = delta.data() + m * 2 * C;
      T* gd = g_delta.data() + m * 2 * C;
      for (int64_t c = 0; c < C; ++c) {
        const int64_t j = n * C + c;
        const T deviation = in.mean[j] - in.bn_mean[c];
        const T g_total_scale = g_scale[j] + g_shift[j] * deviation;
        const T g_gamma = g_total_scale * rstd_bn[c];
        if (T* gw = g.p(kWeight)) gw[c] += g_gamma;
        if (T* gb = g.p(kBias)) gb[c] += g_shift[j];
        gd[c] += g_gamma;
        gd[C + c] += g_shift[j];
        g_rstd_bn[c] += g_total_scale * ((in.param[kWeight] ? in.param[kWeight][c] : T(1)) + d[c]);
        g.mean[j] += g_shift[j] * scale[j];
        g.bn_mean[c] -= g_shift[j] * scale[j];
      }
    }
    for (int64_t i = 0; i < M * 2 * C; ++i) g_delta[i] *= 1 - delta[i] * delta[i];
    linear_backward(M, H, 2 * C, hidden.data(), in.param[kW2], g_delta.data(), g_hidden.data(), g.p(kW2), g.p(kB2));
    for (int64_t i = 0; i < M * H; ++i) {
      if (hidden[i] <= T(0)) g_hidden[i] = 0;
    }
    linear_backward(M, 2 * C, H, generator_input.data(), in.param[kW1], g_hidden.data(), g_input.data(), g.p(kW1),
                    g.p(kB1));
    for (int64_t m = 0; m < M; ++m) {
      const T* gi = g_input.data() + m * 2 * C;
      for (int64_t c = 0; c < C; ++c) {
        if (per_sample) {
          const int64_t j = m * C + c;
          const T std_in = std::sqrt(in.var[j] + in.eps);
          g.mean[j] += gi[c] * rstd_bn[c];
          g.bn_mean[c] -= gi[c] * rstd_bn[c];
          g_rstd_bn[c] += gi[c] * (in.mean[j] - in.bn_mean[c]) + gi[C + c] * std_in;
          g.var[j] += gi[C + c] * rstd_bn[c] * T(0.5) / std_in;
        } else {
          g.bn_mean[c] += gi[c];
          g.bn_var[c] += gi[C + c] * T(0.5) * rstd_bn[c];
        }
      }
    }
    for (int64_t c = 0; c < C; ++c) g.bn_var[c] += T(-0.5) * rstd_bn[c] * rstd_bn[c] * rstd_bn[c] * g_rstd_bn[c];
  }
};

// ---- Associate Normalization -----------------------------------------------------------------------------

template <typename T>
struct AssociateNorm {
  enum { kWeight, kBias, kEncoder, kScaleDecoder, kShiftDecoder };
  const LayerInput<T>& in;
  const int64_t G, size, E;  // groups, channels per group, embedding size
  const bool scale_from_mean;
  Vec<T> group_mean, group_var, key_mean, rstd, scale_embedding, shift_embedding, omega, beta, scale, shift, aux;

  AssociateNorm(const LayerInput<T>& input, const LayerOptions& o)
      : in(input), G(o.groups), size(input.C / o.groups), E(input.numel[kEncoder] / o.groups),
        scale_from_mean(o.flag) {
    const int64_t N = in.N, C = in.C;
    group_mean.resize(N * G), group_var.resize(N * G), rstd.resize(N * G);
    scale_embedding.resize(N * E), shift_embedding.resize(N * E), omega.resize(N * G), beta.resize(N * G);
    scale.resize(N * C), shift.resize(N * C);
    group_moments(N, C, size, in.mean, in.var, group_mean.data(), group_var.data());
    for (int64_t i = 0; i < N * G; ++i) rstd[i] = rsqrt(group_var[i] + in.eps);
    key_mean.resize(N * G);  // the key feature is the raw group mean
    for (int64_t i = 0; i < N * G; ++i) key_mean[i] = in.reference + group_mean[i];
    const T* scale_key = scale_from_mean ? key_mean.data() : group_var.data();
    const T* shift_key = scale_from_mean ? group_var.data() : key_mean.data();
    linear(N, G, E, scale_key, in.param[kEncoder], static_cast<const T*>(nullptr), scale_embedding.data());
    linear(N, G, E, shift_key, in.param[kEncoder], static_cast<const T*>(nullptr), shift_embedding.data());
    for (T& e : scale_embedding) e = std::max(e, T(0));
    for (T& e : shift_embedding) e = std::max(e, T(0));
    linear(N, E, G, scale_embedding.data(), in.param[kScaleDecoder], static_cast<const T*>(nullptr), omega.data());
    linear(N, E, G, shift_embedding.data(), in.param[kShiftDecoder], static_cast<const T*>(nullptr), beta.data());
    for (T& w : omega) w = sigmoid(w);
    for (T& b : beta) b = std::tanh(b);
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        const int64_t j = n * C + c, k = n * G + c / size;
        scale[j] = (omega[k] + in.param[kWeight][c]) * rstd[k];
        shift[j] = beta[k] + in.param[kBias][c] + (in.mean[j] - group_mean[k]) * scale[j];
      }
    }
  }

  // Derivation. scale = (omega + B_omega) r_G, shift = beta + B_beta + (m - m_G) scale with r_G the group's
  // (var_G + eps)^(-1/2): the scale's total gradient G = g_scale + g_shift (m - m_G) gives domega = dB_omega =
  // G r_G and dr_G = G (omega + B_omega); dbeta = dB_beta = g_shift; m and m_G get +-g_shift scale. omega and
  // beta go back through sigmoid' = o (1 - o) and tanh' = 1 - b^2, the decoders, the ReLU masks and the shared
  // encoder to the key features (the group mean and variance), which add to dm_G and dvar_G; then
  // dvar_G -= r_G^3 / 2 dr_G and the group moments go back to the instance moments.
  void backward(const T* g_scale, const T* g_shift, LayerGrads<T>& g) {
    const int64_t N = in.N, C = in.C;
    Vec<T> g_omega(N * G), g_beta(N * G), g_rstd(N * G), g_group_mean(N * G), g_group_var(N * G);
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        const int64_t j = n * C + c, k = n * G + c / size;
        const T g_total_scale = g_scale[j] + g_shift[j] * (in.mean[j] - group_mean[k]);
        const T g_omega_total = g_total_scale * rstd[k];
        if (T* gw = g.p(kWeight)) gw[c] += g_omega_total;
        if (T* gb = g.p(kBias)) gb[c] += g_shift[j];
        g_omega[k] += g_omega_total;
        g_beta[k] += g_shift[j];
        g_rstd[k] += g_total_scale * (omega[k] + in.param[kWeight][c]);
        g.mean[j] += g_shift[j] * scale[j];
        g_group_mean[k] -= g_shift[j] * scale[j];
      }
    }
    for (int64_t i = 0; i < N * G; ++i) {
      g_omega[i] *= omega[i] * (1 - omega[i]);
      g_beta[i] *= 1 - beta[i] * beta[i];
    }
    Vec<T> g_scale_embedding(N * E), g_shift_embedding(N * E);
    linear_backward(N, E, G, scale_embedding.data(), in.param[kScaleDecoder], g_omega.data(),
                    g_scale_embedding.data(), g.p(kScaleDecoder), static_cast<T*>(nullptr));
    linear_backward(N, E, G, shift_embedding.data(), in.param[kShiftDecoder], g_beta.data(),
                    g_shift_embedding.data(), g.p(kShiftDecoder), static_cast<T*>(nullptr));
    for (int64_t i = 0; i < N * E; ++i) {
      if (scale_embedding[i] <= T(0)) g_scale_embedding[i] = 0;
      if (shift_embedding[i] <= T(0)) g_shift_embedding[i] = 0;
    }
    T* g_scale_key = scale_from_mean ? g_group_mean.data() : g_group_var.data();
    T* g_shift_key = scale_from_mean ? g_group_var.data() : g_group_mean.data();
    const T* scale_key = scale_from_mean ? key_mean.data() : group_var.data();
    const T* shift_key = scale_from_mean ? group_var.data() : key_mean.data();
    linear_backward(N, G, E, scale_key, in.param[kEncoder], g_scale_embedding.data(), g_scale_key, g.p(kEncoder),
                    static_cast<T*>(nullptr));
    linear_backward(N, G, E, shift_key, in.param[kEncoder], g_shift_embedding.data(), g_shift_key, g.p(kEncoder),
                    static_cast<T*>(nullptr));
    for (int64_t i = 0; i < N * G; ++i) g_group_var[i] += T(-0.5) * rstd[i] * rstd[i] * rstd[i] * g_rstd[i];
    group_moments_backward(N, C, size, in.mean, group_mean.data(), g_group_mean.data(), g_group_var.data(),
                           g.mean.data(), g.var.data());
  }
};

}  // namespace dynnorm
