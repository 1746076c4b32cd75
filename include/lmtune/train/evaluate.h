// The language-modelling loss of a model on batches, and evaluation over a split.
#pragma once

#include <cstdint>

#include <torch/torch.h>

#include "lmtune/core/config.h"
#include "lmtune/data/dataset.h"
#include "lmtune/model/causal_lm.h"
#include "lmtune/model/distill_loss.h"
#include "lmtune/train/distributed.h"

namespace lmtune {

// Sum of the cross-entropy over the batch's targets (ignoring -100), an fp32 scalar on `device`.
// Runs the forward pass under autocast for `precision`. With loss_chunk_tokens > 0 the vocabulary
// projection and the loss run in chunks of that many tokens (chunked_lm_loss_sum), so the full
// logits never exist. `fused_loss` (train.fused_loss; when gradients are wanted): the loss and the
// logits' gradient at once by cross_entropy_with_grad's CUDA kernel, through chunked_lm_loss_sum
// (one chunk of the whole batch unless loss_chunk_tokens says otherwise) on the model's padded
// vocabulary.
torch::Tensor summed_token_loss(const CausalLM& model, const Batch& batch, Precision precision,
                                torch::Device device, int64_t loss_chunk_tokens = 0,
                                bool fused_loss = false);

// The distillation terms of a student against a frozen teacher on a batch: (2) fp32 on `device`,
// [cross-entropy sum, KL sum] over the batch's targets (ignoring -100), chunked_distill_terms'
// formula. Both forward passes run under autocast for `precision`, the teacher's without
// gradients; the vocabulary projections and the terms run in chunks of chunk_tokens (> 0) tokens.
torch::Tensor summed_distill_terms(const CausalLM& student, const CausalLM& teacher,
                                   const Batch& batch, Precision precision, torch::Device device,
                                   int64_t chunk_tokens, DistillTermsOptions options);

// Above this many bytes of fp32 logits per micro-batch (B x T x V x 4), chunked_loss: auto
// chooses the chunked loss on a CPU. At 8 x 512 x 50257 (823 MB of logits) it measured 1.7 GB
// lower peak memory (docs/benchmarks.md); below the threshold the plain path holds little enough
// that chunking, which splits the vocabulary matmuls into thinner ones, is not worth it (a
// judgement, see docs/memory.md).
inline constexpr int64_t kChunkedLossAutoBytes = int64_t{64} << 20;  // 64 MiB

// The auto threshold on `device`: kChunkedLossAutoBytes on a CPU; an eighth of the GPU's memory
// on a GPU, where the plain loss measured 1.38x faster than the chunked one for GPT-2 124M at
// 16 x 1024 tokens (3.3 GB of logits) on an H200, for 8.6 GB more peak memory.
int64_t chunked_loss_auto_bytes(torch::Device device);

// train.chunked_loss resolved for micro-batches of seq_len tokens over a vocabulary of
// vocab_size on `device`: tokens per chunk, or 0 for the plain loss.
int64_t resolve_loss_chunk_tokens(const TrainConfig& train, int64_t seq_len, int64_t vocab_size,
                                  torch::Device device);

// train.vocab_padding resolved on `device`: the multiple the output head's vocabulary is padded
// to (0 or 1: none).
int64_t resolve_vocab_padding(int64_t setting, torch::Device device);

// Per window of `split`, in window order, the mean cross-entropy per target token (nats) that
// `model` gives it in fp32, one window at a time; 0 for a window without targets.
std::vector<double> window_losses(const CausalLM& model, const TokenSplit& split,
                                  torch::Device device);

struct EvalResult {
  double loss = 0;        // mean cross-entropy per target token (nats)
  double perplexity = 0;  // exp(loss)
  int64_t tokens = 0;     // target tokens evaluated
};

// Evaluates `split` in order, `batch_size` windows at a time, at most `max_batches` (0 = all).
// With `group` (data parallel), `batch_size` is the global batch: each rank evaluates its share of
// every batch and the sums are all-reduced, so every rank returns the result of the whole.
EvalResult evaluate(const CausalLM& model, const TokenSplit& split, int64_t batch_size,
                    int64_t max_batches, Precision precision, torch::Device device,
                    int64_t loss_chunk_tokens = 0, Distributed* group = nullptr);

}  // namespace lmtune
