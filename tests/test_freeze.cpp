// Layer freezing (src/train/freeze.cpp): frozen parameters get no gradient and no optimizer
// state and stay bit-identical through training steps; too many layers is an error naming the key.
#include <gtest/gtest.h>

#include "lmtune/core/errors.h"
#include "lmtune/model/gpt2.h"
#include "lmtune/train/evaluate.h"
#include "lmtune/train/freeze.h"
#include "lmtune/train/optim.h"
#include "tiny_gpt2.h"

using lmtune::GPT2;

namespace {

GPT2 freezable_model() {
  TinyShape shape;
  shape.n_layer = 3;
  return tiny_gpt2(shape, /*dropout=*/0.0, /*seed=*/3);
}

void accumulate_grads(GPT2& model) {
  auto batch = random_batch(/*vocab=*/50, /*rows=*/2, /*seq=*/12);
  lmtune::summed_token_loss(model, batch, lmtune::Precision::kFp32, torch::kCPU).backward();
}

}  // namespace

TEST(Freeze, FrozenParametersGetNoGradientNoStateAndDoNotChange) {
  GPT2 model = freezable_model();
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
  auto is_frozen = [](const std::string& name) {
    return name.rfind("wte", 0) == 0 || name.rfind("wpe", 0) == 0 || name.rfind("h.0.", 0) == 0 ||
           name.rfind("h.1.", 0) == 0;
  };
  for (int step = 0; step < 2; ++step) {
    accumulate_grads(model);
    for (const auto& p : model->named_parameters())
      EXPECT_EQ(p.value().grad().defined(), !is_frozen(p.key())) << p.key();
    adamw.step(/*lr=*/1e-2);
    adamw.zero_grad();
  }
  for (const auto& p : model->named_parameters()) {
    const std::string& name = p.key();
    const bool frozen = is_frozen(name);
    EXPECT_EQ(torch::equal(p.value(), before[name]), frozen) << name;
    EXPECT_EQ(p.value().requires_grad(), !frozen) << name;
  }
}

TEST(Freeze, MoreLayersThanTheModelHasIsAnErrorNamingTheKey) {
  GPT2 model = freezable_model();
  lmtune::TrainConfig train;
  train.freeze_layers = 4;
  try {
    lmtune::freeze_parameters(model, train);
    FAIL() << "expected a ConfigError";
  } catch (const lmtune::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("train.freeze_layers"), std::string::npos) << e.what();
  }
}

TEST(Freeze, NothingToFreezeChangesNothingAndSaysNothing) {
  GPT2 model = freezable_model();
  EXPECT_EQ(lmtune::freeze_parameters(model, lmtune::TrainConfig{}), "");
  for (const auto& p : model->named_parameters()) EXPECT_TRUE(p.value().requires_grad()) << p.key();
}
