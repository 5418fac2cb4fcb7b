// dynnorm's fused CPU operators: for each layer a forward operator (statistics pass, (N, C) math, normalize)
// and a backward operator (gradient sums, the closed-form backward of the math, input gradient). Both are
// functional: the forward returns the output and the statistics buffer (StatsLayout), and never writes the
// running statistics (the caller averages them in, from the returned batch statistics); the backward returns
// the gradients. The schemas are defined in Python (dynnorm/kernels/schemas.py), which also registers their
// fake kernels and autograd; this file implements them for CPU tensors. Loaded by dynnorm.kernels.cpu.
//
// Inputs must be non-empty, contiguous or channels-last float32/float64/bfloat16/float16 CPU tensors
// (the Python side checks this and otherwise runs the reference ops). Parameters are float32 (float64
// for float64 inputs) or the input's dtype; statistics and math run in float32 (float64).
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <array>
#include <memory>
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "layers.h"
#include "passes.h"

namespace dynnorm {
namespace {

using at::Tensor;
using ParamList = std::array<std::optional<Tensor>, kMaxParams>;

// The statistics buffer that a forward returns and its backward reads besides the input and the parameters,
// one 1-D tensor in the accumulation dtype (dynnorm/kernels/layout.py describes the same layout).
struct StatsLayout {
  int64_t N, C;
  int64_t mean() const { return 0; }                  // N * C instance means minus R (index n * C + c)
  int64_t var() const { return N * C; }               // N * C instance biased variances
  int64_t bn_mean() const { return 2 * N * C; }       // C: the BN term's mean minus R (0 without a BN term)
  int64_t bn_var() const { return 2 * N * C + C; }    // C: the BN term's variance (0 without a BN term)
  int64_t reference() const { return 2 * N * C + 2 * C; }  // R
  int64_t size() const { return 2 * N * C + 2 * C + 1; }
};

struct Options {
  const char* name = "";
  bool batch_statistics = false;  // the layer has a BN term
  bool batch_from_input = false;  // ... using the statistics of the batch (else the running ones given)
  bool training = false;
  double eps = 1e-5;
  Tensor running_mean, running_var;  // defined when the BN term uses them
  LayerOptions layer;
};

bool is_channels_last(const Tensor& x) {
  if (x.dim() == 4) return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  if (x.dim() == 5) return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast3d);
  return false;
}

Geometry geometry(const Tensor& x) {
  const int64_t N = x.size(0), C = x.size(1);
  return {N, C, x.numel() / (N * C), is_channels_last(x)};
}

at::ScalarType accumulation_type(const Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// `t` in the accumulation dtype, contiguous (no copy when it already is).
Tensor as_accumulation(const Tensor& t, at::ScalarType acc) {
  return t.scalar_type() == acc ? t.contiguous() : t.to(acc).contiguous();
}

void check_input(const Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), "dynnorm's fused operators run on CPU tensors, got ", x.device());
  TORCH_CHECK(x.dim() >= 2 && x.numel() > 0, "dynnorm's fused operators need a non-empty (N, C, *) input, got ",
              x.sizes());
  TORCH_CHECK(x.is_contiguous() || is_channels_last(x),
              "dynnorm's fused operators need a contiguous or channels-last input");
}

std::array<Tensor, kMaxParams> defined(const ParamList& optional_params) {
  std::array<Tensor, kMaxParams> params;
  for (int i = 0; i < kMaxParams; ++i) {
    if (optional_params[i].has_value() && optional_params[i]->defined()) params[i] = *optional_params[i];
  }
  return params;
}

// Parameters in the accumulation dtype, kept alive while their pointers are used.
template <typename T>
struct ParamViews {
  std::array<Tensor, kMaxParams> tensors;

  ParamViews(const std::array<Tensor, kMaxParams>& params, at::ScalarType acc) {
    for (int i = 0; i < kMaxParams; ++i) {
      if (params[i].defined()) tensors[i] = as_accumulation(params[i], acc);
    }
  }

