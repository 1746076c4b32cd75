// Unit tests of sweep files: what load_sweep reads, and the problems it reports.
#include <fstream>

#include <gtest/gtest.h>

#include "lmtune/core/errors.h"
#include "lmtune/train/sweep.h"
#include "temp_dir_test.h"

namespace fs = std::filesystem;
using lmtune::ConfigError;
using lmtune::ParamKind;
using nlohmann::json;

namespace {

const char* kBase = R"(
base:
  model: {path: model}
  data: {train: train.txt, validation: val.txt, seq_len: 32}
  train: {max_steps: 40}
  eval: {every_steps: 10}
)";

}  // namespace

class SweepFileTest : public TempDirTest {
 protected:
  fs::path write(const std::string& name, const std::string& text) {
    fs::path path = dir_ / name;
    std::ofstream(path) << text;
    return path;
  }

  // The problems the sweep file reports, joined by newlines; empty when it is valid.
  std::string problems(const std::string& text) {
    try {
      lmtune::load_sweep(write("s.yaml", text));
    } catch (const ConfigError& e) {
      std::string joined;
      for (const auto& p : e.problems()) joined += p + "\n";
      return joined;
    }
    return "";
  }
};

TEST_F(SweepFileTest, ReadsTheSpaceSamplerAndPruning) {
  const auto spec = lmtune::load_sweep(write("s.yaml", std::string(kBase) + R"(
space:
  train.lr: {type: loguniform, low: 1.0e-5, high: 1.0e-2}
  train.warmup_steps: {type: int, low: 0, high: 20}
  train.schedule: {type: choice, values: [constant, cosine]}
trials: 12
sampler: {type: tpe, startup_trials: 4}
seed: 5
pruning: {metric: eval_loss, reduction_factor: 2}
output_dir: out
)"));
  // In key order, whatever the file's order.
  ASSERT_EQ(spec.space.size(), 3u);
  EXPECT_EQ(spec.space[0].key, "train.lr");
  EXPECT_EQ(spec.space[0].kind, ParamKind::kLogUniform);
  EXPECT_EQ(spec.space[1].key, "train.schedule");
  EXPECT_EQ(spec.space[1].values, (std::vector<json>{"constant", "cosine"}));
  EXPECT_EQ(spec.space[2].key, "train.warmup_steps");
  EXPECT_EQ(spec.space[2].kind, ParamKind::kInt);
  EXPECT_EQ(spec.space[2].low, 0);
  EXPECT_EQ(spec.space[2].high, 20);
  EXPECT_EQ(spec.trials, 12);
  EXPECT_EQ(spec.sampler.kind, lmtune::SamplerKind::kTpe);
  EXPECT_EQ(spec.sampler.startup_trials, 4);
  EXPECT_EQ(spec.sampler.candidates, 24);
  EXPECT_EQ(spec.sampler.seed, 5u);
  EXPECT_TRUE(spec.pruning.enabled);
  EXPECT_EQ(spec.pruning.min_steps, 10);  // the base's eval.every_steps
  EXPECT_EQ(spec.pruning.reduction_factor, 2);
  EXPECT_EQ(spec.output_dir, dir_ / "out");
  // The inline base's relative paths resolve against the sweep file's directory.
  EXPECT_EQ(spec.definition()["base"]["data"]["train"], (dir_ / "train.txt").string());
}

TEST_F(SweepFileTest, ABaseFileIsReadRelativeToTheSweepFile) {
  fs::create_directories(dir_ / "configs");
  write("configs/base.yaml", R"(
model: {path: model}
data: {train: train.txt, validation_split: 0.1}
)");
  const auto spec = lmtune::load_sweep(write("s.yaml", R"(
base: configs/base.yaml
space: {train.lr: {type: uniform, low: 1.0e-4, high: 1.0e-3}}
trials: 3
sampler: random
)"));
  EXPECT_EQ(spec.sampler.kind, lmtune::SamplerKind::kRandom);
  EXPECT_FALSE(spec.pruning.enabled);
  EXPECT_EQ(spec.definition()["base"]["data"]["train"], (dir_ / "configs" / "train.txt").string());
}

TEST_F(SweepFileTest, ReportsEachProblemWithItsKey) {
  const std::string text = problems(std::string(kBase) + R"(
space:
  train.learning_rate: {type: loguniform, low: 1.0e-5, high: 1.0e-2}
  train.lr: {type: loguniform, low: 0, high: 1.0e-2}
  train.warmup_steps: {type: uniform, low: 0, high: 10}
  train.beta1: {type: normal, low: 0.8, high: 0.99}
  lora.r: {type: choice, values: []}
trails: 3
sampler: {type: grid}
)");
  EXPECT_NE(text.find("s.yaml: space.train.learning_rate: not a config key: unknown key; did you "
                      "mean 'train.lr'?"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("space.train.lr.low: loguniform needs low > 0"), std::string::npos) << text;
  EXPECT_NE(
      text.find("space.train.warmup_steps.type: train.warmup_steps takes integers: use type: int"),
      std::string::npos)
      << text;
  EXPECT_NE(text.find("space.train.beta1.type: expected one of loguniform, uniform, int, choice"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("space.lora.r.values: expected a non-empty list"), std::string::npos) << text;
  EXPECT_NE(text.find("s.yaml: trails: unknown key; did you mean 'trials'?"), std::string::npos)
      << text;
  EXPECT_NE(text.find("sampler.type: expected tpe or random"), std::string::npos) << text;
}

TEST_F(SweepFileTest, BoundsThatMakeAnInvalidConfigAreCaughtBeforeAnyTrial) {
  const std::string text = problems(std::string(kBase) + R"(
space:
  train.beta2: {type: uniform, low: 0.9, high: 1.5}
trials: 3
)");
  EXPECT_NE(text.find("space.train.beta2: 1.5 gives an invalid config:"), std::string::npos)
      << text;
  EXPECT_NE(text.find("train.beta2: must be <= 1"), std::string::npos) << text;
  EXPECT_EQ(text.find("0.9 gives"), std::string::npos) << text;
}

TEST_F(SweepFileTest, NeedsAValidationLossAndEvaluationsToPrune) {
  const std::string no_validation = problems(R"(
base:
  model: {path: model}
  data: {train: train.txt}
  eval: {every_steps: 0}
space: {train.lr: {type: loguniform, low: 1.0e-5, high: 1.0e-2}}
trials: 3
pruning: {metric: eval_loss}
)");
  EXPECT_NE(no_validation.find("base: trials are scored on their validation loss"),
            std::string::npos)
      << no_validation;
  EXPECT_NE(no_validation.find("pruning: needs evaluations during training"), std::string::npos)
      << no_validation;
  const std::string no_run_dir = problems(std::string(kBase) + R"(
space: {run.output_dir: {type: choice, values: [a, b]}}
trials: 2
)");
  EXPECT_NE(no_run_dir.find("space.run.output_dir: the sweep gives every trial its own run"),
            std::string::npos)
      << no_run_dir;
}

TEST(TrialRecord, RoundTripsThroughJson) {
  lmtune::TrialRecord record;
  record.number = 3;
  record.state = "pruned";
  record.params = {{"train.lr", 0.00123}, {"lora.r", 16}};
  record.rungs = {{10, 2.5}, {30, 2.25}};
  record.value = 2.25;
  record.steps = 30;
  record.seconds = 12.5;
  record.run_dir = "/tmp/x/trial-0003";
  const auto back = lmtune::TrialRecord::from_json(json::parse(record.to_json().dump()));
  EXPECT_EQ(back.to_json(), record.to_json());
  EXPECT_EQ(back.rungs, record.rungs);
  EXPECT_EQ(*back.value, 2.25);
}
