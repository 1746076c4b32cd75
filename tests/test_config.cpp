// Unit tests of the config system: defaults, JSON/YAML parity, overrides, validation, docs.
#include <fstream>
#include <regex>

#include <gtest/gtest.h>

#include "lmtune/core/config.h"
#include "lmtune/core/errors.h"
#include "temp_dir_test.h"

namespace fs = std::filesystem;
using lmtune::Config;
using lmtune::ConfigError;
using nlohmann::json;

namespace {

class ConfigTest : public TempDirTest {
 protected:
  fs::path write(const std::string& name, const std::string& text) {
    fs::path path = dir_ / name;
    std::ofstream(path) << text;
    return path;
  }

  // The problems a config reports, or an empty list when it is valid.
  std::vector<std::string> problems(const fs::path& file, std::vector<lmtune::Override> sets = {}) {
    try {
      lmtune::load_config(file, sets);
    } catch (const ConfigError& e) {
      return e.problems();
    }
    return {};
  }
};

const char* kMinimalJson = R"({"model": {"path": "model"}, "data": {"train": "train.txt"}})";

TEST_F(ConfigTest, DefaultsFillEveryKey) {
  Config config = lmtune::load_config(write("c.json", kMinimalJson));
  EXPECT_EQ(config.run.seed, 1234);
  EXPECT_EQ(config.train.micro_batch_size, 8);
  EXPECT_EQ(config.train.precision, lmtune::Precision::kAuto);  // resolved when a run starts
  EXPECT_EQ(config.train.schedule, lmtune::Schedule::kCosine);
  EXPECT_DOUBLE_EQ(config.train.lr, 3.0e-4);
  json resolved = lmtune::config_to_json(config);
  for (const auto& key : lmtune::config_keys()) {
    auto dot = key.path.find('.');
    EXPECT_TRUE(resolved[key.path.substr(0, dot)].contains(key.path.substr(dot + 1))) << key.path;
  }
}

TEST_F(ConfigTest, JsonAndYamlResolveIdentically) {
  auto from_json = lmtune::load_config(write("c.json", R"({
    "model": {"path": "m", "gradient_checkpointing": true},
    "data": {"train": "t.txt", "seq_len": 128, "validation_split": 0.1},
    "train": {"lr": 1e-4, "max_steps": 50, "precision": "fp32", "schedule": "linear"}})"));
  auto from_yaml = lmtune::load_config(write("c.yaml", R"(
model: {path: m, gradient_checkpointing: true}
data:
  train: t.txt
  seq_len: 128
  validation_split: 0.1
train:
  lr: 1.0e-4
  max_steps: 50
  precision: fp32
  schedule: linear
)"));
  json a = lmtune::config_to_json(from_json), b = lmtune::config_to_json(from_yaml);
  // output_dir defaults to runs/<config name>, which is the same for c.json and c.yaml.
  EXPECT_EQ(a.dump(), b.dump());
}

TEST_F(ConfigTest, RelativePathsResolveAgainstTheConfigFile) {
  fs::create_directories(dir_ / "sub");
  Config config = lmtune::load_config(write("sub/c.json", kMinimalJson));
  EXPECT_EQ(fs::path(config.data.train), dir_ / "sub" / "train.txt");
  EXPECT_EQ(fs::path(config.model.path), dir_ / "sub" / "model");
}

TEST_F(ConfigTest, SetPathsResolveAgainstTheWorkingDirectory) {
  Config config = lmtune::load_config(write("c.json", kMinimalJson), {{"data.train", "x/y.txt"}});
  EXPECT_EQ(fs::path(config.data.train), fs::current_path() / "x" / "y.txt");
}

TEST_F(ConfigTest, SetIsParsedAsTheKeysType) {
  Config config =
      lmtune::load_config(write("c.json", kMinimalJson), {{"train.lr", "3e-5"},
                                                          {"train.max_steps", "20"},
                                                          {"model.gradient_checkpointing", "true"},
                                                          {"run.output_dir", "123"}});
  EXPECT_DOUBLE_EQ(config.train.lr, 3e-5);
  EXPECT_EQ(config.train.max_steps, 20);
  EXPECT_TRUE(config.model.gradient_checkpointing);
  EXPECT_EQ(fs::path(config.run.output_dir).filename(), "123");
  auto errors = problems(write("d.json", kMinimalJson), {{"train.max_steps", "many"}});
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].find("--set train.max_steps=many: train.max_steps: expected an integer"),
            std::string::npos)
      << errors[0];
}

