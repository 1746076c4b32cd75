// Chunked cross-entropy: the vocabulary projection and the loss over a few tokens at a time,
// recomputed chunk by chunk in backward, so the full (N, V) logits never exist.
#pragma once

#include <cstdint>

#include <torch/torch.h>

namespace lmtune {

// Sum over rows of cross_entropy(hidden @ weight^T, targets), targets of -100 ignored; an fp32
// scalar. hidden (N, C), weight (V, C), targets (N). Logits exist for chunk_tokens rows at a time,
// in forward and again in backward, under the autocast state of the forward call. Gradients flow
// to hidden and weight.
torch::Tensor chunked_lm_loss_sum(const torch::Tensor& hidden, const torch::Tensor& weight,
                                  const torch::Tensor& targets, int64_t chunk_tokens);

}  // namespace lmtune
