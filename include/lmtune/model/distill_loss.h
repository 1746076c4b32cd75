// Chunked distillation loss: the student's cross-entropy and its KL divergence from a frozen
// teacher, a few positions at a time, so neither model's full (N, V) logits ever exist.
#pragma once

#include <cstdint>

#include <torch/torch.h>

namespace lmtune {

struct DistillTermsOptions {
  double temperature = 2.0;  // T: both models' logits are divided by it inside the KL
  bool reverse = false;      // KL(student || teacher) instead of KL(teacher || student)
};

// The two terms of the distillation loss summed over the rows whose target is not -100, as an
// fp32 tensor (2): [sum of cross_entropy(hidden @ weight^T, targets), sum of KL], where per row
// with p = softmax(teacher_logits / T) and q = softmax(student_logits / T), KL is
// sum_v p_v (log p_v - log q_v), or sum_v q_v (log q_v - log p_v) when reverse.
// hidden (N, C), weight (V, C) are the student's final hidden states and output weight;
// teacher_hidden (N, C'), teacher_weight (V, C') the teacher's (no gradient flows to them);
// targets (N). Logits exist for chunk_tokens rows at a time under the call's autocast state;
// backward recomputes each chunk's logits, so gradients flow to hidden and weight.
torch::Tensor chunked_distill_terms(const torch::Tensor& hidden, const torch::Tensor& weight,
                                    const torch::Tensor& teacher_hidden,
                                    const torch::Tensor& teacher_weight,
                                    const torch::Tensor& targets, DistillTermsOptions options,
                                    int64_t chunk_tokens);

}  // namespace lmtune
