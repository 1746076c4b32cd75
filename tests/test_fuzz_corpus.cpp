// Replays the fuzzers' regression corpus (tests/fuzz/<target>/) through the same harnesses the
// fuzzer runs (fuzz/targets.cpp): every input must load or fail with lmtune::Error, never with
// another exception, a crash or a sanitizer report.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <typeinfo>
#include <vector>

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include "targets.h"

namespace {
namespace fs = std::filesystem;

fs::path corpus_dir(std::string_view target) {
  return fs::path(LMTUNE_SOURCE_DIR) / "tests" / "fuzz" / std::string(target);
}

std::vector<fs::path> corpus_files(std::string_view target) {
  std::vector<fs::path> files;
  if (fs::is_directory(corpus_dir(target)))
    for (const auto& entry : fs::directory_iterator(corpus_dir(target)))
      if (entry.is_regular_file()) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

std::string read_bytes(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Quiet while replaying: rejected inputs log warnings on purpose.
class FuzzCorpus : public testing::TestWithParam<std::string_view> {
 protected:
  void SetUp() override {
    level_ = spdlog::get_level();
    spdlog::set_level(spdlog::level::off);
  }
  void TearDown() override { spdlog::set_level(level_); }

 private:
  spdlog::level::level_enum level_ = spdlog::level::warn;
};

TEST_P(FuzzCorpus, EveryInputLoadsOrFailsWithAnLmtuneError) {
  const auto* target = lmtune::fuzz::find_fuzz_target(GetParam());
  ASSERT_NE(target, nullptr);
  const std::vector<fs::path> files = corpus_files(target->name);
  ASSERT_FALSE(files.empty()) << "no regression inputs in " << corpus_dir(target->name);
  for (const auto& file : files) {
    const std::string input = read_bytes(file);
    try {
      target->run(reinterpret_cast<const uint8_t*>(input.data()), input.size());
    } catch (const std::exception& e) {
      ADD_FAILURE() << file << ": escaped as " << typeid(e).name() << ": " << e.what();
    } catch (...) {
      ADD_FAILURE() << file << ": escaped as an exception of an unknown type";
    }
  }
}

std::vector<std::string_view> target_names() {
  std::vector<std::string_view> names;
  for (const auto& target : lmtune::fuzz::fuzz_targets()) names.push_back(target.name);
  return names;
}

INSTANTIATE_TEST_SUITE_P(Targets, FuzzCorpus, testing::ValuesIn(target_names()),
                         [](const testing::TestParamInfo<std::string_view>& info) {
                           return std::string(info.param);
                         });

TEST(FuzzCorpusLayout, EveryCorpusFolderBelongsToATarget) {
  for (const auto& entry : fs::directory_iterator(fs::path(LMTUNE_SOURCE_DIR) / "tests" / "fuzz"))
    EXPECT_NE(lmtune::fuzz::find_fuzz_target(entry.path().filename().string()), nullptr)
        << entry.path() << " is no fuzz target's corpus";
}

}  // namespace
