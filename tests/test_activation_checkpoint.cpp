// Activation checkpointing (src/model/activation_checkpoint.cpp): gradients equal the plain run's
// (dropout and bf16 autocast included), each checkpointed block is recomputed once per backward,
// and until backward only the blocks' inputs are held.
#include <gtest/gtest.h>

#include "lever_grads.h"
#include "lmtune/core/host_allocator.h"
#include "lmtune/model/activation_checkpoint.h"
#include "lmtune/model/gpt2.h"
#include "lmtune/train/evaluate.h"

using lmtune::GPT2;

TEST(ActivationCheckpoint, GradientsEqualThePlainRunWithDropout) {
  GPT2 plain = lever_model(), checkpointed = lever_model();
  checkpointed->set_gradient_checkpointing(1);
  auto expected = backward_grads(plain, lmtune::Precision::kFp32);
  expect_equal_grads(backward_grads(checkpointed, lmtune::Precision::kFp32), expected, 1e-6);
}

TEST(ActivationCheckpoint, EveryOtherBlockAndBf16AutocastMatchThePlainRun) {
  GPT2 plain = lever_model(), checkpointed = lever_model();
  checkpointed->set_gradient_checkpointing(2);
  auto expected = backward_grads(plain, lmtune::Precision::kBf16);
  expect_equal_grads(backward_grads(checkpointed, lmtune::Precision::kBf16), expected, 1e-5);
}

TEST(ActivationCheckpoint, ParametersGetGradientsWhenTheInputNeedsNone) {
  torch::nn::Linear layer(4, 4);
  auto x = torch::randn({3, 4});  // no requires_grad, like activations after frozen layers
  auto fn = [&](const torch::Tensor& in) { return torch::tanh(layer(in)); };
  lmtune::checkpoint_activation(fn, x, layer->parameters()).sum().backward();
  auto expected_weight = layer->weight.grad().clone();
  layer->zero_grad();
  fn(x).sum().backward();
  EXPECT_TRUE(torch::allclose(expected_weight, layer->weight.grad(), 0, 1e-7));
}

// Checkpointing every k of 3 blocks checkpoints blocks 0, k, 2k, ...: 3, 2 and 1 blocks for
// k = 1, 2, 3. Each is rerun once per backward, so 4 micro-batches make 4 times that; without
// checkpointing, in evaluation mode or without grad mode nothing is rerun.
TEST(ActivationCheckpoint, EachCheckpointedBlockIsRecomputedOncePerBackward) {
  auto recomputed = [](int64_t every, bool training, bool grad) {
    GPT2 model = lever_model(/*dropout=*/0.0);
    model->set_gradient_checkpointing(every);
    model->train(training);
    torch::AutoGradMode grad_mode(grad);
    const int64_t before = lmtune::activation_recomputations();
    for (int micro = 0; micro < 4; ++micro) {
      auto loss =
          lmtune::summed_token_loss(model, lever_batch(), lmtune::Precision::kFp32, torch::kCPU);
      if (grad) loss.backward();
    }
    return lmtune::activation_recomputations() - before;
  };
  EXPECT_EQ(recomputed(/*every=*/1, true, true), 3 * 4);
  EXPECT_EQ(recomputed(/*every=*/2, true, true), 2 * 4);
  EXPECT_EQ(recomputed(/*every=*/3, true, true), 1 * 4);
  EXPECT_EQ(recomputed(/*every=*/0, true, true), 0);
  EXPECT_EQ(recomputed(/*every=*/1, /*training=*/false, true), 0);
  EXPECT_EQ(recomputed(/*every=*/1, true, /*grad=*/false), 0);
}

// Between forward and backward a plain run holds every block's activations; a checkpointed one
// only each block's input (B, T, C). Counted in the caching allocator's live bytes, which see
// every tensor of 1 MiB or more: with B x T = 1024 tokens and C = 256, a (B, T, C) fp32 tensor is
// exactly 1 MiB, the MLP's (B, T, 4C) ones 4 MiB.
TEST(ActivationCheckpoint, UntilBackwardOnlyTheBlockInputsAreHeld) {
  ASSERT_TRUE(lmtune::host_cache_installed());
  constexpr int64_t kLayers = 4, kWidth = 256, kRows = 8, kSeq = 128;
  constexpr int64_t kMiB = int64_t{1} << 20;
  auto held_after_forward = [&](bool checkpointing) {
    TinyShape shape;
    shape.n_layer = kLayers;
    shape.n_embd = kWidth;
    shape.n_positions = kSeq;
    GPT2 model = tiny_gpt2(shape, /*dropout=*/0.0, /*seed=*/3);
    model->set_gradient_checkpointing(checkpointing ? 1 : 0);
    auto batch = random_batch(/*vocab=*/50, kRows, kSeq);
    const int64_t before = lmtune::host_cache_stats().live_bytes;
    auto loss = lmtune::summed_token_loss(model, batch, lmtune::Precision::kFp32, torch::kCPU);
    const int64_t held = lmtune::host_cache_stats().live_bytes - before;
    loss.backward();
    return held;
  };
  const int64_t plain = held_after_forward(false), checkpointed = held_after_forward(true);
  // Per block a plain run keeps at least its two layer norms' inputs (2 MiB), attention's output
  // (1 MiB) and the MLP's up projection and GELU (8 MiB): 11 MiB x 4 blocks = 44 MiB at least.
  EXPECT_GE(plain, kLayers * 11 * kMiB);
  // Checkpointed: the 4 block inputs, and after the blocks the final norm's input and output and
  // the logits (1024 x 50 floats, under 1 MiB, not counted): 6 MiB, with 2 MiB to spare.
  EXPECT_LE(checkpointed, (kLayers + 2 + 2) * kMiB);
}