TEST_F(ConfigTest, EveryProblemIsReportedAtOnce) {
  auto errors = problems(write("c.json", R"({
    "model": {"path": "m", "n_layers": 3},
    "data": {"train": "t.txt", "seq_len": "long"},
    "train": {"lr": -1, "precision": "fp8", "max_steps": 2.5},
    "trian": {}})"));
  ASSERT_EQ(errors.size(), 6u);
  auto has = [&](const std::string& needle) {
    return std::any_of(errors.begin(), errors.end(),
                       [&](const std::string& e) { return e.find(needle) != std::string::npos; });
  };
  EXPECT_TRUE(has("model.n_layers: unknown key; did you mean 'n_layer'?"));
  EXPECT_TRUE(has("data.seq_len: expected an integer, got string \"long\""));
  EXPECT_TRUE(has("train.lr: must be > 0, got -1"));
  EXPECT_TRUE(has("train.precision: expected one of fp32, bf16, fp16, auto, got \"fp8\""));
  EXPECT_TRUE(has("train.max_steps: expected an integer, got number 2.5"));
  EXPECT_TRUE(has("trian: unknown section; did you mean 'train'?"));
}

TEST_F(ConfigTest, KeyInTheWrongSectionSuggestsTheRightOne) {
  auto errors = problems(write("c.json", R"({"model": {"path": "m", "lr": 0.1},
                                              "data": {"train": "t"}})"));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].find("model.lr: unknown key; did you mean 'train.lr'?"), std::string::npos);
}

TEST_F(ConfigTest, CrossKeyRules) {
  fs::create_directories(dir_ / "model");
  std::ofstream(dir_ / "model" / "config.json") << R"({"n_positions": 64})";
  auto errors = problems(write("c.json", R"({"model": {"path": "model"},
      "data": {"train": "t", "seq_len": 128, "validation": "v", "validation_split": 0.1},
      "train": {"lr": 1e-4, "min_lr": 1e-3, "max_steps": 10, "warmup_steps": 20}})"));
  EXPECT_EQ(errors.size(), 3u);
  auto has = [&](const std::string& needle) {
    return std::any_of(errors.begin(), errors.end(),
                       [&](const std::string& e) { return e.find(needle) != std::string::npos; });
  };
  EXPECT_TRUE(
      has("data.seq_len: must not exceed the model's n_positions (64), got 128; set "
          "data.seq_len to 64 or less"));
  EXPECT_TRUE(has("data.validation_split: cannot be used together with data.validation"));
  EXPECT_TRUE(has("train.min_lr: must not exceed train.lr"));
  // A warmup longer than the run is allowed: the schedule never reaches its peak (logged).
  EXPECT_FALSE(has("train.warmup_steps"));
}

TEST_F(ConfigTest, RuleAcrossKeysBlamesTheSetThatBrokeIt) {
  fs::path file = write("c.json", R"({"model": {"path": "m"}, "data": {"train": "t"},
      "train": {"min_lr": 1e-5}})");
  auto errors = problems(file, {{"train.lr", "1e-6"}});
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].rfind("--set train.lr=1e-6: train.min_lr: must not exceed train.lr", 0), 0u)
      << errors[0];
}

TEST_F(ConfigTest, SeqLenDefaultsToTheModelsContextCapped) {
  fs::create_directories(dir_ / "short");
  std::ofstream(dir_ / "short" / "config.json") << R"({"n_positions": 128})";
  fs::create_directories(dir_ / "long");
  std::ofstream(dir_ / "long" / "config.json") << R"({"max_position_embeddings": 32768})";
  auto seq_len = [&](const std::string& model) {
    return lmtune::load_config(write("c.json", R"({"model": {"path": ")" + model +
                                                   R"("}, "data": {"train": "t"}})"))
        .data.seq_len;
  };
  EXPECT_EQ(seq_len("short"), 128);
  EXPECT_EQ(seq_len("long"), lmtune::kMaxDefaultSeqLen);
  EXPECT_EQ(seq_len("unreadable"), 0);  // left to the commands' input check, which reports it
}

TEST_F(ConfigTest, NamesFromOtherTrainersPointToLmtunesKeys) {
  auto errors = problems(write("c.yaml", R"(model: {path: m}
data: {train: t}
train: {learning_rate: 1.0e-4, per_device_train_batch_size: 4, num_train_epochs: 2}
output_dir: out
fp16: true
)"));
  auto has = [&](const std::string& needle) {
    return std::any_of(errors.begin(), errors.end(),
                       [&](const std::string& e) { return e.find(needle) != std::string::npos; });
  };
  EXPECT_EQ(errors.size(), 5u);
  EXPECT_TRUE(has("train.learning_rate: unknown key; did you mean 'train.lr'?"));
  EXPECT_TRUE(
      has("train.per_device_train_batch_size: unknown key; did you mean "
          "'train.micro_batch_size'?"));
  EXPECT_TRUE(has("train.num_train_epochs: unknown key; did you mean 'train.epochs'?"));
  EXPECT_TRUE(
      has("output_dir: unknown section (lmtune's keys are grouped in sections); did you "
          "mean 'run.output_dir'?"));
  EXPECT_TRUE(
      has("fp16: unknown section (lmtune's keys are grouped in sections); did you mean "
          "'train.precision: fp16'?"));
}

TEST_F(ConfigTest, DuplicateKeysNameBothLines) {
  auto json_errors = problems(write("c.json",
                                    "{\"data\": {\"train\": \"a\",\n\"seq_len\": 8,\n"
                                    "\"train\": \"b\"}}\n"));
  ASSERT_EQ(json_errors.size(), 1u);
  EXPECT_NE(json_errors[0].find("c.json:3: duplicate key 'train' (first on line 1)"),
            std::string::npos)
      << json_errors[0];
  // The same name in two different mappings is no duplicate.
  EXPECT_TRUE(problems(write("ok.json", R"({"model": {"path": "m"}, "data": {"train": "t"},
      "eval": {"every_steps": 5}, "checkpoint": {"every_steps": 5}})"))
                  .empty());
  auto yaml_errors =
      problems(write("c.yaml", "model: {path: m}\ndata:\n  train: a\n  seq_len: 8\n  train: b\n"));
  ASSERT_EQ(yaml_errors.size(), 1u);
  EXPECT_NE(yaml_errors[0].find("c.yaml:5: duplicate key 'train' (first on line 3)"),
            std::string::npos)
      << yaml_errors[0];
}

TEST_F(ConfigTest, TabIndentationInYamlSaysTab) {
  auto errors = problems(write("c.yaml", "model:\n\tpath: m\ndata: {train: t}\n"));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].find("c.yaml:2:1: YAML indentation uses a tab; indent with spaces"),
            std::string::npos)
      << errors[0];
}

