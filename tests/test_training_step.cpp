// The shared training step (src/train/training_step.cpp): train.fused_clipping, which hands
// clipping and the loss scale's unscaling to the fused AdamW kernel, updates the weights and the
// optimizer's moments as the separate passes do, and still skips a step with an inf gradient.
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "lever_grads.h"
#include "lmtune/train/loss_scaler.h"
#include "lmtune/train/training_step.h"

namespace {

// A model, its optimizer and optionally a loss scaler, stepped through TrainingStep.
struct Stepper {
  explicit Stepper(bool fused_clipping, double max_grad_norm, double loss_scale = 0)
      : model(lever_model(/*dropout=*/0.0)),
        optimizer(lmtune::decay_groups(*model, /*weight_decay=*/0.1), lmtune::AdamWOptions{}) {
    if (loss_scale > 0)
      scaler = std::make_unique<lmtune::LossScaler>(loss_scale, /*growth_interval=*/1000,
                                                    /*backoff=*/0.5, torch::kCPU);
    lmtune::StepSettings settings{lmtune::Precision::kFp32, torch::kCPU,
                                  /*loss_chunk_tokens=*/0, max_grad_norm, fused_clipping};
    step = std::make_unique<lmtune::TrainingStep>(model, optimizer, settings, scaler.get());
  }
  lmtune::TrainingStep::Result run() { return step->run({lever_batch()}, /*lr=*/1e-2); }

  lmtune::GPT2 model;
  lmtune::AdamW optimizer;
  std::unique_ptr<lmtune::LossScaler> scaler;
  std::unique_ptr<lmtune::TrainingStep> step;
};

// The largest difference between the two optimizers' first moments, relative to their size: the
// first moment after a step is (1 - beta1) x the clipped gradient, so it shows the clipping that
// Adam's update, nearly blind to a gradient's scale, would hide.
double moment_difference(const lmtune::AdamW& a, const lmtune::AdamW& b) {
  double worst = 0;
  for (std::size_t i = 0; i < a.state().size(); ++i) {
    const auto& x = a.state()[i].exp_avg;
    const auto& y = b.state()[i].exp_avg;
    const double scale = std::max(y.abs().max().item<double>(), 1e-20);
    worst = std::max(worst, (x - y).abs().max().item<double>() / scale);
  }
  return worst;
}

// atol: the keys' share of c_attn's bias has a gradient that is zero but for rounding, which
// Adam's normalisation turns into updates that differ by a few 1e-7 between two roundings.
void expect_same_weights(lmtune::GPT2& a, lmtune::GPT2& b, double rtol) {
  auto left = a->named_parameters();
  auto right = b->named_parameters();
  for (const auto& item : left)
    EXPECT_TRUE(torch::allclose(item.value(), right[item.key()], rtol, /*atol=*/1e-6))
        << item.key() << ": max difference "
        << (item.value() - right[item.key()]).abs().max().item<double>() << " in values up to "
        << item.value().abs().max().item<double>();
}

TEST(TrainingStep, FusedClippingUpdatesAsSeparateClippingDoes) {
  Stepper separate(/*fused_clipping=*/false, /*max_grad_norm=*/0.05);
  Stepper fused(/*fused_clipping=*/true, /*max_grad_norm=*/0.05);
  Stepper unclipped(/*fused_clipping=*/false, /*max_grad_norm=*/0);
  for (int i = 0; i < 3; ++i) {
    auto a = separate.run();
    auto b = fused.run();
    unclipped.run();
    // The norm is of the gradients before clipping, and well above the limit: clipping acts.
    EXPECT_NEAR(b.grad_norm.item<double>(), a.grad_norm.item<double>(),
                1e-5 * a.grad_norm.item<double>());
    EXPECT_GT(a.grad_norm.item<double>(), 0.5);
    EXPECT_NEAR(b.loss.item<double>(), a.loss.item<double>(), 1e-5);
  }
  EXPECT_LT(moment_difference(fused.optimizer, separate.optimizer), 1e-4);
  // Against the unclipped run the moments differ by the clipping factor: the comparison above
  // would catch a fused path that skipped it.
  EXPECT_GT(moment_difference(unclipped.optimizer, separate.optimizer), 0.5);
  expect_same_weights(fused.model, separate.model, 1e-4);
}

TEST(TrainingStep, FusedClippingUnscalesTheLossScale) {
  Stepper separate(/*fused_clipping=*/false, /*max_grad_norm=*/0.05, /*loss_scale=*/1024);
  Stepper fused(/*fused_clipping=*/true, /*max_grad_norm=*/0.05, /*loss_scale=*/1024);
  Stepper fused_unclipped(/*fused_clipping=*/true, /*max_grad_norm=*/0, /*loss_scale=*/1024);
  Stepper plain_unclipped(/*fused_clipping=*/false, /*max_grad_norm=*/0);
  for (int i = 0; i < 2; ++i) {
    auto a = separate.run();
    auto b = fused.run();
    auto c = fused_unclipped.run();
    auto d = plain_unclipped.run();
    // Norms are reported unscaled, as without a scaler.
    EXPECT_NEAR(b.grad_norm.item<double>(), a.grad_norm.item<double>(),
                1e-5 * a.grad_norm.item<double>());
    EXPECT_NEAR(c.grad_norm.item<double>(), d.grad_norm.item<double>(),
                1e-5 * d.grad_norm.item<double>());
  }
  EXPECT_LT(moment_difference(fused.optimizer, separate.optimizer), 1e-4);
  EXPECT_LT(moment_difference(fused_unclipped.optimizer, plain_unclipped.optimizer), 1e-4);
  expect_same_weights(fused.model, separate.model, 1e-4);
}

TEST(TrainingStep, FusedClippingSkipsAStepWithAnInfGradient) {
  Stepper fused(/*fused_clipping=*/true, /*max_grad_norm=*/1.0, /*loss_scale=*/1024);
  fused.run();
  auto before = fused.model->named_parameters();
  std::map<std::string, torch::Tensor> weights;
  for (const auto& item : before) weights[item.key()] = item.value().detach().clone();
  const float steps = fused.optimizer.state()[0].step.item<float>();
  // An overflow in one gradient, as fp16 backward gives: injected through a hook on the weight.
  auto& wte = fused.model->wte->weight;
  auto hook = wte.register_hook([](torch::Tensor grad) {
    auto poisoned = grad.clone();
    poisoned.view(-1)[0] = std::numeric_limits<float>::infinity();
    return poisoned;
  });
  auto result = fused.run();
  wte.remove_hook(hook);
  EXPECT_FALSE(std::isfinite(result.grad_norm.item<double>()));
  for (const auto& item : fused.model->named_parameters())
    EXPECT_TRUE(torch::equal(item.value(), weights.at(item.key()))) << item.key();
  EXPECT_EQ(fused.optimizer.state()[0].step.item<float>(), steps);
  EXPECT_EQ(fused.scaler->take_skipped_steps(), 1);
  EXPECT_EQ(fused.scaler->state().scale, 512.0);  // backed off
}

}  // namespace
