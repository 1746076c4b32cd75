// Chunked cross-entropy: the vocabulary projection and the loss over a few tokens at a time, so
// the full (N, V) logits never exist.
#pragma once

#include <cstdint>

#include <torch/torch.h>

namespace lmtune {

struct ChunkedLossOptions {
  int64_t chunk_tokens = 512;  // rows of logits at a time
  // The output head's vocabulary padded with zero rows to a multiple of this (0 or 1: none), as
  // CausalLM::output_logits pads it; the padded logits are left out of the loss.
  int64_t vocab_padding = 0;
  // The loss and its gradient by cross_entropy_with_grad's CUDA kernel (train.fused_loss).
  bool fused_kernel = false;
  bool recompute = false;  // backward recomputes each chunk's logits whatever the case (tests)
};

// Sum over rows of cross_entropy(hidden @ weight^T, targets), targets of -100 ignored; an fp32
// scalar. hidden (N, C), weight (V, C), targets (N). Logits exist for options.chunk_tokens rows at
// a time, under the autocast state of the call. Gradients flow to hidden and weight. When
// gradients are wanted, each chunk is differentiated as soon as its loss is known and backward only
// scales the result (one vocabulary projection forward and two backward, as the plain path); under
// fp16 autocast, whose gradients must be computed at the loss scale, and when no gradients are
// wanted, backward recomputes each chunk's logits instead.
torch::Tensor chunked_lm_loss_sum(const torch::Tensor& hidden, const torch::Tensor& weight,
                                  const torch::Tensor& targets, const ChunkedLossOptions& options);

// `weight` (V, C) with zero rows appended up to a multiple of `multiple` rows (0 or 1: as it is).
// Differentiable: the weight's gradient is the first V rows of the padded one's.
torch::Tensor padded_output_weight(const torch::Tensor& weight, int64_t multiple);

}  // namespace lmtune
