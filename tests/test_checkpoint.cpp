// Checkpoint bookkeeping (src/train/checkpoint.cpp) without a model: retention (the newest and the
// best by validation loss kept, leftovers of crashed saves removed) and the comparison of a
// checkpoint's config with a resume's (which keys may change).
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <optional>
#include <set>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "lmtune/core/config.h"
#include "lmtune/train/checkpoint.h"
#include "temp_dir_test.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

class Retention : public TempDirTest {
 protected:
  // checkpoints/step-N with a trainer_state.json recording `eval_loss` (none: null) and, when
  // `complete`, the COMPLETE marker (retention reads nothing else).
  void make_checkpoint(int64_t step, std::optional<double> eval_loss, bool complete = true) {
    const fs::path dir = lmtune::checkpoint_dir(dir_, step);
    fs::create_directories(dir);
    std::ofstream(dir / "trainer_state.json")
        << json{{"step", step}, {"eval_loss", eval_loss ? json(*eval_loss) : json(nullptr)}};
    if (complete) std::ofstream(dir / "COMPLETE") << "{}";
  }

  std::set<std::string> left() const {
    std::set<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_ / "checkpoints"))
      names.insert(entry.path().filename().string());
    return names;
  }
};

TEST_F(Retention, KeepsTheNewestAndAnOlderBest) {
  make_checkpoint(2, 1.50);
  make_checkpoint(4, 0.90);  // the best, older than the two newest
  make_checkpoint(6, 1.20);
  make_checkpoint(8, 1.40);
  make_checkpoint(10, std::nullopt);  // a time-based save between evaluations
  lmtune::apply_retention(dir_, /*keep_last=*/2);
  EXPECT_EQ(left(), (std::set<std::string>{"step-00000004", "step-00000008", "step-00000010"}));
}

TEST_F(Retention, ABestAmongTheNewestKeepsNothingMore) {
  make_checkpoint(2, 1.50);
  make_checkpoint(4, 1.20);
  make_checkpoint(6, 0.70);  // the best is the newest
  lmtune::apply_retention(dir_, /*keep_last=*/1);
  EXPECT_EQ(left(), (std::set<std::string>{"step-00000006"}));
}

TEST_F(Retention, WithoutEvaluationsOnlyTheNewestStay) {
  for (int64_t step : {1, 2, 3, 4, 5}) make_checkpoint(step, std::nullopt);
  lmtune::apply_retention(dir_, /*keep_last=*/3);
  EXPECT_EQ(left(), (std::set<std::string>{"step-00000003", "step-00000004", "step-00000005"}));
}

// An incomplete checkpoint neither counts among the newest nor is the best, however low its loss.
TEST_F(Retention, IncompleteCheckpointsAreNotCountedAsKept) {
  make_checkpoint(2, 1.0);
  make_checkpoint(4, 2.0);
  make_checkpoint(6, 0.1, /*complete=*/false);
  lmtune::apply_retention(dir_, /*keep_last=*/1);
  const auto names = left();
  EXPECT_TRUE(names.count("step-00000004")) << "the newest complete one";
  EXPECT_TRUE(names.count("step-00000002")) << "the best complete one";
}

TEST_F(Retention, RemovesOtherProcessesSaveLeftoversButNotItsOwn) {
  make_checkpoint(2, std::nullopt);
  const std::string other = ".tmp-step-3-" + std::to_string(::getpid() + 1);
  const std::string own = ".tmp-step-3-" + std::to_string(::getpid());
  for (const auto& name : {other, own}) {
    fs::create_directories(dir_ / "checkpoints" / name);
    std::ofstream(dir_ / "checkpoints" / name / "model.safetensors") << "half written";
  }
  lmtune::apply_retention(dir_, /*keep_last=*/3);
  EXPECT_EQ(left(), (std::set<std::string>{"step-00000002", own}));
}

json saved_config() {
  return json::parse(R"({
    "run": {"output_dir": "runs/a", "seed": 7, "threads": 2},
    "train": {"lr": 0.003, "max_steps": 10, "epochs": 0, "micro_batch_size": 2},
    "eval": {"every_steps": 5, "patience": 0},
    "checkpoint": {"every_steps": 5, "every_minutes": 0},
    "data": {"train": "t.txt", "seq_len": 32, "cache_dir": ""}})");
}

}  // namespace

