#include "lmtune/model/chunked_loss.h"

#include <ATen/autocast_mode.h>

#include "lmtune/model/bf16_emulation.h"
#include "lmtune/model/fused_ops.h"
#include "recompute_state.h"

namespace lmtune {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The plain path's maths on one chunk: logits (n, V) in the autocast precision, the loss in fp32.
// `weight` (Vp, C) may be padded: the logits past `vocab` are left out.
torch::Tensor chunk_loss_sum(const torch::Tensor& hidden, const torch::Tensor& weight,
                             int64_t vocab, const torch::Tensor& targets) {
  auto logits = autocast_linear(hidden, weight).narrow(1, 0, vocab);  // (n, V)
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
    // A frozen input (embeddings tied to the output head) had a placeholder instead.
    auto scaled = [&](int input) {
      return ctx->needs_input_grad(input) ? saved[input] * scale : torch::Tensor();
    };
    return {scaled(0), scaled(1), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

struct ChunkGradients {
  torch::Tensor loss;         // fp32 scalar, the sum over the chunks
  torch::Tensor grad_hidden;  // (N, C), or undefined when not wanted
  torch::Tensor grad_weight;  // (V, C), accumulated over the chunks, or undefined
};

// The loss and its gradients, chunk by chunk: each chunk's logits under `autocast`, the loss and
// the logits' gradient at once (cross_entropy_with_grad), then the projection's gradients without
// autocast, as the autograd engine's own backward runs (under autocast, backward's matmuls would be
// cast again: to LibTorch's slow bf16 kernel on a CPU without bf16 instructions). A defined
// grad_output scales the gradients on their way.
ChunkGradients chunk_gradients(const torch::Tensor& hidden, const torch::Tensor& weight,
                               const torch::Tensor& targets, const ChunkedLossOptions& options,
                               bool need_hidden, bool need_weight,
                               const detail::AutocastState& autocast,
                               const torch::Tensor& grad_output) {
  ChunkGradients out;
  out.loss = torch::zeros({}, hidden.options().dtype(torch::kFloat32));
  if (need_hidden) out.grad_hidden = torch::empty_like(hidden);
  auto w = weight.detach().requires_grad_(need_weight);
  torch::Tensor padded;  // (Vp, C), recorded for w's gradient also when backward calls this
  {
    torch::AutoGradMode enabled(true);
    padded = padded_output_weight(w, options.vocab_padding);
  }
  for (int64_t start = 0; start < hidden.size(0); start += options.chunk_tokens) {
    const int64_t n = std::min(options.chunk_tokens, hidden.size(0) - start);
    auto h = hidden.narrow(0, start, n).detach().requires_grad_(need_hidden);  // (n, C)
    torch::Tensor logits;
    {
      detail::RecomputeScope scope(autocast);
      logits = autocast_linear(h, padded);  // (n, Vp)
    }
    // The gradient is written over the logits (mm's backward does not read its own output).
    LossAndLogitGrad loss =
        cross_entropy_with_grad(logits.detach(), weight.size(0), targets.narrow(0, start, n),
                                grad_output, options.fused_kernel);
    std::vector<torch::Tensor> wrt;
    if (need_hidden) wrt.push_back(h);
    if (need_weight) wrt.push_back(w);
    variable_list grads;
    {
      detail::RecomputeScope no_autocast(detail::AutocastState{});
      grads = torch::autograd::grad({logits}, wrt, {loss.grad});
    }
    if (need_hidden) out.grad_hidden.narrow(0, start, n).copy_(grads[0]);
    if (need_weight) {
      const auto& g = grads.back();
      out.grad_weight = out.grad_weight.defined() ? out.grad_weight.add_(g) : g;
    }
    out.loss += loss.loss;
  }
  return out;
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
                               int64_t chunk_tokens, int64_t vocab_padding, bool fused_kernel) {
    auto autocast = c10::make_intrusive<AutocastHolder>();
    autocast->state = detail::AutocastState::current();
    ctx->saved_data["autocast"] = c10::IValue::make_capsule(autocast);
    ctx->saved_data["chunk_tokens"] = chunk_tokens;
    ctx->saved_data["vocab_padding"] = vocab_padding;
    ctx->saved_data["fused_kernel"] = fused_kernel;
    ctx->save_for_backward({hidden, weight, targets});
    detail::AutocastCacheOff no_cache;
    const torch::Tensor padded = padded_output_weight(weight, vocab_padding);
    auto total = torch::zeros({}, hidden.options().dtype(torch::kFloat32));
    for (int64_t start = 0; start < hidden.size(0); start += chunk_tokens) {
      const int64_t n = std::min(chunk_tokens, hidden.size(0) - start);
      total += chunk_loss_sum(hidden.narrow(0, start, n), padded, weight.size(0),
                              targets.narrow(0, start, n));
    }
    return total;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto autocast =
        c10::static_intrusive_pointer_cast<AutocastHolder>(ctx->saved_data["autocast"].toCapsule());
    ChunkedLossOptions options;
    options.chunk_tokens = ctx->saved_data["chunk_tokens"].toInt();
    options.vocab_padding = ctx->saved_data["vocab_padding"].toInt();
    options.fused_kernel = ctx->saved_data["fused_kernel"].toBool();
    auto saved = ctx->get_saved_variables();
    torch::Tensor hidden = saved[0].detach(), weight = saved[1].detach(), targets = saved[2];
    const bool need_hidden = ctx->needs_input_grad(0), need_weight = ctx->needs_input_grad(1);

    auto grads = chunk_gradients(hidden, weight, targets, options, need_hidden, need_weight,
                                 autocast->state, grad_outputs[0]);
    return {grads.grad_hidden, grads.grad_weight, torch::Tensor(),
            torch::Tensor(),   torch::Tensor(),   torch::Tensor()};
  }
};

}  // namespace

torch::Tensor padded_output_weight(const torch::Tensor& weight, int64_t multiple) {
  const int64_t V = weight.size(0);
  const int64_t padding = multiple > 1 ? (multiple - V % multiple) % multiple : 0;
  if (padding == 0) return weight;
  return torch::cat({weight, weight.new_zeros({padding, weight.size(1)})});
}

torch::Tensor chunked_lm_loss_sum(const torch::Tensor& hidden, const torch::Tensor& weight,
                                  const torch::Tensor& targets, const ChunkedLossOptions& options) {
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2 && targets.dim() == 1,
              "chunked_lm_loss_sum: expected hidden (N, C), weight (V, C), targets (N)");
  TORCH_CHECK(options.chunk_tokens > 0, "chunked_lm_loss_sum: chunk_tokens must be positive");
  const bool gradients_wanted =
      torch::GradMode::is_enabled() && (hidden.requires_grad() || weight.requires_grad());
  if (gradients_wanted && !options.recompute && !fp16_autocast()) {
    // Each chunk differentiated as soon as its loss is known; backward only scales the result.
    auto grads = chunk_gradients(hidden, weight, targets, options, hidden.requires_grad(),
                                 weight.requires_grad(), detail::AutocastState::current(), {});
    // Every input of a custom function must be a defined tensor: an empty one stands for a
    // gradient that is not wanted.
    auto defined = [&](const torch::Tensor& g) {
      return g.defined() ? g : torch::empty({0}, grads.loss.options());
    };
    return LossWithGradients::apply(hidden, weight, grads.loss, defined(grads.grad_hidden),
                                    defined(grads.grad_weight));
  }
  return ChunkedLossFunction::apply(hidden, weight, targets, options.chunk_tokens,
                                    options.vocab_padding, options.fused_kernel);
}

}  // namespace lmtune
