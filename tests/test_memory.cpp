// Unit tests of the memory levers: activation checkpointing, the chunked loss, layer freezing,
// the fp16 loss scaler and the non-finite step guard, and a bf16 training step on the CPU.
#include <gtest/gtest.h>

#include "lmtune/core/errors.h"
#include "lmtune/model/activation_checkpoint.h"
#include "lmtune/model/chunked_loss.h"
#include "lmtune/model/gpt2.h"
#include "lmtune/train/evaluate.h"
#include "lmtune/train/freeze.h"
#include "lmtune/train/loss_scaler.h"
#include "lmtune/train/optim.h"
#include "lmtune/train/precision.h"
#include "tiny_gpt2.h"

using lmtune::GPT2;

namespace {

GPT2 lever_model(double dropout = 0.1) {
  TinyShape shape;
  shape.n_layer = 3;
  return tiny_gpt2(shape, dropout, /*seed=*/3);
}

lmtune::Batch tiny_batch() {
  return random_batch(/*vocab=*/50, /*rows=*/2, /*seq=*/12);
}

// Gradients of one training step of `model`, with the random generator at `seed`.
std::map<std::string, torch::Tensor> step_grads(GPT2& model, lmtune::Precision precision,
                                                int64_t chunk_tokens = 0, uint64_t seed = 11) {
  torch::manual_seed(seed);
  auto batch = tiny_batch();
  lmtune::summed_token_loss(model, batch, precision, torch::kCPU, chunk_tokens).backward();
  std::map<std::string, torch::Tensor> grads;
  for (const auto& p : model->named_parameters())
    if (p.value().grad().defined()) grads[p.key()] = p.value().grad().clone();
  return grads;
}

void expect_same_grads(const std::map<std::string, torch::Tensor>& a,
                       const std::map<std::string, torch::Tensor>& b, double atol) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, grad] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    EXPECT_TRUE(torch::allclose(grad, b.at(name), /*rtol=*/0, atol))
        << name << ": max difference " << (grad - b.at(name)).abs().max().item<double>();
  }
}

}  // namespace

TEST(ActivationCheckpoint, GradientsEqualThePlainRunWithDropout) {
  GPT2 plain = lever_model(), checkpointed = lever_model();
  checkpointed->set_gradient_checkpointing(1);
  auto expected = step_grads(plain, lmtune::Precision::kFp32);
  expect_same_grads(step_grads(checkpointed, lmtune::Precision::kFp32), expected, 1e-6);
}

