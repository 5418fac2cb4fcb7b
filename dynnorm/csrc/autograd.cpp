// Autograd of dynnorm's fused CPU operators: one boxed kernel, registered for every layer's forward operator,
// that runs the operator below autograd and records a FusedBackward node. The node's first-order backward is one
// call of the layer's backward operator (through the dispatcher, so torch.compile traces it with its fake
// kernel); when the backward is itself differentiated (grad mode on: create_graph=True), the node asks
// dynnorm.kernels.ops.double_backward to recompute the layer through the reference ops and differentiate that.
// The node saves exactly what the backward operator reads: the input, the parameters, the statistics buffer and
// the layer's extra outputs (the Triton operators get the same autograd from Python, dynnorm/kernels/ops.py).
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/jit/python/pybind_utils.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace dynnorm {
namespace {

using at::Tensor;
using c10::IValue;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;
using torch::jit::Stack;

// What autograd needs to know about a layer's operators beyond their schemas.
struct LayerSpec {
  const char* layer;                        // the name in messages and in the node's name
  std::vector<std::string> differentiable;  // "x", then the parameters, in the order of the backward's gradients
  std::vector<std::string> snapshot;        // arguments the caller may modify in place after the forward: copied
};

const LayerSpec& layer_spec(const std::string& op) {
  static const std::unordered_map<std::string, LayerSpec> specs = {
      {"switch_norm", {"SwitchNorm", {"x", "weight", "bias", "mean_mixture", "var_mixture"}, {}}},
      {"sparse_switch_norm", {"SparseSwitchNorm", {"x", "weight", "bias", "mean_weight", "var_weight"}, {"radius"}}},
      {"exemplar_norm",
       {"ExemplarNorm", {"x", "weight", "bias", "ratio_w1", "ratio_b1", "ratio_w2", "ratio_b2"}, {}}},
      {"dynamic_norm",
       {"DynamicNorm",
        {"x", "weight", "bias", "mean_gate_logits", "var_gate_logits", "mean_batch_logit", "var_batch_logit"},
        {}}},
      {"dynamic_affine_norm", {"DynamicAffineNorm", {"x", "weight", "bias", "sc_w1", "sc_b1", "sc_w2", "sc_b2"}, {}}},
      {"associate_norm",
       {"AssociateNorm",
        {"x", "weight", "bias", "encoder_weight", "scale_decoder_weight", "shift_decoder_weight"},
        {}}},
  };
  return specs.at(op);
}

// A tensor whose values can be read on the host (not a fake or functional tensor of a graph capture).
bool concrete(const Tensor& t) {
  return t.device().is_cpu() && !t.key_set().has_any(c10::DispatchKeySet(
                                    {c10::DispatchKey::Python, c10::DispatchKey::Functionalize}));
}

struct FusedBackward : public torch::autograd::Node {
  std::string op;  // the forward operator's name without the namespace
  const LayerSpec* layer = nullptr;
  c10::OperatorHandle backward_op;
  std::vector<std::pair<std::string, IValue>> constants;         // non-tensor arguments
  std::vector<std::pair<std::string, SavedVariable>> saved;      // tensor arguments and outputs (undefined: None)

  explicit FusedBackward(c10::OperatorHandle handle) : backward_op(std::move(handle)) {}

  std::string name() const override { return std::string("dynnorm::") + layer->layer + "Backward"; }

  void release_variables() override {
    for (auto& entry : saved) entry.second.reset_data();
  }

  std::unordered_map<std::string, IValue> values() {
    std::unordered_map<std::string, IValue> result(constants.begin(), constants.end());
    try {
      for (auto& [name, variable] : saved) {
        Tensor t = variable.unpack();
        result[name] = t.defined() ? IValue(t) : IValue();
      }
    } catch (const c10::Error& error) {
      TORCH_CHECK(false, "dynnorm: a tensor that the ", layer->layer,
                  " layer saved for backward (its input or a parameter) was modified in place between the forward "
                  "and the backward pass, so its gradient cannot be computed. Clone the tensor before modifying it "
                  "in place (e.g. use an out-of-place op on the layer's input). Details: ",
                  error.what_without_backtrace());
    }
    return result;
  }

  variable_list apply(variable_list&& grads) override {
    const size_t count = layer->differentiable.size();
    if (!grads[0].defined()) return variable_list(count);
    std::unordered_map<std::string, IValue> v = values();
    v["grad_y"] = grads[0];
    if (at::GradMode::is_enabled()) return differentiable_backward(v);
    v["input_grad"] = should_compute_output(0);
    Stack stack;
    for (const auto& argument : backward_op.schema().arguments()) stack.emplace_back(v.at(argument.name()));
    backward_op.callBoxed(stack);
    const std::vector<Tensor> computed = stack.at(0).toTensorVector();
    variable_list result(count);
    for (size_t i = 0; i < count; ++i) {
      if (should_compute_output(i)) result[i] = computed.at(i);
    }
    if (op == "sparse_switch_norm") drop_frozen_mixture_gradients(v.at("state").toTensor(), result);
    return result;
  }

  // A frozen SSN mixture's logits get no gradient (None, so optimizers leave them alone).
  static void drop_frozen_mixture_gradients(const Tensor& state, variable_list& result) {
    if (!concrete(state)) return;  // under graph capture the gradient stays zero
    const Tensor flags = state.to(at::kLong).contiguous();
    const int64_t* fixed = flags.const_data_ptr<int64_t>();
    if (fixed[0]) result[3] = Tensor();
    if (fixed[1]) result[4] = Tensor();
  }

  variable_list differentiable_backward(const std::unordered_map<std::string, IValue>& v) {
    pybind11::gil_scoped_acquire gil;
    pybind11::dict arguments;
    for (const auto& [name, value] : v) arguments[pybind11::str(name)] = torch::jit::toPyObject(value);
    pybind11::list wanted;
    for (size_t i = 0; i < layer->differentiable.size(); ++i) wanted.append(pybind11::bool_(should_compute_output(i)));
    const pybind11::object grads =
        pybind11::module_::import("dynnorm.kernels.ops").attr("double_backward")(op, arguments, wanted);
    variable_list result;
    for (const auto& grad : grads) result.push_back(grad.is_none() ? Tensor() : pybind11::cast<Tensor>(grad));
    return result;
  }
};

int64_t argument_index(const c10::FunctionSchema& schema, const std::string& name) {
  const auto index = schema.argumentIndexWithName(name);
  TORCH_INTERNAL_ASSERT(index.has_value(), schema.name(), " has no argument ", name);
  return *index;
}

void autograd_kernel(const c10::OperatorHandle& op, c10::DispatchKeySet keys, Stack* stack) {
  const c10::FunctionSchema& schema = op.schema();
  const std::string name = schema.operator_name().name.substr(std::string("dynnorm::").size());
  const LayerSpec& layer = layer_spec(name);
  const size_t num_arguments = schema.arguments().size();
  const std::vector<IValue> inputs(stack->end() - num_arguments, stack->end());
  variable_list differentiable;
  bool requires_grad = false;
  for (const std::string& argument : layer.differentiable) {
    const IValue& value = inputs[argument_index(schema, argument)];
    differentiable.push_back(value.isTensor() ? value.toTensor() : Tensor());
    requires_grad = requires_grad || (differentiable.back().defined() && differentiable.back().requires_grad());
  }
  {
    at::AutoDispatchBelowAutograd guard;
    op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
  }
  if (!requires_grad || !at::GradMode::is_enabled()) return;

  const auto backward_op = c10::Dispatcher::singleton().findSchemaOrThrow(
      (schema.operator_name().name + "_backward").c_str(), "");
  auto node = c10::make_intrusive<FusedBackward>(backward_op);
  node->op = name;
  node->layer = &layer;
  node->set_next_edges(torch::autograd::collect_next_edges(differentiable));
  const size_t num_outputs = schema.returns().size();
  const std::vector<IValue> outputs(stack->end() - num_outputs, stack->end());
  auto save = [&](const std::string& argument, const IValue& value, bool copy) {
    if (value.isTensor()) {
      const Tensor& t = value.toTensor();
      node->saved.emplace_back(argument, SavedVariable(copy ? t.clone() : t, false));
    } else if (value.isNone() && schema.arguments()[argument_index(schema, argument)].type()->kind() ==
                                     c10::TypeKind::OptionalType) {
      node->saved.emplace_back(argument, SavedVariable());
    } else {
      node->constants.emplace_back(argument, value);
    }
  };
  for (const auto& argument : backward_op.schema().arguments()) {
    const std::string& a = argument.name();
    if (const auto index = schema.argumentIndexWithName(a)) {
      const bool copy = std::find(layer.snapshot.begin(), layer.snapshot.end(), a) != layer.snapshot.end();
      save(a, inputs[*index], copy);
    }
    for (size_t i = 0; i < num_outputs; ++i) {
      if (schema.returns()[i].name() == a) node->saved.emplace_back(a, SavedVariable(outputs[i].toTensor(), false));
    }
  }
  const auto running_mean = schema.argumentIndexWithName("running_mean");
  node->constants.emplace_back("batch_from_input", IValue(running_mean.has_value() && inputs[*running_mean].isNone()));
  if (const auto training = schema.argumentIndexWithName("training")) {
    node->constants.emplace_back("training", inputs[*training]);
  }
  torch::autograd::set_history(outputs[0].toTensor(), node);
}

}  // namespace
}  // namespace dynnorm

namespace dynnorm {

// Called by the module's init (ops.cpp).
void register_autograd_kernels(torch::Library& m) {
  for (const char* op : {"switch_norm", "sparse_switch_norm", "exemplar_norm", "dynamic_norm", "dynamic_affine_norm",
                         "associate_norm"}) {
    m.impl(op, torch::CppFunction::makeFromBoxedFunction<&autograd_kernel>());
  }
}

}  // namespace dynnorm
