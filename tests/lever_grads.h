// Gradients of one backward of a tiny GPT-2 and their comparison, for the tests of the memory
// levers (activation checkpointing, the chunked loss), which must leave the gradients as they were.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "lmtune/train/evaluate.h"
#include "tiny_gpt2.h"

using GradsByName = std::map<std::string, torch::Tensor>;

// The three-block model the lever tests compare, with dropout unless told otherwise, so that a
// lever must also replay the random masks.
inline lmtune::GPT2 lever_model(double dropout = 0.1) {
  TinyShape shape;
  shape.n_layer = 3;
  return tiny_gpt2(shape, dropout, /*seed=*/3);
}

// The batch the lever tests feed: the same 2 rows of 12 tokens on every call.
inline lmtune::Batch lever_batch() {
  return random_batch(/*vocab=*/50, /*rows=*/2, /*seq=*/12);
}

// Gradients of one backward of `model` on lever_batch(), the loss computed in chunks of
// `loss_chunk_tokens` (0: whole), with the random generator at `seed`; `fused_loss` as
// train.fused_loss.
inline GradsByName backward_grads(lmtune::GPT2& model, lmtune::Precision precision,
                                  int64_t loss_chunk_tokens = 0, uint64_t seed = 11,
                                  bool fused_loss = false) {
  torch::manual_seed(seed);
  auto batch = lever_batch();
  lmtune::summed_token_loss(model, batch, precision, torch::kCPU, loss_chunk_tokens, fused_loss)
      .backward();
  GradsByName grads;
  for (const auto& p : model->named_parameters())
    if (p.value().grad().defined()) grads[p.key()] = p.value().grad().clone();
  return grads;
}

inline void expect_equal_grads(const GradsByName& a, const GradsByName& b, double atol) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, grad] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    EXPECT_TRUE(torch::allclose(grad, b.at(name), /*rtol=*/0, atol))
        << name << ": max difference " << (grad - b.at(name)).abs().max().item<double>();
  }
}