TEST(ActivationCheckpoint, EveryOtherBlockAndBf16AutocastMatchThePlainRun) {
  GPT2 plain = lever_model(), checkpointed = lever_model();
  checkpointed->set_gradient_checkpointing(2);
  auto expected = step_grads(plain, lmtune::Precision::kBf16);
  expect_same_grads(step_grads(checkpointed, lmtune::Precision::kBf16), expected, 1e-5);
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
    auto chunked =
        lmtune::chunked_lm_loss_sum(hidden, weight, targets, /*chunk_tokens=*/8, recompute);
    auto chunked_grads = torch::autograd::grad({chunked * 3.0}, {hidden, weight});
    EXPECT_NEAR(chunked.item<double>(), plain.item<double>(), 1e-4) << recompute;
    EXPECT_TRUE(torch::allclose(chunked_grads[0], plain_grads[0], 1e-5, 1e-6)) << recompute;
    EXPECT_TRUE(torch::allclose(chunked_grads[1], plain_grads[1], 1e-5, 1e-6)) << recompute;
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
    auto chunked =
        lmtune::chunked_lm_loss_sum(hidden, weight, targets, /*chunk_tokens=*/8, recompute);
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
  auto loss = lmtune::chunked_lm_loss_sum(hidden, weight, targets, /*chunk_tokens=*/6);
  EXPECT_FALSE(loss.requires_grad());
  auto plain = torch::nn::functional::cross_entropy(
      torch::linear(hidden, weight), targets,
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
  EXPECT_NEAR(loss.item<double>(), plain.item<double>(), 1e-4);
}

TEST(ChunkedLoss, TrainingStepMatchesThePlainLoss) {
  GPT2 plain = lever_model(), chunked = lever_model();
  auto expected = step_grads(plain, lmtune::Precision::kFp32);
  expect_same_grads(step_grads(chunked, lmtune::Precision::kFp32, /*chunk_tokens=*/5), expected,
                    1e-6);
}

TEST(ChunkedLoss, Bf16TrainingStepMatchesThePlainBf16Loss) {
  GPT2 plain = lever_model(), chunked = lever_model();
  auto expected = step_grads(plain, lmtune::Precision::kBf16);
  auto actual = step_grads(chunked, lmtune::Precision::kBf16, /*chunk_tokens=*/5);
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

TEST(LossScaler, InfGradientSkipsTheStepAndBacksOff) {
  auto p = torch::ones({4}, torch::requires_grad());
  lmtune::ParamGroup group{{"p"}, {p}, 0.0};
  lmtune::AdamW adamw({group}, {});
  lmtune::LossScaler scaler(/*init_scale=*/1024, /*growth_interval=*/2, /*backoff=*/0.5,
                            torch::kCPU);
  p.mutable_grad() = torch::full({4}, 2048.0);
  p.mutable_grad()[1] = std::numeric_limits<float>::infinity();  // the injected overflow
  auto found_inf = torch::zeros({});
  scaler.unscale({p}, found_inf);
  EXPECT_EQ(found_inf.item<float>(), 1.0f);
  adamw.step(/*lr=*/0.1, found_inf);
  scaler.update(found_inf);
  EXPECT_TRUE(torch::equal(p, torch::ones({4})));
  EXPECT_EQ(adamw.state()[0].step.item<float>(), 0.0f);
  EXPECT_EQ(scaler.state().scale, 512.0);
  EXPECT_EQ(scaler.state().growth_tracker, 0);
  EXPECT_EQ(scaler.take_skipped_steps(), 1);
  EXPECT_EQ(scaler.take_skipped_steps(), 0);
}

TEST(LossScaler, UnscalesAndGrowsAfterTheInterval) {
  auto p = torch::ones({4}, torch::requires_grad());
  lmtune::LossScaler scaler(/*init_scale=*/8, /*growth_interval=*/3, /*backoff=*/0.5, torch::kCPU);
  for (int step = 0; step < 3; ++step) {
    p.mutable_grad() = torch::full({4}, 16.0);
    auto found_inf = torch::zeros({});
    scaler.unscale({p}, found_inf);
    EXPECT_EQ(found_inf.item<float>(), 0.0f);
    EXPECT_TRUE(torch::equal(p.grad(), torch::full({4}, 2.0)));
    scaler.update(found_inf);
  }
  EXPECT_EQ(scaler.state().scale, 16.0);
  scaler.set_state({/*scale=*/4.0, /*growth_tracker=*/2});
  EXPECT_EQ(scaler.state().scale, 4.0);
  EXPECT_EQ(scaler.state().growth_tracker, 2);
}

TEST(NonFiniteStreak, CountsConsecutiveNonFiniteSteps) {
  lmtune::NonFiniteStreak streak(torch::kCPU);
  for (float loss : {1.0f, NAN, INFINITY, 2.0f, NAN, NAN})
    streak.record(lmtune::not_finite(torch::full({}, loss)));
  EXPECT_EQ(streak.length(), 2);
}

TEST(Freeze, FrozenParametersGetNoGradientNoStateAndDoNotChange) {
  GPT2 model = lever_model(/*dropout=*/0.0);
  lmtune::TrainConfig train;
  train.freeze_embeddings = true;
  train.freeze_layers = 2;
  EXPECT_NE(lmtune::freeze_parameters(model, train).find("lm_head"), std::string::npos);
  std::map<std::string, torch::Tensor> before;
  for (const auto& p : model->named_parameters()) before[p.key()] = p.value().clone();
  lmtune::AdamW adamw(lmtune::decay_groups(*model, 0.1), {});
  for (const auto& state : adamw.state()) {
    EXPECT_NE(state.name.rfind("wte", 0), 0u);
    EXPECT_NE(state.name.rfind("h.1.", 0), 0u);
  }
  for (int step = 0; step < 2; ++step) {
    step_grads(model, lmtune::Precision::kFp32);
    adamw.step(/*lr=*/1e-2);
    adamw.zero_grad();
  }
  for (const auto& p : model->named_parameters()) {
    const std::string& name = p.key();
    bool frozen = name.rfind("wte", 0) == 0 || name.rfind("wpe", 0) == 0 ||
                  name.rfind("h.0.", 0) == 0 || name.rfind("h.1.", 0) == 0;
    EXPECT_EQ(torch::equal(p.value(), before[name]), frozen) << name;
    EXPECT_EQ(p.value().requires_grad(), !frozen) << name;
  }
}

TEST(Freeze, MoreLayersThanTheModelHasIsAnErrorNamingTheKey) {
  GPT2 model = lever_model();
  lmtune::TrainConfig train;
  train.freeze_layers = 4;
  try {
    lmtune::freeze_parameters(model, train);
    FAIL() << "expected a ConfigError";
  } catch (const lmtune::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("train.freeze_layers"), std::string::npos) << e.what();
  }
}

TEST(Precision, Bf16TrainingStepRunsOnTheCpuCloseToFp32) {
  GPT2 model = lever_model(/*dropout=*/0.0);
  auto batch = tiny_batch();
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
