// dynnorm's fused CPU operators: one call per layer forward (statistics pass, (N, C) math, normalize) and
// one per backward (gradient sums, (N, C) math, input gradient), registered with torch.library as
// torch.ops.dynnorm.<layer> with their autograd. Loaded by dynnorm.kernels.cpu on first use.
//
// Inputs must be non-empty, contiguous or channels-last float32/float64/bfloat16/float16 CPU tensors
// (the Python side checks this and otherwise runs the reference ops). Parameters are float32 (float64
// for float64 inputs) or the input's dtype; statistics and math run in float32 (float64).
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>

#include "layers.h"
#include "passes.h"

namespace dynnorm {
namespace {

using at::Tensor;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

using ParamList = std::array<std::optional<Tensor>, kMaxParams>;

struct Options {
  const char* name = "";
  bool batch_statistics = false;  // the layer has a BN term
  bool training = false;
  std::optional<double> momentum;
  double eps = 1e-5;
  bool batch_from_input = false;  // the BN term uses the statistics of the batch (else the running ones)
  std::array<bool, kMaxParams> constant{};  // parameters that get no gradient (SSN: frozen mixtures)
  Tensor running_mean, running_var, num_batches_tracked;  // undefined when not tracked
  LayerOptions layer;
};

bool is_channels_last(const Tensor& x) {
  if (x.dim() == 4) return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  if (x.dim() == 5) return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast3d);
  return false;
}

Geometry geometry(const Tensor& x) {
  const int64_t N = x.size(0), C = x.size(1);
  return {N, C, N * C == 0 ? 0 : x.numel() / (N * C), is_channels_last(x)};
}

at::ScalarType accumulation_type(const Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// `t` in the accumulation dtype, contiguous (no copy when it already is).
Tensor as_accumulation(const Tensor& t, at::ScalarType acc) {
  return t.scalar_type() == acc ? t.contiguous() : t.to(acc).contiguous();
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

  // stats: [m (N*C), var (N*C), bn_mean (C), bn_var (C), R (1)] (see `forward`).
  LayerInput<T> input(const Geometry& g, const T* stats, bool with_batch, double eps) const {
    const int64_t NC = g.N * g.C;
    const T reference = stats[2 * NC + 2 * g.C];
    LayerInput<T> in{g.N, g.C, g.L, reference, stats, stats + NC, nullptr, nullptr, static_cast<T>(eps), {}, {}};
    if (with_batch) {
      in.bn_mean = stats + 2 * NC;
      in.bn_var = stats + 2 * NC + g.C;
    }
    for (int i = 0; i < kMaxParams; ++i) {
      in.param[i] = tensors[i].defined() ? tensors[i].template const_data_ptr<T>() : nullptr;
      in.numel[i] = tensors[i].defined() ? tensors[i].numel() : 0;
    }
    return in;
  }
};

void bump_version(const Tensor& t) { t.unsafeGetTensorImpl()->bump_version(); }

// The batch statistics the BN term uses, into bn_mean/bn_var (C each): of the batch (training, or no running
// statistics), updating the running statistics in training; else the running statistics.
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
  const int64_t count = g.N * g.L;
  if (o.training) {
    TORCH_CHECK_VALUE(count > 1, "Expected more than 1 value per channel when training, got input size ", x.sizes());
  }
  dynnorm::batch_moments(g.N, g.C, mean, var, bn_mean, bn_var);
  if (!(o.training && o.running_mean.defined())) return;
  double factor = o.momentum.value_or(0.0);
  if (o.num_batches_tracked.defined()) {
    int64_t& tracked = *o.num_batches_tracked.data_ptr<int64_t>();
    tracked += 1;
    bump_version(o.num_batches_tracked);
    if (!o.momentum.has_value()) factor = 1.0 / static_cast<double>(tracked);
  }
  const T f = static_cast<T>(factor);
  const T correction = static_cast<T>(count) / static_cast<T>(count - 1);
  if (o.running_mean.scalar_type() == c10::CppTypeToScalarType<T>::value && o.running_mean.is_contiguous() &&
      o.running_var.is_contiguous()) {
    T* running_mean = o.running_mean.data_ptr<T>();
    T* running_var = o.running_var.data_ptr<T>();
    for (int64_t c = 0; c < g.C; ++c) {
      running_mean[c] += f * ((reference - running_mean[c]) + bn_mean[c]);
      running_var[c] += f * (bn_var[c] * correction - running_var[c]);
    }
  } else {  // buffers in another dtype (e.g. a bf16 model): let ATen convert
    const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
    const Tensor batch_mean = at::from_blob(bn_mean, {g.C}, options) + reference;
    const Tensor batch_var = at::from_blob(bn_var, {g.C}, options) * correction;
    o.running_mean.lerp_(batch_mean.to(o.running_mean.scalar_type()), factor);
    o.running_var.lerp_(batch_var.to(o.running_var.scalar_type()), factor);
  }
  bump_version(o.running_mean);
  bump_version(o.running_var);
}

// Forward: returns (y, stats, aux); stats = [m (N*C), var (N*C), bn_mean (C), bn_var (C), R (1)] in the
// accumulation dtype, what backward needs besides the input and the parameters: R is the average of the
// instance means' first estimates, m the instance means minus R, bn_mean the BN term's mean minus R.
template <template <typename> class Layer>
std::tuple<Tensor, Tensor, Tensor> forward(const Tensor& x, const std::array<Tensor, kMaxParams>& params,
                                           const Options& o) {
  const Geometry g = geometry(x);
  const at::ScalarType acc = accumulation_type(x);
  Tensor stats = at::empty({2 * g.N * g.C + 2 * g.C + 1}, x.options().dtype(acc));
  Tensor y = at::empty_like(x);
  Tensor aux;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dynnorm", [&] {
    using T = at::opmath_type<scalar_t>;
    const int64_t NC = g.N * g.C;
    T* mean = stats.data_ptr<T>();
    T* var = mean + NC;
    T& reference = mean[2 * NC + 2 * g.C];
    Vec<T> correction(NC);
    instance_moments(g, x.const_data_ptr<scalar_t>(), mean, correction.data(), var);
    double total = 0;
    for (int64_t j = 0; j < NC; ++j) total += mean[j];
    reference = static_cast<T>(total / NC);
    // estimate - R is exact when both are close (a common offset); the correction is small
    for (int64_t j = 0; j < NC; ++j) mean[j] = (mean[j] - reference) + correction[j];
    if (o.batch_statistics) batch_statistics<T>(g, o, x, reference, mean, var, var + NC, var + NC + g.C);
    const ParamViews<T> views(params, acc);
    const LayerInput<T> in = views.input(g, mean, o.batch_statistics, o.eps);
    const Layer<T> layer(in, o.layer);
    normalize(g, x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), reference, mean, layer.scale.data(),
              layer.shift.data());
    if (!layer.aux.empty()) {
      aux = at::empty({static_cast<int64_t>(layer.aux.size())}, x.options().dtype(acc));
      std::copy(layer.aux.begin(), layer.aux.end(), aux.mutable_data_ptr<T>());
    }
  });
  return {y, stats, aux};
}

