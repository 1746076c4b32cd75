// Unit tests of the chunked loss and of a bf16 training step on the CPU. The other memory levers
// have files of their own: test_activation_checkpoint.cpp, test_freeze.cpp, test_loss_scaler.cpp.
#include <gtest/gtest.h>

#include "lever_grads.h"
#include "lmtune/model/chunked_loss.h"
#include "lmtune/model/gpt2.h"
#include "lmtune/train/evaluate.h"
#include "lmtune/train/precision.h"

using lmtune::GPT2;

namespace {

lmtune::ChunkedLossOptions chunks_of(int64_t tokens, bool recompute = false,
                                     int64_t vocab_padding = 0) {
  lmtune::ChunkedLossOptions options;
  options.chunk_tokens = tokens;
  options.recompute = recompute;
  options.vocab_padding = vocab_padding;
  return options;
}

}  // namespace

TEST(ChunkedLoss, LossAndGradientsEqualThePlainPath) {
  torch::manual_seed(0);
  auto hidden = torch::randn({37, 8}, torch::requires_grad());  // (N, C)
  auto weight = torch::randn({50, 8}, torch::requires_grad());  // (V, C)
  auto targets = torch::randint(50, {37}, torch::kLong);
  targets.index_put_({3}, -100);
  auto plain = torch::nn::functional::cross_entropy(
      torch::linear(hidden, weight), targets,
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kSum));
  auto plain_grads = torch::autograd::grad({plain * 3.0}, {hidden, weight});
  for (bool recompute : {false, true}) {  // gradients in forward, or recomputed in backward
    for (int64_t padding : {0, 16}) {     // the vocabulary of 50 as it is, or padded to 64
      SCOPED_TRACE(testing::Message() << "recompute " << recompute << " padding " << padding);
      auto chunked =
          lmtune::chunked_lm_loss_sum(hidden, weight, targets, chunks_of(8, recompute, padding));
      auto chunked_grads = torch::autograd::grad({chunked * 3.0}, {hidden, weight});
      EXPECT_NEAR(chunked.item<double>(), plain.item<double>(), 1e-4);
      EXPECT_TRUE(torch::allclose(chunked_grads[0], plain_grads[0], 1e-5, 1e-6));
      EXPECT_TRUE(torch::allclose(chunked_grads[1], plain_grads[1], 1e-5, 1e-6));
    }
  }
}