  LayerInput<T> input(const Geometry& g, const T* stats, bool with_batch, double eps) const {
    const StatsLayout layout{g.N, g.C};
    LayerInput<T> in{g.N,     g.C,     g.L,     stats[layout.reference()], stats + layout.mean(),
                     stats + layout.var(), nullptr, nullptr, static_cast<T>(eps), {}, {}};
    if (with_batch) {
      in.bn_mean = stats + layout.bn_mean();
      in.bn_var = stats + layout.bn_var();
    }
    for (int i = 0; i < kMaxParams; ++i) {
      in.param[i] = tensors[i].defined() ? tensors[i].template const_data_ptr<T>() : nullptr;
      in.numel[i] = tensors[i].defined() ? tensors[i].numel() : 0;
    }
    return in;
  }
};

// The BN term's statistics into bn_mean/bn_var (C each, means minus R): of the batch, or the running ones given.
template <typename T>
void batch_statistics(const Geometry& g, const Options& o, const Tensor& x, T reference, const T* mean, const T* var,
                      T* bn_mean, T* bn_var) {
  if (!o.batch_from_input) {
    const at::ScalarType acc = c10::CppTypeToScalarType<T>::value;
    const Tensor running_mean = as_accumulation(o.running_mean, acc);
    const Tensor running_var = as_accumulation(o.running_var, acc);
    for (int64_t c = 0; c < g.C; ++c) bn_mean[c] = running_mean.const_data_ptr<T>()[c] - reference;
    std::copy_n(running_var.const_data_ptr<T>(), g.C, bn_var);
    return;
  }
  if (o.training) {
    TORCH_CHECK_VALUE(g.N * g.L > 1, "Expected more than 1 value per channel when training, got input size ",
                      x.sizes());
  }
  dynnorm::batch_moments(g.N, g.C, mean, var, bn_mean, bn_var);
}

// The batch statistics for the running averages, (2, C): the mean, and the variance unbiased as nn.BatchNorm stores
// it; zeros when the BN term does not use the statistics of this batch.
template <typename T>
void fill_batch(const Geometry& g, const Options& o, const T* stats, Tensor& batch) {
  T* out = batch.mutable_data_ptr<T>();
  if (!o.batch_from_input) {
    std::fill_n(out, 2 * g.C, T(0));
    return;
  }
  const StatsLayout layout{g.N, g.C};
  const int64_t count = g.N * g.L;
  const T correction = count > 1 ? static_cast<T>(count) / static_cast<T>(count - 1) : T(1);
  for (int64_t c = 0; c < g.C; ++c) {
    out[c] = stats[layout.reference()] + stats[layout.bn_mean() + c];
    out[g.C + c] = stats[layout.bn_var() + c] * correction;
  }
}

struct ForwardResult {
  Tensor y, stats, batch, aux;  // aux: the layer's extra output (may be undefined)
};

template <template <typename> class Layer>
ForwardResult forward(const Tensor& x, const ParamList& optional_params, const Options& o) {
  check_input(x);
  const std::array<Tensor, kMaxParams> params = defined(optional_params);
  const Geometry g = geometry(x);
  const StatsLayout layout{g.N, g.C};
  const at::ScalarType acc = accumulation_type(x);
  Tensor stats = at::empty({layout.size()}, x.options().dtype(acc));
  Tensor batch = at::empty({2, g.C}, x.options().dtype(acc));
  Tensor y = at::empty_like(x);
  Tensor aux;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dynnorm", [&] {
    using T = at::opmath_type<scalar_t>;
    const int64_t NC = g.N * g.C;
    T* base = stats.data_ptr<T>();
    T* mean = base + layout.mean();
    T* var = base + layout.var();
    T& reference = base[layout.reference()];
    Vec<T> correction(NC);
    instance_moments(g, x.const_data_ptr<scalar_t>(), mean, correction.data(), var);
    // R: the average of the instance means' finite first estimates (a non-finite value reaches only the
    // statistics that contain it). estimate - R is exact when both are close (a common offset); the correction
    // is small.
    double total = 0;
    int64_t finite = 0;
    for (int64_t j = 0; j < NC; ++j) {
      if (std::isfinite(mean[j])) total += mean[j], ++finite;
    }
    reference = static_cast<T>(finite > 0 ? total / finite : 0.0);
    for (int64_t j = 0; j < NC; ++j) mean[j] = (mean[j] - reference) + correction[j];
    if (o.batch_statistics) {
      batch_statistics<T>(g, o, x, reference, mean, var, base + layout.bn_mean(), base + layout.bn_var());
    } else {
      std::fill_n(base + layout.bn_mean(), 2 * g.C, T(0));
    }
    fill_batch<T>(g, o, base, batch);
    const ParamViews<T> views(params, acc);
    const LayerInput<T> in = views.input(g, base, o.batch_statistics, o.eps);
    const Layer<T> layer(in, o.layer);
    normalize(g, x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), reference, mean, layer.scale.data(),
              layer.shift.data());
    if (!layer.aux.empty()) {
      aux = at::empty({static_cast<int64_t>(layer.aux.size())}, x.options().dtype(acc));
      std::copy(layer.aux.begin(), layer.aux.end(), aux.mutable_data_ptr<T>());
    }
  });
  return {y, stats, batch, aux};
}

