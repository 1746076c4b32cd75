// The fp16 dynamic loss scaler and the non-finite step count (src/train/loss_scaler.cpp): an
// overflowing step is skipped and backs the scale off, clean steps grow it again, and its state
// round-trips as a checkpoint saves it.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "lmtune/train/loss_scaler.h"
#include "lmtune/train/optim.h"

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

// The cycle a run on a GPU goes through: overflow, back off, two clean steps, grow; the loss is
// multiplied by the scale of the moment and the gradients divided by it.
TEST(LossScaler, BacksOffOnOverflowAndGrowsAgainAfterTheInterval) {
  auto p = torch::zeros({2}, torch::requires_grad());
  lmtune::LossScaler scaler(/*init_scale=*/256, /*growth_interval=*/2, /*backoff=*/0.25,
                            torch::kCPU);
  const auto loss = torch::full({}, 3.0);
  std::vector<double> scales;
  for (bool overflow : {true, false, false, false, true, false}) {
    scales.push_back(scaler.state().scale);
    EXPECT_EQ(scaler.scale(loss).item<double>(), 3.0 * scales.back());
    p.mutable_grad() = torch::full({2}, 5.0 * scales.back());
    if (overflow) p.mutable_grad()[0] = std::numeric_limits<float>::quiet_NaN();
    auto found_inf = torch::zeros({});
    scaler.unscale({p}, found_inf);
    EXPECT_EQ(found_inf.item<float>(), overflow ? 1.0f : 0.0f);
    if (!overflow) {
      EXPECT_TRUE(torch::equal(p.grad(), torch::full({2}, 5.0)));
    }
    scaler.update(found_inf);
  }
  // 256, backed off to 64, 64 again (one clean step), grown to 128 after two, backed off to 32.
  EXPECT_EQ(scales, (std::vector<double>{256, 64, 64, 128, 128, 32}));
  EXPECT_EQ(scaler.state().scale, 32.0);
  EXPECT_EQ(scaler.state().growth_tracker, 1);
  EXPECT_EQ(scaler.take_skipped_steps(), 2);
}

TEST(LossScaler, ARestoredStateContinuesAsTheSavedOneWould) {
  lmtune::LossScaler saved(/*init_scale=*/16, /*growth_interval=*/3, /*backoff=*/0.5, torch::kCPU);
  lmtune::LossScaler restored(/*init_scale=*/16, 3, 0.5, torch::kCPU);
  auto clean = torch::zeros({});
  saved.update(clean);
  saved.update(clean);
  restored.set_state(saved.state());
  for (auto* scaler : {&saved, &restored}) scaler->update(clean);  // the third clean step grows
  EXPECT_EQ(saved.state().scale, 32.0);
  EXPECT_EQ(restored.state().scale, saved.state().scale);
  EXPECT_EQ(restored.state().growth_tracker, saved.state().growth_tracker);
}