// Backward: gradients of (x, params...), undefined where not needed.
template <template <typename> class Layer>
variable_list backward(const Tensor& grad_output, const Tensor& x, const Tensor& stats,
                       const std::array<Tensor, kMaxParams>& params, const Options& o,
                       const std::array<bool, kMaxParams + 1>& needed) {
  const Geometry g = geometry(x);
  const at::ScalarType acc = accumulation_type(x);
  const Tensor dy = grad_output.contiguous(g.channels_last ? x.suggest_memory_format() : at::MemoryFormat::Contiguous);
  variable_list grads(kMaxParams + 1);
  if (needed[0]) grads[0] = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dynnorm", [&] {
    using T = at::opmath_type<scalar_t>;
    const int64_t NC = g.N * g.C;
    const T* mean = stats.const_data_ptr<T>();
    const ParamViews<T> views(params, acc);
    const LayerInput<T> in = views.input(g, mean, o.batch_statistics, o.eps);
    Layer<T> layer(in, o.layer);
    Vec<T> sum_dy(NC), sum_dy_xc(NC);
    grad_sums(g, dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), in.reference, mean, sum_dy.data(),
              sum_dy_xc.data());
    LayerGrads<T> lg;
    lg.mean.assign(NC, T(0)), lg.var.assign(NC, T(0)), lg.bn_mean.assign(g.C, T(0)), lg.bn_var.assign(g.C, T(0));
    for (int i = 0; i < kMaxParams; ++i) {
      if (needed[i + 1] && params[i].defined()) lg.param[i].assign(params[i].numel(), T(0));
    }
    layer.backward(sum_dy_xc.data(), sum_dy.data(), lg);
    for (int i = 0; i < kMaxParams; ++i) {
      if (lg.param[i].empty()) continue;
      const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
      Tensor grad = at::empty(params[i].sizes(), params[i].options());
      if (grad.scalar_type() == c10::CppTypeToScalarType<T>::value) {
        std::copy(lg.param[i].begin(), lg.param[i].end(), grad.mutable_data_ptr<T>());
      } else {
        grad.copy_(at::from_blob(lg.param[i].data(), params[i].sizes(), options));
      }
      grads[i + 1] = grad;
    }
    if (!needed[0]) return;
    if (o.batch_from_input) {
      batch_moments_backward(g.N, g.C, mean, in.bn_mean, lg.bn_mean.data(), lg.bn_var.data(), lg.mean.data(),
                             lg.var.data());
    }
    // y = ((x - R) - m) * scale + shift: the centre's gradient, then dx = dy * scale + ((x - R) - m) * a + b.
    Vec<T> a(NC), b(NC);
    for (int64_t j = 0; j < NC; ++j) {
      const T g_mean = lg.mean[j] - layer.scale[j] * sum_dy[j];
      a[j] = 2 * lg.var[j] / g.L;
      b[j] = g_mean / g.L;
    }
    input_grad(g, dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), grads[0].mutable_data_ptr<scalar_t>(),
               in.reference, mean, layer.scale.data(), a.data(), b.data());
  });
  return grads;
}