// Backward: {dx, then one gradient per parameter slot 0..count-1}; an empty tensor where there is none (an absent
// parameter, or dx when input_grad is false).
template <template <typename> class Layer>
std::vector<Tensor> backward(const Tensor& grad_output, const Tensor& x, const Tensor& stats,
                             const ParamList& optional_params, int count, const Options& o, bool input_grad) {
  check_input(x);
  const std::array<Tensor, kMaxParams> params = defined(optional_params);
  const Geometry g = geometry(x);
  const at::ScalarType acc = accumulation_type(x);
  const Tensor dy = grad_output.contiguous(g.channels_last ? x.suggest_memory_format() : at::MemoryFormat::Contiguous);
  const Tensor saved = as_accumulation(stats, acc);
  std::vector<Tensor> grads(count + 1);
  grads[0] = input_grad ? at::empty_like(x) : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dynnorm", [&] {
    using T = at::opmath_type<scalar_t>;
    const int64_t NC = g.N * g.C;
    const ParamViews<T> views(params, acc);
    const LayerInput<T> in = views.input(g, saved.const_data_ptr<T>(), o.batch_statistics, o.eps);
    Layer<T> layer(in, o.layer);
    Vec<T> sum_dy(NC), sum_dy_xc(NC);
    grad_sums(g, dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), in.reference, in.mean, sum_dy.data(),
              sum_dy_xc.data());
    LayerGrads<T> lg;
    lg.mean.assign(NC, T(0)), lg.var.assign(NC, T(0)), lg.bn_mean.assign(g.C, T(0)), lg.bn_var.assign(g.C, T(0));
    for (int i = 0; i < count; ++i) {
      if (params[i].defined()) lg.param[i].assign(params[i].numel(), T(0));
    }
    layer.backward(sum_dy_xc.data(), sum_dy.data(), lg);
    for (int i = 0; i < count; ++i) {
      if (!params[i].defined()) {
        grads[i + 1] = at::empty({0}, x.options().dtype(acc));
        continue;
      }
      Tensor grad = at::empty(params[i].sizes(), params[i].options());
      if (grad.scalar_type() == acc) {
        std::copy(lg.param[i].begin(), lg.param[i].end(), grad.mutable_data_ptr<T>());
      } else {  // e.g. bf16 parameters
        grad.copy_(at::from_blob(lg.param[i].data(), params[i].sizes(), at::TensorOptions().dtype(acc)));
      }
      grads[i + 1] = grad;
    }
    if (!input_grad) return;
    if (o.batch_from_input) {
      batch_moments_backward(g.N, g.C, in.mean, in.bn_mean, lg.bn_mean.data(), lg.bn_var.data(), lg.mean.data(),
                             lg.var.data());
    }
    // y = ((x - R) - m) * scale + shift, m = mean(x) - R, v = mean(((x - R) - m)^2) per (n, c):
    // dx = dy * scale + dL/dm * dm/dx + dL/dv * dv/dx with dm/dx = 1/L and dv/dx = 2 ((x - R) - m) / L, where
    // dL/dm gathers the math's gradient of m and the centring's -scale * sum(dy).
    Vec<T> a(NC), b(NC);
    for (int64_t j = 0; j < NC; ++j) {
      a[j] = 2 * lg.var[j] / g.L;
      b[j] = (lg.mean[j] - layer.scale[j] * sum_dy[j]) / g.L;
    }
    dynnorm::input_grad(g, dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), grads[0].mutable_data_ptr<scalar_t>(),
               in.reference, in.mean, layer.scale.data(), a.data(), b.data());
  });
  return grads;
}

