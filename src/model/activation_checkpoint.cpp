#include "lmtune/model/activation_checkpoint.h"

#include <atomic>

#include "recompute_state.h"

namespace lmtune {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::atomic<int64_t> recomputations{0};  // backward passes through checkpoint_activation

// What backward needs besides the saved input: the function and the state to repeat it in.
struct Replay : torch::CustomClassHolder {
  ActivationFn fn;
  std::vector<torch::Tensor> params;
  detail::AutocastState autocast;
  detail::RngState rng;
};

struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, at::TensorList params,
                               const ActivationFn& fn) {
    auto replay = c10::make_intrusive<Replay>();
    replay->fn = fn;
    replay->params = params.vec();
    replay->autocast = detail::AutocastState::current();
    replay->rng = detail::RngState::current(x.device());
    ctx->saved_data["replay"] = c10::IValue::make_capsule(replay);
    ctx->save_for_backward({x});
    detail::AutocastCacheOff no_cache;
    return fn(x);  // grad mode is off here: no activation is kept
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto replay = c10::static_intrusive_pointer_cast<Replay>(ctx->saved_data["replay"].toCapsule());
    torch::Tensor x = ctx->get_saved_variables()[0].detach().requires_grad_(true);

    // Forward's random stream is replayed, then the caller's is put back as it was.
    auto caller_rng = detail::RngState::current(x.device());
    replay->rng.restore();
    torch::Tensor y;
    {
      detail::RecomputeScope scope(replay->autocast);
      y = replay->fn(x);
    }
    caller_rng.restore();
    ++recomputations;

    // Inputs: x, then one per parameter (in the order given to forward), then fn.
    const auto& inputs = replay->params;
    std::vector<torch::Tensor> wanted{x};
    std::vector<std::size_t> slots{0};
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      if (inputs[i].requires_grad()) {
        wanted.push_back(inputs[i]);
        slots.push_back(i + 1);
      }
    }
    auto grads = torch::autograd::grad({y}, wanted, {grad_outputs[0]}, /*retain_graph=*/false,
                                       /*create_graph=*/false, /*allow_unused=*/true);
    variable_list result(inputs.size() + 2);
    for (std::size_t i = 0; i < slots.size(); ++i) result[slots[i]] = grads[i];
    return result;
  }
};

}  // namespace

int64_t activation_recomputations() {
  return recomputations.load();
}

torch::Tensor checkpoint_activation(const ActivationFn& fn, const torch::Tensor& x,
                                    const std::vector<torch::Tensor>& params) {
  // As a TensorList the parameters become inputs of the node, so their gradients flow even when
  // x needs none (a trainable block after frozen ones).
  return CheckpointFunction::apply(x, at::TensorList(params), fn);
}

}  // namespace lmtune