template <template <typename> class Layer>
struct LayerBackward : public torch::autograd::Node {
  SavedVariable input, stats;
  std::array<SavedVariable, kMaxParams> params;
  Options options;

  std::string name() const override { return std::string("dynnorm::") + options.name + "Backward"; }

  variable_list apply(variable_list&& grad_outputs) override {
    std::array<bool, kMaxParams + 1> needed{};
    for (int i = 0; i <= kMaxParams; ++i) needed[i] = should_compute_output(i) && (i == 0 || !options.constant[i - 1]);
    TORCH_CHECK(!at::GradMode::is_enabled(), "dynnorm: the fused CPU operator of ", options.name,
                " has no double backward (create_graph=True); run this computation under "
                "dynnorm.fast_path(False), whose reference ops are differentiable to any order");
    const Tensor& grad_output = grad_outputs[0];
    if (!grad_output.defined()) return variable_list(kMaxParams + 1);
    Tensor x;
    std::array<Tensor, kMaxParams> saved_params;
    try {
      x = input.unpack();
      for (int i = 0; i < kMaxParams; ++i) saved_params[i] = params[i].unpack();
    } catch (const c10::Error& error) {
      TORCH_CHECK(false, "dynnorm: a tensor that the ", options.name,
                  " layer saved for backward (its input or a parameter) was modified in place between the forward "
                  "and the backward pass, so its gradient cannot be computed. Clone the tensor before modifying "
                  "it in place (e.g. use an out-of-place op on the layer's input). Details: ",
                  error.what_without_backtrace());
    }
    return backward<Layer>(grad_output, x, stats.unpack(), saved_params, options, needed);
  }

  void release_variables() override {
    input.reset_data();
    stats.reset_data();
    for (SavedVariable& p : params) p.reset_data();
  }
};