Options batch_options(const char* name, bool batch_statistics, const std::optional<Tensor>& running_mean,
                      const std::optional<Tensor>& running_var, bool training, double eps) {
  Options o;
  o.name = name;
  o.batch_statistics = batch_statistics;
  o.training = training;
  o.eps = eps;
  if (batch_statistics && running_mean.has_value() && running_mean->defined()) {
    TORCH_CHECK_VALUE(running_var.has_value() && running_var->defined(),
                      name, ": running_mean is given but running_var is not");
    o.running_mean = *running_mean;
    o.running_var = *running_var;
  }
  o.batch_from_input = batch_statistics && !o.running_mean.defined();
  return o;
}

Options backward_options(const char* name, bool batch_statistics, bool batch_from_input, double eps) {
  Options o;
  o.name = name;
  o.batch_statistics = batch_statistics;
  o.batch_from_input = batch_statistics && batch_from_input;
  o.eps = eps;
  return o;
}

// ---- Switchable Normalization -----------------------------------------------------------------------------

void check_mixtures(const char* name, const Tensor& mean_mixture, const Tensor& var_mixture) {
  TORCH_CHECK_VALUE(mean_mixture.numel() == 2 || mean_mixture.numel() == 3, name,
                    ": mixtures have 2 (IN, LN) or 3 (IN, LN, BN) entries, got ", mean_mixture.numel());
  TORCH_CHECK_VALUE(var_mixture.numel() == mean_mixture.numel(), name, ": mean and variance mixtures differ");
}

std::tuple<Tensor, Tensor, Tensor> switch_norm(const Tensor& x, const std::optional<Tensor>& weight,
                                       const std::optional<Tensor>& bias, const Tensor& mean_mixture,
                                       const Tensor& var_mixture, const std::optional<Tensor>& running_mean,
                                       const std::optional<Tensor>& running_var, bool training, double eps,
                                       bool mixture_logits) {
  check_mixtures("switch_norm", mean_mixture, var_mixture);
  Options o = batch_options("SwitchNorm", mean_mixture.numel() == 3, running_mean, running_var, training, eps);
  o.layer.mixture = mixture_logits ? Mixture::kSoftmax : Mixture::kWeights;
  const ForwardResult r = forward<SwitchNorm>(x, {weight, bias, mean_mixture, var_mixture}, o);
  return {r.y, r.stats, r.batch};
}

std::vector<Tensor> switch_norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& stats,
                                         const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
                                         const Tensor& mean_mixture, const Tensor& var_mixture, bool batch_from_input,
                                         double eps, bool mixture_logits, bool input_grad) {
  check_mixtures("switch_norm_backward", mean_mixture, var_mixture);
  Options o = backward_options("SwitchNorm", mean_mixture.numel() == 3, batch_from_input, eps);
  o.layer.mixture = mixture_logits ? Mixture::kSoftmax : Mixture::kWeights;
  return backward<SwitchNorm>(grad_y, x, stats, {weight, bias, mean_mixture, var_mixture}, 4, o, input_grad);
}

// ---- Sparse Switchable Normalization ------------------------------------------------------------------------

// SSN's freezing state (fixed flags and selections) after a call: a mixture whose SparsestMax is one-hot in a
// freezing call becomes fixed on its argmax. Non-finite logits never freeze.
template <typename T>
void freeze_state(const Tensor& logits, double radius, bool& fixed, int64_t& selected) {
  if (fixed) return;
  const Tensor values = logits.detach().to(c10::CppTypeToScalarType<T>::value).contiguous();
  const T* v = values.const_data_ptr<T>();
  for (int64_t k = 0; k < values.numel(); ++k) {
    if (!std::isfinite(v[k])) return;
  }
  const SparsestMax<T> weights(values.numel(), v, static_cast<T>(radius));
  const auto top = std::max_element(weights.out.begin(), weights.out.end());
  if (*top < 1 - SparsestMax<T>::kOneHotTolerance) return;
  fixed = true;
  selected = top - weights.out.begin();
}

