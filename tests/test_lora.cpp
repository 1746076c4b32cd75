// LoRA adapters on a model's projections (lmtune/model/lora.h): initialisation, targets, merging,
// and a frozen base that training leaves bit-identical.
#include <gtest/gtest.h>

#include "lmtune/core/errors.h"
#include "lmtune/model/lora.h"
#include "lmtune/model/projection.h"
#include "lmtune/train/optim.h"
#include "lmtune/train/training_step.h"
#include "tiny_gpt2.h"

namespace lmtune {
namespace {

LoraSpec spec_of(std::vector<std::string> targets, int64_t r = 4) {
  LoraSpec spec;
  spec.r = r;
  spec.alpha = 8;
  spec.target_modules = std::move(targets);
  return spec;
}

std::vector<std::string> adapted(const CausalLMImpl& model) {
  std::vector<std::string> names;
  for (const auto& item : model.named_parameters())
    if (is_adapter_parameter(item.key()) && item.key().find(kLoraA) != std::string::npos)
      names.push_back(item.key());
  return names;
}

TEST(Lora, FreshAdaptersLeaveTheOutputsUnchangedAndFreezeTheBase) {
  GPT2 model = tiny_gpt2({}, 0.0, 1);
  model->eval();
  auto idx = random_batch(50, 2, 8).inputs;
  torch::NoGradGuard no_grad;
  auto before = model->forward(idx);
  AdapterSummary summary = attach_lora(*model, spec_of({}));
  EXPECT_EQ(summary.target_names, std::vector<std::string>{"c_attn"});  // PEFT's GPT-2 default
  EXPECT_EQ(summary.adapted_layers, 2);
  EXPECT_TRUE(torch::equal(model->forward(idx), before));
  for (const auto& item : model->named_parameters())
    EXPECT_EQ(item.value().requires_grad(), is_adapter_parameter(item.key())) << item.key();
}

TEST(Lora, AllLinearAdaptsEveryProjectionButTheOutputHead) {
  TinyShape untied;
  untied.tied = false;
  GPT2 model = tiny_gpt2(untied, 0.0, 1);
  AdapterSummary summary = attach_lora(*model, spec_of({"all-linear"}));
  EXPECT_EQ(summary.adapted_layers, 2 * 4);  // c_attn, attn.c_proj, c_fc, mlp.c_proj per block
  EXPECT_FALSE(model->lm_head->has_lora());
  EXPECT_EQ(summary.target_names, (std::vector<std::string>{"c_attn", "c_fc", "c_proj"}));
}

TEST(Lora, ANameMatchesTheModulesItEnds) {
  GPT2 model = tiny_gpt2({}, 0.0, 1);
  attach_lora(*model, spec_of({"attn.c_proj"}));
  EXPECT_EQ(adapted(*model),
            (std::vector<std::string>{"h.0.attn.c_proj.lora_A", "h.1.attn.c_proj.lora_A"}));
}

TEST(Lora, ATargetThatMatchesNothingIsAConfigErrorListingTheLayers) {
  GPT2 model = tiny_gpt2({}, 0.0, 1);
  try {
    attach_lora(*model, spec_of({"q_proj"}));
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("'q_proj' matches no linear layer"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("c_attn, c_fc, c_proj"), std::string::npos);
  }
}

TEST(Lora, MergingGivesTheOutputsOfTheAdaptedModel) {
  GPT2 model = tiny_gpt2({}, 0.0, 1);
  model->eval();
  LoraSpec spec = spec_of({"c_attn", "c_fc"});
  spec.use_rslora = true;
  attach_lora(*model, spec);
  torch::NoGradGuard no_grad;
  for (auto& item : model->named_parameters())
    if (is_adapter_parameter(item.key())) item.value().normal_(0, 0.2);
  auto idx = random_batch(50, 2, 8).inputs;
  auto adapted_logits = model->forward(idx);
  merge_lora(*model);
  EXPECT_FALSE(has_lora(*model));
  EXPECT_TRUE(torch::allclose(model->forward(idx), adapted_logits, 1e-4, 1e-5));
}

TEST(Lora, TrainingWithWeightDecayLeavesTheFrozenBaseBitIdentical) {
  GPT2 model = tiny_gpt2({}, 0.0, 1);
  std::map<std::string, torch::Tensor> base;
  for (const auto& item : model->named_parameters()) base[item.key()] = item.value().clone();
  LoraSpec spec = spec_of({"all-linear"});
  spec.modules_to_save = {"ln_f"};
  attach_lora(*model, spec);
  AdamW optimizer(decay_groups(*model, /*weight_decay=*/0.5), AdamWOptions{});
  TrainingStep step(model, optimizer, StepSettings{Precision::kFp32, torch::kCPU, 0, 1.0});
  for (int i = 0; i < 3; ++i) step.run({random_batch(50, 2, 8)}, /*lr=*/1e-2);
  int64_t optimized = 0;
  for (const auto& s : optimizer.state()) {
    EXPECT_TRUE(is_adapter_parameter(s.name) || s.name.rfind("ln_f.", 0) == 0) << s.name;
    ++optimized;
  }
  EXPECT_EQ(optimized, 2 * 4 * 2 + 2);  // A and B of 8 projections, ln_f's weight and bias
  for (const auto& item : model->named_parameters()) {
    if (is_adapter_parameter(item.key())) continue;
    const bool saved = item.key().rfind("ln_f.", 0) == 0;
    EXPECT_EQ(torch::equal(item.value(), base[item.key()]), !saved) << item.key();
  }
}

}  // namespace
}  // namespace lmtune