// Runs the layer and records its backward when anything needs a gradient.
template <template <typename> class Layer>
std::tuple<Tensor, Tensor> run(const Tensor& x, const ParamList& optional_params, Options o) {
  TORCH_CHECK(x.device().is_cpu(), "dynnorm's fused operators run on CPU tensors, got ", x.device());
  TORCH_CHECK(x.dim() >= 2 && x.numel() > 0, "dynnorm's fused operators need a non-empty (N, C, *) input, got ",
              x.sizes());
  TORCH_CHECK(x.is_contiguous() || is_channels_last(x),
              "dynnorm's fused operators need a contiguous or channels-last input");
  std::array<Tensor, kMaxParams> params;
  bool requires_grad = x.requires_grad();
  for (int i = 0; i < kMaxParams; ++i) {
    if (optional_params[i].has_value() && optional_params[i]->defined()) {
      params[i] = *optional_params[i];
      requires_grad = requires_grad || params[i].requires_grad();
    }
  }
  requires_grad = requires_grad && at::GradMode::is_enabled();
  Tensor y, stats, aux;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(y, stats, aux) = forward<Layer>(x, params, o);
  }
  if (requires_grad) {
    auto node = c10::make_intrusive<LayerBackward<Layer>>();
    node->set_next_edges(torch::autograd::collect_next_edges(x, params[0], params[1], params[2], params[3], params[4],
                                                             params[5]));
    node->input = SavedVariable(x, false);
    node->stats = SavedVariable(stats, false);
    for (int i = 0; i < kMaxParams; ++i) {
      if (params[i].defined()) node->params[i] = SavedVariable(params[i], false);
    }
    o.running_mean = o.running_var = o.num_batches_tracked = Tensor();  // backward reads the saved statistics
    node->options = std::move(o);
    torch::autograd::set_history(y, node);
  }
  return {y, aux};
}

Options batch_options(const char* name, bool batch_statistics, const std::optional<Tensor>& running_mean,
                      const std::optional<Tensor>& running_var, const std::optional<Tensor>& num_batches_tracked,
                      bool training, std::optional<double> momentum, double eps) {
  Options o;
  o.name = name;
  o.batch_statistics = batch_statistics;
  o.training = training;
  o.momentum = momentum;
  o.eps = eps;
  if (batch_statistics && running_mean.has_value() && running_mean->defined()) {
    o.running_mean = *running_mean;
    o.running_var = running_var.value();
    if (num_batches_tracked.has_value()) o.num_batches_tracked = *num_batches_tracked;
  }
  o.batch_from_input = batch_statistics && (training || !o.running_mean.defined());
  return o;
}

Tensor switch_norm(const Tensor& x, const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
                   const Tensor& mean_mixture, const Tensor& var_mixture, const std::optional<Tensor>& running_mean,
                   const std::optional<Tensor>& running_var, const std::optional<Tensor>& num_batches_tracked,
                   bool training, std::optional<double> momentum, double eps, bool mixture_logits) {
  TORCH_CHECK_VALUE(mean_mixture.numel() == 2 || mean_mixture.numel() == 3,
                    "switch_norm: mixtures have 2 (IN, LN) or 3 (IN, LN, BN) entries, got ", mean_mixture.numel());
  TORCH_CHECK_VALUE(var_mixture.numel() == mean_mixture.numel(), "switch_norm: mean and variance mixtures differ");
  Options o = batch_options("SwitchNorm", mean_mixture.numel() == 3, running_mean, running_var, num_batches_tracked,
                            training, momentum, eps);
  o.layer.mixture = mixture_logits ? Mixture::kSoftmax : Mixture::kWeights;
  return std::get<0>(run<SwitchNorm>(x, {weight, bias, mean_mixture, var_mixture, std::nullopt, std::nullopt}, o));
}

// SSN's freezing step: a mixture whose SparsestMax is one-hot becomes one-hot logits and its flag is set.
template <typename T>
void freeze_if_one_hot(const Tensor& logits, const Tensor& fixed, double radius) {
  if (fixed.item<bool>()) return;
  const Tensor values = logits.detach().to(c10::CppTypeToScalarType<T>::value).contiguous();
  const SparsestMax<T> weights(values.numel(), values.const_data_ptr<T>(), static_cast<T>(radius));
  const auto top = std::max_element(weights.out.begin(), weights.out.end());
  if (*top < 1 - SparsestMax<T>::kOneHotTolerance) return;
  at::NoGradGuard no_grad;
  logits.zero_();
  logits.select(0, top - weights.out.begin()).fill_(1);
  fixed.fill_(true);
}