struct SparseState {
  std::array<bool, 2> fixed;
  std::array<int64_t, 2> selected;
};

SparseState sparse_state(const Tensor& state) {
  const Tensor s = state.to(at::kLong).contiguous();
  const int64_t* v = s.const_data_ptr<int64_t>();
  return {{v[0] != 0, v[1] != 0}, {v[2], v[3]}};
}

void set_sparse_options(LayerOptions& layer, double radius, const SparseState& s) {
  layer.mixture = Mixture::kSparsestMax;
  layer.radius = radius;
  layer.frozen = s.fixed;
  layer.selected = s.selected;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> sparse_switch_norm(
    const Tensor& x, const std::optional<Tensor>& weight, const std::optional<Tensor>& bias, const Tensor& mean_weight,
    const Tensor& var_weight, const Tensor& radius, const Tensor& mean_fixed, const Tensor& var_fixed,
    const Tensor& mean_selected, const Tensor& var_selected, const std::optional<Tensor>& running_mean,
    const std::optional<Tensor>& running_var, bool training, double eps, bool freeze) {
  check_mixtures("sparse_switch_norm", mean_weight, var_weight);
  Options o = batch_options("SparseSwitchNorm", mean_weight.numel() == 3, running_mean, running_var, training, eps);
  const double rad = radius.item<double>();
  SparseState s{{mean_fixed.item<bool>(), var_fixed.item<bool>()},
                {mean_selected.item<int64_t>(), var_selected.item<int64_t>()}};
  if (freeze) {
    AT_DISPATCH_FLOATING_TYPES(accumulation_type(mean_weight), "dynnorm", [&] {
      freeze_state<scalar_t>(mean_weight, rad, s.fixed[0], s.selected[0]);
      freeze_state<scalar_t>(var_weight, rad, s.fixed[1], s.selected[1]);
    });
  }
  set_sparse_options(o.layer, rad, s);
  const ForwardResult r = forward<SwitchNorm>(x, {weight, bias, mean_weight, var_weight}, o);
  const Tensor state = at::tensor({int64_t(s.fixed[0]), int64_t(s.fixed[1]), s.selected[0], s.selected[1]},
                                  at::TensorOptions().dtype(at::kLong));
  return {r.y, r.stats, r.batch, r.aux.view({2, mean_weight.numel()}), state};
}

std::vector<Tensor> sparse_switch_norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& stats,
                                                const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
                                                const Tensor& mean_weight, const Tensor& var_weight,
                                                const Tensor& radius, const Tensor& mixtures, const Tensor& state,
                                                bool batch_from_input, double eps, bool input_grad) {
  check_mixtures("sparse_switch_norm_backward", mean_weight, var_weight);
  Options o = backward_options("SparseSwitchNorm", mean_weight.numel() == 3, batch_from_input, eps);
  set_sparse_options(o.layer, radius.item<double>(), sparse_state(state));
  return backward<SwitchNorm>(grad_y, x, stats, {weight, bias, mean_weight, var_weight}, 4, o, input_grad);
}

// ---- Exemplar, Dynamic, DN-B/DN-C, Associate --------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor, Tensor> exemplar_norm(const Tensor& x, const std::optional<Tensor>& weight,
                                                 const std::optional<Tensor>& bias, const Tensor& ratio_w1,
                                                 const Tensor& ratio_b1, const Tensor& ratio_w2,
                                                 const Tensor& ratio_b2, const std::optional<Tensor>& running_mean,
                                                 const std::optional<Tensor>& running_var, bool training,
                                                 double eps) {
  const Options o = batch_options("ExemplarNorm", true, running_mean, running_var, training, eps);
  const ForwardResult r = forward<ExemplarNorm>(x, {weight, bias, ratio_w1, ratio_b1, ratio_w2, ratio_b2}, o);
  return {r.y, r.stats, r.batch, r.aux};
}

