// train.fused_kernels in the models' blocks (src/model/gpt2.cpp, src/model/llama.cpp): on the CPU
// the fused operations take their reference paths, and a block run through them gives the loss
// and gradients of the plain block, for GPT-2 (residual add + LayerNorm, bias + GELU) and the
// Llama family (residual add + RMSNorm), with and without activation checkpointing.
#include <cstdint>
#include <map>
#include <string>

#include <gtest/gtest.h>

#include "lever_grads.h"
#include "tiny_llama.h"

namespace {

lmtune::Llama tiny_llama() {
  TinyLlamaShape shape;
  shape.n_layer = 3;
  lmtune::LlamaConfig c = tiny_llama_config(shape);
  c.tie_word_embeddings = false;
  lmtune::Llama model(c);
  model->init_weights(/*seed=*/5);
  return model;
}

// Loss and gradients of one backward on lever_batch() with the fused operations on or off.
std::pair<double, GradsByName> loss_and_grads(lmtune::CausalLM model, bool fused,
                                              lmtune::Precision precision) {
  model->set_fused_kernels(fused);
  model->zero_grad();
  auto batch = lever_batch();
  auto loss = lmtune::summed_token_loss(model, batch, precision, torch::kCPU);
  loss.backward();
  GradsByName grads;
  for (const auto& p : model->named_parameters())
    if (p.value().grad().defined()) grads[p.key()] = p.value().grad().clone();
  return {loss.item<double>(), grads};
}

// Each gradient's difference relative to its norm.
void expect_close_grads(const GradsByName& actual, const GradsByName& expected, double relative) {
  ASSERT_EQ(actual.size(), expected.size());
  for (const auto& [name, grad] : expected) {
    ASSERT_TRUE(actual.count(name)) << name;
    const double difference = (actual.at(name) - grad).norm().item<double>() /
                              std::max(grad.norm().item<double>(), 1e-12);
    EXPECT_LT(difference, relative) << name;
  }
}

void expect_fused_matches_plain(lmtune::CausalLM model) {
  auto [plain_loss, plain] = loss_and_grads(model, false, lmtune::Precision::kFp32);
  auto [fused_loss, fused] = loss_and_grads(model, true, lmtune::Precision::kFp32);
  EXPECT_NEAR(fused_loss, plain_loss, 1e-5 * plain_loss);
  expect_close_grads(fused, plain, 1e-5);
  // bf16 autocast: the normed activations come out in bf16 from the fused operation rather
  // than being cast by the next projection; the same values up to bf16's rounding.
  auto [plain16_loss, plain16] = loss_and_grads(model, false, lmtune::Precision::kBf16);
  auto [fused16_loss, fused16] = loss_and_grads(model, true, lmtune::Precision::kBf16);
  EXPECT_NEAR(fused16_loss, plain16_loss, 1e-2 * plain16_loss);
  expect_close_grads(fused16, plain16, 2e-2);
  // Checkpointed blocks recompute through the same operations.
  model->set_gradient_checkpointing(1);
  auto [checkpointed_loss, checkpointed] = loss_and_grads(model, true, lmtune::Precision::kFp32);
  model->set_gradient_checkpointing(0);
  EXPECT_NEAR(checkpointed_loss, plain_loss, 1e-5 * plain_loss);
  expect_close_grads(checkpointed, plain, 1e-5);
}

TEST(FusedBlocks, Gpt2GivesThePlainLossAndGradients) {
  expect_fused_matches_plain(lever_model(/*dropout=*/0.0));
}

TEST(FusedBlocks, LlamaGivesThePlainLossAndGradients) {
  expect_fused_matches_plain(tiny_llama());
}

}  // namespace