// Frozen embeddings tied to the output head: only the hidden states want a gradient.
TEST(ChunkedLoss, AFrozenOutputWeightGetsNoGradientAndTheHiddenStatesTheirs) {
  torch::manual_seed(1);
  auto hidden = torch::randn({21, 8}, torch::requires_grad());  // (N, C)
  auto weight = torch::randn({40, 8});                          // (V, C), frozen
  auto targets = torch::randint(40, {21}, torch::kLong);
  auto plain = torch::nn::functional::cross_entropy(
      torch::linear(hidden, weight), targets,
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
  auto expected = torch::autograd::grad({plain}, {hidden})[0];
  for (bool recompute : {false, true}) {
    auto chunked = lmtune::chunked_lm_loss_sum(hidden, weight, targets, chunks_of(8, recompute));
    chunked.backward();
    EXPECT_TRUE(torch::allclose(hidden.grad(), expected, 1e-5, 1e-6)) << recompute;
    EXPECT_FALSE(weight.grad().defined()) << recompute;
    hidden.mutable_grad().reset();
  }
}

TEST(ChunkedLoss, WithoutGradientsItIsTheForwardAlone) {
  auto hidden = torch::randn({20, 8}, torch::requires_grad());
  auto weight = torch::randn({30, 8}, torch::requires_grad());
  auto targets = torch::randint(30, {20}, torch::kLong);
  torch::NoGradGuard no_grad;  // as in evaluation
  auto loss = lmtune::chunked_lm_loss_sum(hidden, weight, targets, chunks_of(6));
  EXPECT_FALSE(loss.requires_grad());
  auto plain = torch::nn::functional::cross_entropy(
      torch::linear(hidden, weight), targets,
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
  EXPECT_NEAR(loss.item<double>(), plain.item<double>(), 1e-4);
}

TEST(ChunkedLoss, TrainingStepMatchesThePlainLoss) {
  GPT2 plain = lever_model(), chunked = lever_model();
  auto expected = backward_grads(plain, lmtune::Precision::kFp32);
  // The chunked path takes softmax's gradient as exp(x - max) / sum, the plain one as
  // exp(log_softmax): a few fp32 roundings apart (seen: 1.3e-6 on gradients of order 1).
  expect_equal_grads(backward_grads(chunked, lmtune::Precision::kFp32, /*loss_chunk_tokens=*/5),
                     expected, 1e-5);
}

TEST(FusedLoss, TrainingStepMatchesThePlainLossOnAPaddedVocabularyWholeOrInChunks) {
  GPT2 plain = lever_model(), fused = lever_model();
  fused->set_vocab_padding(64);  // 50 real columns of 64
  auto expected = backward_grads(plain, lmtune::Precision::kFp32);
  for (int64_t chunk_tokens : {0, 5}) {
    fused->zero_grad();
    SCOPED_TRACE(chunk_tokens);
    expect_equal_grads(backward_grads(fused, lmtune::Precision::kFp32, chunk_tokens, /*seed=*/11,
                                      /*fused_loss=*/true),
                       expected, 1e-5);
  }
  // Without gradients (evaluation) the plain loss, the same number.
  torch::NoGradGuard no_grad;
  auto batch = lever_batch();
  fused->eval();
  plain->eval();
  EXPECT_NEAR(
      lmtune::summed_token_loss(fused, batch, lmtune::Precision::kFp32, torch::kCPU, 0, true)
          .item<double>(),
      lmtune::summed_token_loss(plain, batch, lmtune::Precision::kFp32, torch::kCPU).item<double>(),
      1e-4);
}

TEST(ChunkedLoss, Bf16TrainingStepMatchesThePlainBf16Loss) {
  GPT2 plain = lever_model(), chunked = lever_model();
  auto expected = backward_grads(plain, lmtune::Precision::kBf16);
  auto actual = backward_grads(chunked, lmtune::Precision::kBf16, /*loss_chunk_tokens=*/5);
  ASSERT_EQ(actual.size(), expected.size());
  // The tied weight's gradient is summed chunk by chunk instead of in one bf16 product:
  // differences of bf16's precision (2^-8 = 0.4%) relative to the gradient's norm.
  for (const auto& [name, grad] : expected) {
    const double relative = (actual.at(name) - grad).norm().item<double>() /
                            std::max(grad.norm().item<double>(), 1e-12);
    EXPECT_LT(relative, 1e-2) << name;  // seen: 0 for all but wte (0.18%, summed over chunks)
  }
}

TEST(ChunkedLoss, AutoRuleChunksOnlyLargeLogits) {
  lmtune::TrainConfig train;
  train.micro_batch_size = 8;
  EXPECT_GT(lmtune::resolve_loss_chunk_tokens(train, 512, 50257, torch::kCPU),
            0);  // 823 MB of logits
  EXPECT_EQ(lmtune::resolve_loss_chunk_tokens(train, 32, 50, torch::kCPU), 0);
  train.chunked_loss = lmtune::ChunkedLoss::kOn;
  EXPECT_EQ(lmtune::resolve_loss_chunk_tokens(train, 32, 50, torch::kCPU), train.loss_chunk_tokens);
  train.chunked_loss = lmtune::ChunkedLoss::kOff;
  EXPECT_EQ(lmtune::resolve_loss_chunk_tokens(train, 512, 50257, torch::kCPU), 0);
}

// train.vocab_padding: auto pads to 64 on a GPU (1.45x for GPT-2 124M on an H200) and not on the
// CPU; a number is kept as it is, 1 meaning none.
TEST(VocabPadding, AutoPadsOnAGpuOnly) {
  const torch::Device gpu(torch::kCUDA, 0);
  EXPECT_EQ(lmtune::resolve_vocab_padding(lmtune::kAutoVocabPadding, gpu), 64);
  EXPECT_EQ(lmtune::resolve_vocab_padding(lmtune::kAutoVocabPadding, torch::kCPU), 0);
  EXPECT_EQ(lmtune::resolve_vocab_padding(1, gpu), 1);
  EXPECT_EQ(lmtune::resolve_vocab_padding(128, torch::kCPU), 128);
  EXPECT_EQ(lmtune::TrainConfig{}.vocab_padding, lmtune::kAutoVocabPadding);
}

TEST(Precision, Bf16TrainingStepRunsOnTheCpuCloseToFp32) {
  GPT2 model = lever_model(/*dropout=*/0.0);
  auto batch = lever_batch();
  auto fp32 = lmtune::summed_token_loss(model, batch, lmtune::Precision::kFp32, torch::kCPU);
  auto bf16 = lmtune::summed_token_loss(model, batch, lmtune::Precision::kBf16, torch::kCPU);
  EXPECT_EQ(bf16.scalar_type(), torch::kFloat32);
  EXPECT_NEAR(bf16.item<double>(), fp32.item<double>(), 0.01 * fp32.item<double>());
  bf16.backward();
  for (const auto& p : model->parameters()) {
    ASSERT_TRUE(p.grad().defined());
    EXPECT_EQ(p.grad().scalar_type(), torch::kFloat32);  // master weights and grads stay fp32
    EXPECT_TRUE(torch::isfinite(p.grad()).all().item<bool>());
  }
}