TEST(CompareConfigs, TheSameConfigChangesNothing) {
  const auto changes = lmtune::compare_configs(saved_config(), saved_config());
  EXPECT_TRUE(changes.refused.empty());
  EXPECT_TRUE(changes.accepted.empty());
}

TEST(CompareConfigs, KeysThatChangeTheMathsAreRefusedWithBothValues) {
  json now = saved_config();
  now["train"]["lr"] = 0.001;
  now["run"]["seed"] = 8;
  now["data"]["seq_len"] = 64;
  const auto changes = lmtune::compare_configs(saved_config(), now);
  EXPECT_EQ(changes.refused, (std::vector<std::string>{"data.seq_len: 32 -> 64", "run.seed: 7 -> 8",
                                                       "train.lr: 0.003 -> 0.001"}));
  EXPECT_TRUE(changes.accepted.empty());
}

TEST(CompareConfigs, LengthOutputsAndIntervalsMayChange) {
  json now = saved_config();
  now["train"]["max_steps"] = 20;
  now["train"]["epochs"] = 2;
  now["run"]["output_dir"] = "runs/b";
  now["run"]["threads"] = 1;
  now["data"]["cache_dir"] = "/tmp/cache";
  now["eval"]["patience"] = 3;                // under "eval."
  now["checkpoint"]["every_minutes"] = 30.0;  // under "checkpoint."
  const auto changes = lmtune::compare_configs(saved_config(), now);
  EXPECT_TRUE(changes.refused.empty());
  EXPECT_EQ(changes.accepted.size(), 7u);
  EXPECT_NE(
      std::find(changes.accepted.begin(), changes.accepted.end(), "train.max_steps: 10 -> 20"),
      changes.accepted.end());
}

// The allow-list matches whole keys, and sections by their dotted prefix only.
TEST(CompareConfigs, KeysAreMatchedWholeNotByTheirBeginning) {
  json saved = saved_config(), now = saved_config();
  saved["train"]["max_steps_extra"] = 1;
  now["train"]["max_steps_extra"] = 2;
  saved["evaluation"] = {{"every_steps", 1}};
  now["evaluation"] = {{"every_steps", 2}};
  const auto changes = lmtune::compare_configs(saved, now);
  EXPECT_EQ(changes.refused, (std::vector<std::string>{"evaluation.every_steps: 1 -> 2",
                                                       "train.max_steps_extra: 1 -> 2"}));
}

// A key one config has and the other lacks (a newer lmtune's option) compares against null.
TEST(CompareConfigs, AKeyOnlyOneSideHasIsAChange) {
  json now = saved_config();
  now["train"]["label_smoothing"] = 0.1;
  const auto changes = lmtune::compare_configs(saved_config(), now);
  EXPECT_EQ(changes.refused, (std::vector<std::string>{"train.label_smoothing: null -> 0.1"}));
}

// A checkpoint of an earlier lmtune recorded its config without the keys added since and with
// older spellings (train.vocab_padding 0 before auto existed): read through today's schema it
// resumes, and a real difference is still refused.
TEST(CompareConfigs, AnEarlierVersionsConfigDiffersOnlyWhereItsValuesDo) {
  const json now = lmtune::config_to_json(
      lmtune::load_config(std::string(LMTUNE_SOURCE_DIR) + "/configs/quickstart.json"));
  json earlier = now;
  earlier["train"].erase("fused_kernels");
  earlier["train"].erase("attention_backend");
  earlier["train"]["vocab_padding"] = 0;
  EXPECT_EQ(lmtune::compare_configs(earlier, now).refused.size(), 3u);  // as recorded
  EXPECT_TRUE(lmtune::compare_configs(lmtune::with_current_defaults(earlier), now).refused.empty());
  earlier["train"]["lr"] = 0.5;
  const auto changes = lmtune::compare_configs(lmtune::with_current_defaults(earlier), now);
  ASSERT_EQ(changes.refused.size(), 1u);
  EXPECT_EQ(changes.refused[0].rfind("train.lr: 0.5 -> ", 0), 0u) << changes.refused[0];
}
