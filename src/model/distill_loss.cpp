#include "lmtune/model/distill_loss.h"

#include "lmtune/model/bf16_emulation.h"
#include "recompute_state.h"

namespace lmtune {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// One chunk's two terms, (2) fp32: its cross-entropy sum and its KL sum over rows with a target.
torch::Tensor chunk_distill_terms(const torch::Tensor& hidden, const torch::Tensor& weight,
                                  const torch::Tensor& teacher_hidden,
                                  const torch::Tensor& teacher_weight, const torch::Tensor& targets,
                                  DistillTermsOptions options) {
  auto logits = autocast_linear(hidden, weight).to(torch::kFloat32);  // (n, V)
  torch::Tensor teacher_logits;
  {
    torch::NoGradGuard frozen;
    teacher_logits = autocast_linear(teacher_hidden, teacher_weight).to(torch::kFloat32);  // (n, V)
  }
  auto ce = torch::nn::functional::cross_entropy(
      logits, targets,
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kSum));
  auto log_q = torch::log_softmax(logits / options.temperature, -1);          // (n, V) student
  auto log_p = torch::log_softmax(teacher_logits / options.temperature, -1);  // (n, V) teacher
  auto per_row = options.reverse ? (log_q.exp() * (log_q - log_p)).sum(-1)
                                 : (log_p.exp() * (log_p - log_q)).sum(-1);  // (n)
  auto kl = torch::where(targets.ne(-100), per_row, torch::zeros_like(per_row)).sum();
  return torch::stack({ce, kl});
}

struct DistillState : torch::CustomClassHolder {
  detail::AutocastState autocast;
  DistillTermsOptions options;
  int64_t chunk_tokens = 0;
};

// Forward sums the chunks' terms without keeping their logits; backward recomputes each chunk
// (the teacher's logits included) and differentiates it at once, scaled by the two incoming
// gradients (which carry alpha, T^2, the normalisation and any fp16 loss scale).
struct DistillFunction : torch::autograd::Function<DistillFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& hidden,
                               const torch::Tensor& weight, const torch::Tensor& teacher_hidden,
                               const torch::Tensor& teacher_weight, const torch::Tensor& targets,
                               c10::intrusive_ptr<DistillState> state) {
    state->autocast = detail::AutocastState::current();
    ctx->saved_data["state"] = c10::IValue::make_capsule(state);
    ctx->save_for_backward({hidden, weight, teacher_hidden, teacher_weight, targets});
    detail::AutocastCacheOff no_cache;
    auto total = torch::zeros({2}, hidden.options().dtype(torch::kFloat32));
    for (int64_t start = 0; start < hidden.size(0); start += state->chunk_tokens) {
      const int64_t n = std::min(state->chunk_tokens, hidden.size(0) - start);
      total += chunk_distill_terms(hidden.narrow(0, start, n), weight,
                                   teacher_hidden.narrow(0, start, n), teacher_weight,
                                   targets.narrow(0, start, n), state->options);
    }
    return total;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto state =
        c10::static_intrusive_pointer_cast<DistillState>(ctx->saved_data["state"].toCapsule());
    auto saved = ctx->get_saved_variables();
    const torch::Tensor hidden = saved[0].detach(), teacher_hidden = saved[2].detach();
    const torch::Tensor teacher_weight = saved[3].detach(), targets = saved[4];
    const bool need_hidden = ctx->needs_input_grad(0), need_weight = ctx->needs_input_grad(1);
    auto w = saved[1].detach().requires_grad_(need_weight);
    torch::Tensor grad_hidden = need_hidden ? torch::empty_like(hidden) : torch::Tensor();
    torch::Tensor grad_weight;
    for (int64_t start = 0; start < hidden.size(0); start += state->chunk_tokens) {
      const int64_t n = std::min(state->chunk_tokens, hidden.size(0) - start);
      auto h = hidden.narrow(0, start, n).detach().requires_grad_(need_hidden);  // (n, C)
      torch::Tensor terms;
      {
        detail::RecomputeScope scope(state->autocast);
        terms = chunk_distill_terms(h, w, teacher_hidden.narrow(0, start, n), teacher_weight,
                                    targets.narrow(0, start, n), state->options);
      }
      std::vector<torch::Tensor> wrt;
      if (need_hidden) wrt.push_back(h);
      if (need_weight) wrt.push_back(w);
      if (wrt.empty()) break;
      variable_list grads;
      {
        // Gradients without autocast, as the autograd engine's own backward runs them.
        detail::RecomputeScope no_autocast(detail::AutocastState{});
        grads = torch::autograd::grad({terms}, wrt, {grad_outputs[0]});
      }
      if (need_hidden) grad_hidden.narrow(0, start, n).copy_(grads[0]);
      if (need_weight)
        grad_weight = grad_weight.defined() ? grad_weight.add_(grads.back()) : grads.back();
    }
    return {grad_hidden,     grad_weight,     torch::Tensor(),
            torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor chunked_distill_terms(const torch::Tensor& hidden, const torch::Tensor& weight,
                                    const torch::Tensor& teacher_hidden,
                                    const torch::Tensor& teacher_weight,
                                    const torch::Tensor& targets, DistillTermsOptions options,
                                    int64_t chunk_tokens) {
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2 && targets.dim() == 1 &&
                  teacher_hidden.dim() == 2 && teacher_weight.dim() == 2,
              "chunked_distill_terms: expected hidden (N, C), weight (V, C), teacher_hidden "
              "(N, C'), teacher_weight (V, C'), targets (N)");
  TORCH_CHECK(teacher_hidden.size(0) == hidden.size(0) && targets.size(0) == hidden.size(0),
              "chunked_distill_terms: the student, teacher and targets differ in rows");
  TORCH_CHECK(teacher_weight.size(0) == weight.size(0),
              "chunked_distill_terms: the student and teacher differ in vocabulary size");
  TORCH_CHECK(chunk_tokens > 0, "chunked_distill_terms: chunk_tokens must be positive");
  auto state = c10::make_intrusive<DistillState>();
  state->options = options;
  state->chunk_tokens = chunk_tokens;
  return DistillFunction::apply(hidden, weight, teacher_hidden.detach(), teacher_weight.detach(),
                                targets, state);
}

}  // namespace lmtune