Tensor sparse_switch_norm(const Tensor& x, const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
                          const Tensor& mean_weight, const Tensor& var_weight, const Tensor& radius,
                          const Tensor& mean_fixed, const Tensor& var_fixed, const std::optional<Tensor>& running_mean,
                          const std::optional<Tensor>& running_var, const std::optional<Tensor>& num_batches_tracked,
                          bool training, std::optional<double> momentum, double eps, bool freeze) {
  TORCH_CHECK_VALUE(mean_weight.numel() == 2 || mean_weight.numel() == 3,
                    "sparse_switch_norm: mixtures have 2 (IN, LN) or 3 (IN, LN, BN) entries, got ", mean_weight.numel());
  TORCH_CHECK_VALUE(var_weight.numel() == mean_weight.numel(), "sparse_switch_norm: mean and variance mixtures differ");
  Options o = batch_options("SparseSwitchNorm", mean_weight.numel() == 3, running_mean, running_var,
                            num_batches_tracked, training, momentum, eps);
  o.layer.mixture = Mixture::kSparsestMax;
  o.layer.radius = radius.item<double>();
  if (freeze) {
    const at::ScalarType logits_type = accumulation_type(mean_weight);
    AT_DISPATCH_FLOATING_TYPES(logits_type, "dynnorm", [&] {
      freeze_if_one_hot<scalar_t>(mean_weight, mean_fixed, o.layer.radius);
      freeze_if_one_hot<scalar_t>(var_weight, var_fixed, o.layer.radius);
    });
  }
  o.layer.frozen = {mean_fixed.item<bool>(), var_fixed.item<bool>()};
  o.constant[SwitchNorm<float>::kMeanMixture] = o.layer.frozen[0];
  o.constant[SwitchNorm<float>::kVarMixture] = o.layer.frozen[1];
  return std::get<0>(run<SwitchNorm>(x, {weight, bias, mean_weight, var_weight, std::nullopt, std::nullopt}, o));
}

std::tuple<Tensor, Tensor> exemplar_norm(const Tensor& x, const std::optional<Tensor>& weight,
                                         const std::optional<Tensor>& bias, const Tensor& ratio_w1,
                                         const Tensor& ratio_b1, const Tensor& ratio_w2, const Tensor& ratio_b2,
                                         const std::optional<Tensor>& running_mean,
                                         const std::optional<Tensor>& running_var,
                                         const std::optional<Tensor>& num_batches_tracked, bool training,
                                         std::optional<double> momentum, double eps) {
  const Options o =
      batch_options("ExemplarNorm", true, running_mean, running_var, num_batches_tracked, training, momentum, eps);
  return run<ExemplarNorm>(x, {weight, bias, ratio_w1, ratio_b1, ratio_w2, ratio_b2}, o);
}

Tensor dynamic_norm(const Tensor& x, const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
                    const Tensor& mean_gate_logits, const Tensor& var_gate_logits, const Tensor& mean_batch_logit,
                    const Tensor& var_batch_logit, at::IntArrayRef factors, const std::optional<Tensor>& running_mean,
                    const std::optional<Tensor>& running_var, const std::optional<Tensor>& num_batches_tracked,
                    bool training, std::optional<double> momentum, double eps) {
  Options o =
      batch_options("DynamicNorm", true, running_mean, running_var, num_batches_tracked, training, momentum, eps);
  o.layer.factors = factors.vec();
  int64_t product = 1;
  for (int64_t f : factors) product *= f;
  TORCH_CHECK_VALUE(product == x.size(1) && static_cast<int64_t>(factors.size()) == mean_gate_logits.numel(),
                    "dynamic_norm: the factors ", factors, " must multiply to the channel count ", x.size(1),
                    " and number the gate logits ", mean_gate_logits.numel());
  return std::get<0>(run<DynamicNorm>(
      x, {weight, bias, mean_gate_logits, var_gate_logits, mean_batch_logit, var_batch_logit}, o));
}

Tensor dynamic_affine_norm(const Tensor& x, const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
                           const Tensor& sc_w1, const Tensor& sc_b1, const Tensor& sc_w2, const Tensor& sc_b2,
                           const std::optional<Tensor>& running_mean, const std::optional<Tensor>& running_var,
                           const std::optional<Tensor>& num_batches_tracked, bool training,
                           std::optional<double> momentum, double eps, bool per_sample) {
  Options o = batch_options("DynamicAffineNorm", true, running_mean, running_var, num_batches_tracked, training,
                            momentum, eps);
  o.layer.flag = per_sample;
  return std::get<0>(run<DynamicAffineNorm>(x, {weight, bias, sc_w1, sc_b1, sc_w2, sc_b2}, o));
}