std::vector<Tensor> exemplar_norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& stats,
                                           const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
                                           const Tensor& ratio_w1, const Tensor& ratio_b1, const Tensor& ratio_w2,
                                           const Tensor& ratio_b2, bool batch_from_input, double eps,
                                           bool input_grad) {
  const Options o = backward_options("ExemplarNorm", true, batch_from_input, eps);
  return backward<ExemplarNorm>(grad_y, x, stats, {weight, bias, ratio_w1, ratio_b1, ratio_w2, ratio_b2}, 6, o,
                                input_grad);
}

void set_factors(LayerOptions& layer, at::IntArrayRef factors, int64_t channels, int64_t gates) {
  int64_t product = 1;
  for (int64_t f : factors) product *= f;
  TORCH_CHECK_VALUE(product == channels && static_cast<int64_t>(factors.size()) == gates, "dynamic_norm: the factors ",
                    factors, " must multiply to the channel count ", channels, " and number the gate logits ", gates);
  layer.factors = factors.vec();
}

std::tuple<Tensor, Tensor, Tensor> dynamic_norm(const Tensor& x, const std::optional<Tensor>& weight,
                                        const std::optional<Tensor>& bias, const Tensor& mean_gate_logits,
                                        const Tensor& var_gate_logits, const Tensor& mean_batch_logit,
                                        const Tensor& var_batch_logit, at::IntArrayRef factors,
                                        const std::optional<Tensor>& running_mean,
                                        const std::optional<Tensor>& running_var, bool training, double eps) {
  Options o = batch_options("DynamicNorm", true, running_mean, running_var, training, eps);
  set_factors(o.layer, factors, x.size(1), mean_gate_logits.numel());
  const ForwardResult r = forward<DynamicNorm>(
      x, {weight, bias, mean_gate_logits, var_gate_logits, mean_batch_logit, var_batch_logit}, o);
  return {r.y, r.stats, r.batch};
}

std::vector<Tensor> dynamic_norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& stats,
                                          const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
                                          const Tensor& mean_gate_logits, const Tensor& var_gate_logits,
                                          const Tensor& mean_batch_logit, const Tensor& var_batch_logit,
                                          at::IntArrayRef factors, bool batch_from_input, double eps,
                                          bool input_grad) {
  Options o = backward_options("DynamicNorm", true, batch_from_input, eps);
  set_factors(o.layer, factors, x.size(1), mean_gate_logits.numel());
  return backward<DynamicNorm>(grad_y, x, stats,
                               {weight, bias, mean_gate_logits, var_gate_logits, mean_batch_logit, var_batch_logit}, 6,
                               o, input_grad);
}

std::tuple<Tensor, Tensor, Tensor> dynamic_affine_norm(const Tensor& x, const std::optional<Tensor>& weight,
                                               const std::optional<Tensor>& bias, const Tensor& sc_w1,
                                               const Tensor& sc_b1, const Tensor& sc_w2, const Tensor& sc_b2,
                                               const std::optional<Tensor>& running_mean,
                                               const std::optional<Tensor>& running_var, bool training, double eps,
                                               bool per_sample) {
  Options o = batch_options("DynamicAffineNorm", true, running_mean, running_var, training, eps);
  o.layer.flag = per_sample;
  const ForwardResult r = forward<DynamicAffineNorm>(x, {weight, bias, sc_w1, sc_b1, sc_w2, sc_b2}, o);
  return {r.y, r.stats, r.batch};
}

std::vector<Tensor> dynamic_affine_norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& stats,
                                                 const std::optional<Tensor>& weight,
                                                 const std::optional<Tensor>& bias, const Tensor& sc_w1,
                                                 const Tensor& sc_b1, const Tensor& sc_w2, const Tensor& sc_b2,
                                                 bool batch_from_input, double eps, bool per_sample, bool input_grad) {
  Options o = backward_options("DynamicAffineNorm", true, batch_from_input, eps);
  o.layer.flag = per_sample;
  return backward<DynamicAffineNorm>(grad_y, x, stats, {weight, bias, sc_w1, sc_b1, sc_w2, sc_b2}, 6, o, input_grad);
}

