#include "lmtune/model/chunked_loss.h"

#include <ATen/autocast_mode.h>

#include "lmtune/model/bf16_emulation.h"
#include "recompute_state.h"

namespace lmtune {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The plain path's maths on one chunk: logits (n, V) in the autocast precision, the loss in fp32.
torch::Tensor chunk_loss_sum(const torch::Tensor& hidden, const torch::Tensor& weight,
                             const torch::Tensor& targets) {
  auto logits = autocast_linear(hidden, weight);  // (n, V)
  return torch::nn::functional::cross_entropy(
      logits.to(torch::kFloat32), targets,
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kSum));
}

// The loss on the chunks, with its gradients for hidden and weight already computed (each chunk's
// logits built once, differentiated and dropped): backward only scales them by grad_output.
struct LossWithGradients : torch::autograd::Function<LossWithGradients> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& /*hidden*/,
                               const torch::Tensor& /*weight*/, const torch::Tensor& total,
                               const torch::Tensor& grad_hidden, const torch::Tensor& grad_weight) {
    ctx->save_for_backward({grad_hidden, grad_weight});
    return total.clone();
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    const torch::Tensor& scale = grad_outputs[0];
    auto scaled = [&](const torch::Tensor& g) { return g.defined() ? g * scale : g; };
    return {scaled(saved[0]), scaled(saved[1]), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// Each chunk's loss and gradients in one pass; see chunked_lm_loss_sum.
torch::Tensor loss_with_gradients_now(const torch::Tensor& hidden, const torch::Tensor& weight,
                                      const torch::Tensor& targets, int64_t chunk_tokens) {
  const bool need_hidden = hidden.requires_grad(), need_weight = weight.requires_grad();
  torch::Tensor grad_hidden = need_hidden ? torch::empty_like(hidden) : torch::Tensor();
  torch::Tensor grad_weight;  // (V, C), accumulated over chunks in weight's dtype
  auto total = torch::zeros({}, hidden.options().dtype(torch::kFloat32));
  auto w = weight.detach().requires_grad_(need_weight);
  detail::AutocastCacheOff no_cache;
  for (int64_t start = 0; start < hidden.size(0); start += chunk_tokens) {
    const int64_t n = std::min(chunk_tokens, hidden.size(0) - start);
    auto h = hidden.narrow(0, start, n).detach().requires_grad_(need_hidden);  // (n, C)
    auto loss = chunk_loss_sum(h, w, targets.narrow(0, start, n));
    std::vector<torch::Tensor> wrt;
    if (need_hidden) wrt.push_back(h);
    if (need_weight) wrt.push_back(w);
    variable_list grads;
    {
      // Backward runs without autocast, as the autograd engine's backward pass would: under it,
      // backward's matmuls would be cast again (to LibTorch's slow bf16 kernel on a CPU without
      // bf16 instructions).
      detail::RecomputeScope no_autocast(detail::AutocastState{});
      grads = torch::autograd::grad({loss}, wrt);
    }
    if (need_hidden) grad_hidden.narrow(0, start, n).copy_(grads[0]);
    if (need_weight) {
      const auto& g = grads.back();
      grad_weight = grad_weight.defined() ? grad_weight.add_(g) : g;
    }
    total += loss.detach();
  }
  return LossWithGradients::apply(hidden, weight, total, grad_hidden, grad_weight);
}

// Under fp16 autocast the gradients must be computed already scaled by the loss scaler (which
// grad_output carries), or the softmax's small probabilities underflow in fp16.
bool fp16_autocast() {
  return at::autocast::is_autocast_enabled(at::kCUDA) &&
         at::autocast::get_autocast_dtype(at::kCUDA) == at::kHalf;
}

struct AutocastHolder : torch::CustomClassHolder {
  detail::AutocastState state;
};

struct ChunkedLossFunction : torch::autograd::Function<ChunkedLossFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& hidden,
                               const torch::Tensor& weight, const torch::Tensor& targets,
                               int64_t chunk_tokens) {
    auto autocast = c10::make_intrusive<AutocastHolder>();
    autocast->state = detail::AutocastState::current();
    ctx->saved_data["autocast"] = c10::IValue::make_capsule(autocast);
    ctx->saved_data["chunk_tokens"] = chunk_tokens;
    ctx->save_for_backward({hidden, weight, targets});
    detail::AutocastCacheOff no_cache;
    auto total = torch::zeros({}, hidden.options().dtype(torch::kFloat32));
    for (int64_t start = 0; start < hidden.size(0); start += chunk_tokens) {
      const int64_t n = std::min(chunk_tokens, hidden.size(0) - start);
      total += chunk_loss_sum(hidden.narrow(0, start, n), weight, targets.narrow(0, start, n));
    }
    return total;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto autocast =
        c10::static_intrusive_pointer_cast<AutocastHolder>(ctx->saved_data["autocast"].toCapsule());
    const int64_t chunk_tokens = ctx->saved_data["chunk_tokens"].toInt();
    auto saved = ctx->get_saved_variables();
    torch::Tensor hidden = saved[0].detach(), weight = saved[1].detach(), targets = saved[2];
    const bool need_hidden = ctx->needs_input_grad(0), need_weight = ctx->needs_input_grad(1);

    torch::Tensor grad_hidden = need_hidden ? torch::empty_like(hidden) : torch::Tensor();
    torch::Tensor grad_weight;  // (V, C), accumulated over chunks in weight's dtype
    auto w = weight.requires_grad_(need_weight);
    for (int64_t start = 0; start < hidden.size(0); start += chunk_tokens) {
      const int64_t n = std::min(chunk_tokens, hidden.size(0) - start);
      auto h = hidden.narrow(0, start, n).detach().requires_grad_(need_hidden);  // (n, C)
      torch::Tensor loss;
      {
        detail::RecomputeScope scope(autocast->state);
        loss = chunk_loss_sum(h, w, targets.narrow(0, start, n));
      }
      std::vector<torch::Tensor> wrt;
      if (need_hidden) wrt.push_back(h);
      if (need_weight) wrt.push_back(w);
      auto grads = torch::autograd::grad({loss}, wrt, {grad_outputs[0]});
      if (need_hidden) grad_hidden.narrow(0, start, n).copy_(grads[0]);
      if (need_weight) {
        const auto& g = grads.back();
        grad_weight = grad_weight.defined() ? grad_weight.add_(g) : g;
      }
    }
    return {grad_hidden, grad_weight, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor chunked_lm_loss_sum(const torch::Tensor& hidden, const torch::Tensor& weight,
                                  const torch::Tensor& targets, int64_t chunk_tokens,
                                  bool recompute) {
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2 && targets.dim() == 1,
              "chunked_lm_loss_sum: expected hidden (N, C), weight (V, C), targets (N)");
  TORCH_CHECK(chunk_tokens > 0, "chunked_lm_loss_sum: chunk_tokens must be positive");
  const bool gradients_wanted =
      torch::GradMode::is_enabled() && (hidden.requires_grad() || weight.requires_grad());
  if (gradients_wanted && !recompute && !fp16_autocast())
    return loss_with_gradients_now(hidden, weight, targets, chunk_tokens);
  return ChunkedLossFunction::apply(hidden, weight, targets, chunk_tokens);
}

}  // namespace lmtune