Tensor associate_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& encoder_weight,
                      const Tensor& scale_decoder_weight, const Tensor& shift_decoder_weight, int64_t num_groups,
                      double eps, bool scale_from_mean) {
  TORCH_CHECK_VALUE(num_groups > 0 && x.size(1) % num_groups == 0, "associate_norm: ", num_groups,
                    " groups do not divide ", x.size(1), " channels");
  Options o = batch_options("AssociateNorm", false, std::nullopt, std::nullopt, std::nullopt, false, std::nullopt, eps);
  o.layer.groups = num_groups;
  o.layer.flag = scale_from_mean;
  return std::get<0>(run<AssociateNorm>(
      x, {weight, bias, encoder_weight, scale_decoder_weight, shift_decoder_weight, std::nullopt}, o));
}

}  // namespace
}  // namespace dynnorm

TORCH_LIBRARY(dynnorm, m) {
  m.def(
      "switch_norm(Tensor x, Tensor? weight, Tensor? bias, Tensor mean_mixture, Tensor var_mixture, "
      "Tensor(a!)? running_mean, Tensor(b!)? running_var, Tensor(c!)? num_batches_tracked, bool training, "
      "float? momentum, float eps, bool mixture_logits) -> Tensor");
  m.def(
      "sparse_switch_norm(Tensor x, Tensor? weight, Tensor? bias, Tensor(d!) mean_weight, Tensor(e!) var_weight, "
      "Tensor radius, Tensor(f!) mean_fixed, Tensor(g!) var_fixed, Tensor(a!)? running_mean, Tensor(b!)? running_var, "
      "Tensor(c!)? num_batches_tracked, bool training, float? momentum, float eps, bool freeze) -> Tensor");
  m.def(
      "exemplar_norm(Tensor x, Tensor? weight, Tensor? bias, Tensor ratio_w1, Tensor ratio_b1, Tensor ratio_w2, "
      "Tensor ratio_b2, Tensor(a!)? running_mean, Tensor(b!)? running_var, Tensor(c!)? num_batches_tracked, "
      "bool training, float? momentum, float eps) -> (Tensor, Tensor)");
  m.def(
      "dynamic_norm(Tensor x, Tensor? weight, Tensor? bias, Tensor mean_gate_logits, Tensor var_gate_logits, "
      "Tensor mean_batch_logit, Tensor var_batch_logit, int[] factors, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, Tensor(c!)? num_batches_tracked, bool training, float? momentum, float eps) -> Tensor");
  m.def(
      "dynamic_affine_norm(Tensor x, Tensor? weight, Tensor? bias, Tensor sc_w1, Tensor sc_b1, Tensor sc_w2, "
      "Tensor sc_b2, Tensor(a!)? running_mean, Tensor(b!)? running_var, Tensor(c!)? num_batches_tracked, "
      "bool training, float? momentum, float eps, bool per_sample) -> Tensor");
  m.def(
      "associate_norm(Tensor x, Tensor weight, Tensor bias, Tensor encoder_weight, Tensor scale_decoder_weight, "
      "Tensor shift_decoder_weight, int num_groups, float eps, bool scale_from_mean) -> Tensor");
}

// The same kernels serve calls with and without autograd (inference mode skips the Autograd key).
#define DYNNORM_IMPLEMENT(KEY)                                  \
  TORCH_LIBRARY_IMPL(dynnorm, KEY, m) {                         \
    m.impl("switch_norm", &dynnorm::switch_norm);               \
    m.impl("sparse_switch_norm", &dynnorm::sparse_switch_norm); \
    m.impl("exemplar_norm", &dynnorm::exemplar_norm);           \
    m.impl("dynamic_norm", &dynnorm::dynamic_norm);             \
    m.impl("dynamic_affine_norm", &dynnorm::dynamic_affine_norm); \
    m.impl("associate_norm", &dynnorm::associate_norm);         \
  }
DYNNORM_IMPLEMENT(CPU)
DYNNORM_IMPLEMENT(AutogradCPU)

// An importable module, so that `import dynnorm._C` loads the library and runs the registrations above.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
