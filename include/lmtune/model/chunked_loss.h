// Chunked cross-entropy: the vocabulary projection and the loss over a few tokens at a time, so
// the full (N, V) logits never exist.
#pragma once

#include <cstdint>

#include <torch/torch.h>

namespace lmtune {

// Sum over rows of cross_entropy(hidden @ weight^T, targets), targets of -100 ignored; an fp32
// scalar. hidden (N, C), weight (V, C), targets (N). Logits exist for chunk_tokens rows at a time,
// under the autocast state of the call. Gradients flow to hidden and weight. When gradients are
// wanted, each chunk is differentiated as soon as its loss is known and backward only scales the
// result (one vocabulary projection forward and two backward, as the plain path); under fp16
// autocast, whose gradients must be computed at the loss scale, and when no gradients are wanted,
// backward recomputes each chunk's logits instead. `recompute` forces the latter (for tests).
torch::Tensor chunked_lm_loss_sum(const torch::Tensor& hidden, const torch::Tensor& weight,
                                  const torch::Tensor& targets, int64_t chunk_tokens,
                                  bool recompute = false);

}  // namespace lmtune
