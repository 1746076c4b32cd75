// Unit tests of AdamW (against LibTorch's reference implementation), schedules and clipping.
#include <cmath>

#include <gtest/gtest.h>

#include "lmtune/train/optim.h"

namespace {

struct TwoLayer : torch::nn::Module {
  TwoLayer() {
    fc = register_module("fc", torch::nn::Linear(4, 3));
    ln = register_module("ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({3})));
  }
  torch::Tensor forward(const torch::Tensor& x) { return ln(fc(x)); }
  torch::nn::Linear fc{nullptr};
  torch::nn::LayerNorm ln{nullptr};
};

TEST(Optim, DecayGroupsExcludeBiasesAndLayerNorm) {
  TwoLayer model;
  auto groups = lmtune::decay_groups(model, 0.1);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups[0].names, (std::vector<std::string>{"fc.weight"}));
  EXPECT_DOUBLE_EQ(groups[0].weight_decay, 0.1);
  EXPECT_EQ(groups[1].names, (std::vector<std::string>{"fc.bias", "ln.weight", "ln.bias"}));
  EXPECT_DOUBLE_EQ(groups[1].weight_decay, 0.0);
}

TEST(Optim, AdamWMatchesLibTorchsReference) {
  torch::manual_seed(0);
  TwoLayer ours, reference;
  {
    torch::NoGradGuard no_grad;
    for (auto& p : ours.named_parameters()) reference.named_parameters()[p.key()].copy_(p.value());
  }
  lmtune::AdamW adamw(lmtune::decay_groups(ours, 0.1), {0.9, 0.95, 1e-8});
  auto ref_groups = lmtune::decay_groups(reference, 0.1);
  std::vector<torch::optim::OptimizerParamGroup> torch_groups;
  for (const auto& g : ref_groups) {
    auto options = std::make_unique<torch::optim::AdamWOptions>(1e-2);
    options->betas({0.9, 0.95}).eps(1e-8).weight_decay(g.weight_decay);
    torch_groups.emplace_back(g.params, std::move(options));
  }
  torch::optim::AdamW torch_adamw(torch_groups, torch::optim::AdamWOptions(1e-2));
  for (int step = 0; step < 5; ++step) {
    auto x = torch::randn({8, 4});
    ours.forward(x).pow(2).sum().backward();
    reference.forward(x).pow(2).sum().backward();
    adamw.step(1e-2);
    adamw.zero_grad();
    torch_adamw.step();
    torch_adamw.zero_grad();
  }
  for (auto& p : ours.named_parameters())
    EXPECT_TRUE(torch::allclose(p.value(), reference.named_parameters()[p.key()], 1e-5, 1e-6))
        << p.key();
  EXPECT_EQ(adamw.state()[0].step.item<float>(), 5.0f);
}

TEST(Optim, Schedules) {
  lmtune::TrainConfig train;
  train.lr = 1.0;
  train.min_lr = 0.1;
  train.max_steps = 109;  // 100 decay steps after warmup
  train.warmup_steps = 9;
  EXPECT_DOUBLE_EQ(lmtune::learning_rate(train, 0), 0.1);  // (0 + 1) / (9 + 1)
  EXPECT_DOUBLE_EQ(lmtune::learning_rate(train, 8), 0.9);
  train.schedule = lmtune::Schedule::kCosine;
  EXPECT_DOUBLE_EQ(lmtune::learning_rate(train, 9), 1.0);
  EXPECT_NEAR(lmtune::learning_rate(train, 9 + 50), 0.55, 1e-12);  // halfway: min + (max - min) / 2
  EXPECT_NEAR(lmtune::learning_rate(train, 109), 0.1, 1e-12);
  train.schedule = lmtune::Schedule::kLinear;
  EXPECT_NEAR(lmtune::learning_rate(train, 9 + 25), 1.0 - 0.9 * 0.25, 1e-12);
  train.schedule = lmtune::Schedule::kConstant;
  EXPECT_DOUBLE_EQ(lmtune::learning_rate(train, 100), 1.0);
}

TEST(Optim, ClipGradNormScalesToTheLimit) {
  auto a = torch::zeros({2}, torch::requires_grad());
  auto b = torch::zeros({1}, torch::requires_grad());
  a.mutable_grad() = torch::tensor({3.0f, 0.0f});
  b.mutable_grad() = torch::tensor({4.0f});
  auto norm = lmtune::clip_grad_norm({a, b}, 1.0);
  EXPECT_NEAR(norm.item<double>(), 5.0, 1e-6);
  EXPECT_NEAR(a.grad()[0].item<double>(), 0.6, 1e-5);
  EXPECT_NEAR(b.grad()[0].item<double>(), 0.8, 1e-5);
  auto unclipped = lmtune::clip_grad_norm({a, b}, 10.0);
  EXPECT_NEAR(unclipped.item<double>(), 1.0, 1e-5);
  EXPECT_NEAR(a.grad()[0].item<double>(), 0.6, 1e-5);
}

}  // namespace
