// The language-modelling loss of a model on batches, and evaluation over a split.
#pragma once

#include <cstdint>

#include <torch/torch.h>

#include "lmtune/core/config.h"
#include "lmtune/data/dataset.h"
#include "lmtune/model/gpt2.h"

namespace lmtune {

// Sum of the cross-entropy over the batch's targets (ignoring -100), an fp32 scalar on `device`.
// Runs the forward pass under autocast for `precision`.
torch::Tensor summed_token_loss(GPT2& model, const Batch& batch, Precision precision,
                                torch::Device device);

struct EvalResult {
  double loss = 0;        // mean cross-entropy per target token (nats)
  double perplexity = 0;  // exp(loss)
  int64_t tokens = 0;     // target tokens evaluated
};

// Evaluates `split` in order, `batch_size` windows at a time, at most `max_batches` (0 = all).
EvalResult evaluate(GPT2& model, const TokenSplit& split, int64_t batch_size, int64_t max_batches,
                    Precision precision, torch::Device device);

}  // namespace lmtune