void set_groups(LayerOptions& layer, int64_t num_groups, int64_t channels, bool scale_from_mean) {
  TORCH_CHECK_VALUE(num_groups > 0 && channels % num_groups == 0, "associate_norm: ", num_groups,
                    " groups do not divide ", channels, " channels");
  layer.groups = num_groups;
  layer.flag = scale_from_mean;
}

std::tuple<Tensor, Tensor, Tensor> associate_norm(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                          const Tensor& encoder_weight, const Tensor& scale_decoder_weight,
                                          const Tensor& shift_decoder_weight, int64_t num_groups, double eps,
                                          bool scale_from_mean) {
  Options o = batch_options("AssociateNorm", false, std::nullopt, std::nullopt, false, eps);
  set_groups(o.layer, num_groups, x.size(1), scale_from_mean);
  const ForwardResult r = forward<AssociateNorm>(
      x, {weight, bias, encoder_weight, scale_decoder_weight, shift_decoder_weight, std::nullopt}, o);
  return {r.y, r.stats, r.batch};
}

std::vector<Tensor> associate_norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& stats,
                                            const Tensor& weight, const Tensor& bias, const Tensor& encoder_weight,
                                            const Tensor& scale_decoder_weight, const Tensor& shift_decoder_weight,
                                            int64_t num_groups, double eps, bool scale_from_mean, bool input_grad) {
  Options o = backward_options("AssociateNorm", false, false, eps);
  set_groups(o.layer, num_groups, x.size(1), scale_from_mean);
  return backward<AssociateNorm>(grad_y, x, stats,
                                 {weight, bias, encoder_weight, scale_decoder_weight, shift_decoder_weight, std::nullopt},
                                 5, o, input_grad);
}

}  // namespace
}  // namespace dynnorm

namespace dynnorm {

// Registers the CPU implementations of the operators that dynnorm/kernels/ops.py defined before importing this
// module. Called from the module's init (not from static initializers) so that a build older than the Python
// schemas fails the import with an ImportError, which dynnorm.kernels.cpu turns into the reference ops.
void register_cpu_kernels(torch::Library& m) {
  m.impl("switch_norm", &switch_norm);
  m.impl("switch_norm_backward", &switch_norm_backward);
  m.impl("sparse_switch_norm", &sparse_switch_norm);
  m.impl("sparse_switch_norm_backward", &sparse_switch_norm_backward);
  m.impl("exemplar_norm", &exemplar_norm);
  m.impl("exemplar_norm_backward", &exemplar_norm_backward);
  m.impl("dynamic_norm", &dynamic_norm);
  m.impl("dynamic_norm_backward", &dynamic_norm_backward);
  m.impl("dynamic_affine_norm", &dynamic_affine_norm);
  m.impl("dynamic_affine_norm_backward", &dynamic_affine_norm_backward);
  m.impl("associate_norm", &associate_norm);
  m.impl("associate_norm_backward", &associate_norm_backward);
}

void register_autograd_kernels(torch::Library& m);  // autograd.cpp

}  // namespace dynnorm

// `import dynnorm._C` registers the implementations above and the autograd of autograd.cpp.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  static std::unique_ptr<torch::Library> cpu, autograd;
  try {
    if (!cpu) {
      cpu = std::make_unique<torch::Library>(torch::Library::IMPL, "dynnorm", c10::DispatchKey::CPU, __FILE__,
                                             __LINE__);
      dynnorm::register_cpu_kernels(*cpu);
      autograd = std::make_unique<torch::Library>(torch::Library::IMPL, "dynnorm", c10::DispatchKey::Autograd,
                                                  __FILE__, __LINE__);
      dynnorm::register_autograd_kernels(*autograd);
    }
  } catch (const std::exception& error) {
    cpu.reset();
    autograd.reset();
    PyErr_Format(PyExc_ImportError,
                 "dynnorm._C does not match this version of dynnorm (rebuild it: pip install --no-build-isolation "
                 "-e .): %s", error.what());
    return nullptr;
  }
  return PyModule_Create(&module);
}