TEST_F(ConfigTest, RequiredKeys) {
  auto errors = problems(write("c.json", "{}"));
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_NE(errors[0].find("data.train: is required"), std::string::npos);
  EXPECT_NE(errors[1].find("model.path: is required with model.init: pretrained"),
            std::string::npos);
  EXPECT_TRUE(problems(write("r.json", R"({"model": {"init": "random", "tokenizer": "tok"},
                                           "data": {"train": "t"}})"))
                  .empty());
  auto no_tokenizer =
      problems(write("n.json", R"({"model": {"init": "random"}, "data": {"train": "t"}})"));
  ASSERT_EQ(no_tokenizer.size(), 1u);
  EXPECT_NE(no_tokenizer[0].find("model.tokenizer: is required"), std::string::npos);
}

TEST_F(ConfigTest, ParseErrorsNameFileLineAndColumn) {
  auto json_errors = problems(write("bad.json", "{\n  \"train\": {\"lr\": 0.1,}\n}"));
  ASSERT_EQ(json_errors.size(), 1u);
  EXPECT_TRUE(std::regex_search(json_errors[0], std::regex("bad\\.json:2:\\d+: JSON syntax error")))
      << json_errors[0];
  auto yaml_errors = problems(write("bad.yaml", "train:\n  lr: [1, 2\nmodel: x\n"));
  ASSERT_EQ(yaml_errors.size(), 1u);
  EXPECT_TRUE(
      std::regex_search(yaml_errors[0], std::regex("bad\\.yaml:\\d+:\\d+: YAML syntax error")))
      << yaml_errors[0];
}

TEST_F(ConfigTest, YamlQuotedScalarsStayStrings) {
  auto errors = problems(write("c.yaml", "model: {path: m}\ndata: {train: t, seq_len: '128'}\n"));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].find("data.seq_len: expected an integer, got string \"128\""),
            std::string::npos);
}

TEST(ConfigDocs, EveryKeyIsDocumented) {
  std::ifstream in(fs::path(LMTUNE_SOURCE_DIR) / "docs" / "config.md");
  ASSERT_TRUE(in) << "docs/config.md is missing";
  std::string docs((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const auto& key : lmtune::config_keys())
    EXPECT_NE(docs.find("`" + key.path + "`"), std::string::npos)
        << key.path << " is not in docs/config.md";
}

// The key tables of docs/config.md are the schema's own: type, default, range and meaning of each
// key as the code declares them (regenerate with scripts/update-config-docs.sh).
TEST(ConfigDocs, KeyTablesAreGeneratedFromTheSchema) {
  std::ifstream in(fs::path(LMTUNE_SOURCE_DIR) / "docs" / "config.md");
  ASSERT_TRUE(in) << "docs/config.md is missing";
  std::string docs((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string begin = "<!-- keys:begin (scripts/update-config-docs.sh) -->\n";
  const std::string end = "<!-- keys:end -->";
  auto from = docs.find(begin);
  auto to = docs.find(end);
  ASSERT_NE(from, std::string::npos);
  ASSERT_NE(to, std::string::npos);
  from += begin.size();
  EXPECT_EQ(docs.substr(from, to - from), lmtune::config_keys_markdown())
      << "docs/config.md is out of date: run scripts/update-config-docs.sh";
}

TEST(ConfigDocs, BoundedKeysShowTheirRange) {
  const std::string tables = lmtune::config_keys_markdown();
  EXPECT_NE(tables.find("| `data.validation_split` | number | `0.0` | [0, 0.5] |"),
            std::string::npos);
  EXPECT_NE(tables.find("| `train.lr` | number | `0.0003` | > 0 |"), std::string::npos);
  EXPECT_NE(tables.find("| `run.threads` | integer | `0` | [0, 1024] |"), std::string::npos);
}

}  // namespace
