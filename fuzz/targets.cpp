// The fuzz harnesses (see targets.h): the input becomes a user's file in a fresh directory, then
// the real loader reads it the way lmtune's commands do.
#include "targets.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>

#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>

#include "lmtune/core/config.h"
#include "lmtune/core/errors.h"
#include "lmtune/core/hash.h"
#include "lmtune/data/dataset.h"
#include "lmtune/data/reader.h"
#include "lmtune/data/token_cache.h"
#include "lmtune/io/remove_tree.h"
#include "lmtune/io/safetensors.h"
#include "lmtune/io/tokenizer.h"
#include "lmtune/model/lora.h"
#include "lmtune/train/checkpoint.h"

namespace lmtune::fuzz {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The process's scratch directory, removed at exit (a crash leaves it for inspection).
class ScratchRoot {
 public:
  ScratchRoot()
      : path_(fs::temp_directory_path() / ("lmtune-fuzz-" + std::to_string(::getpid()))) {}
  ~ScratchRoot() { remove_tree(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// An empty directory for one run of `target`.
fs::path fresh_dir(const char* target) {
  static const ScratchRoot root;
  fs::path dir = root.path() / target;
  remove_tree(dir);
  fs::create_directories(dir);
  return dir;
}

void write_bytes(const fs::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string_view as_text(const uint8_t* data, std::size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// Runs `body`; lmtune's clean failure ends the run quietly, anything else escapes to the caller.
template <class Body>
int expect_clean(Body&& body) {
  try {
    body();
  } catch (const Error&) {
  }
  return 0;
}

// Text in several scripts, with digits, whitespace runs, a special token and an emoji, so that
// encoding walks the pre-tokenizer, the merges, byte fallback and the added-token split.
constexpr std::string_view kMultilingualText =
    "Hello, world! It's 2024: naïve café, Grüße aus Köln.\n\n  Привет, мир. 日本語のテキスト。"
    " 中文字符 한국어 العربية עברית हिन्दी ελληνικά 🙂🚀 <|endoftext|> tabs\tand   "
    "spaces\r\n";

void exercise_tokenizer(const fs::path& dir) {
  const auto tokenizer = load_tokenizer(dir);
  std::vector<int64_t> ids = tokenizer->encode(kMultilingualText);
  tokenizer->decode(ids);
  // The ends of the id range: decode must refuse what lies outside it with an Error.
  tokenizer->decode({0, tokenizer->vocab_size() - 1});
  (void)tokenizer->eos_id();
  (void)tokenizer->framing();
}

// The saved config a resume compares a checkpoint's against: every default filled in.
const json& resolved_default_config() {
  static const json config = config_to_json(Config{});
  return config;
}

// Restores the default CPU generator's state on scope exit: a harness must not change what later
// code (other tests in the same process) draws.
class KeepCpuGenerator {
 public:
  KeepCpuGenerator() : generator_(at::detail::getDefaultCPUGenerator()) {
    std::lock_guard<std::mutex> lock(generator_.mutex());
    state_ = generator_.get_state();
  }
  ~KeepCpuGenerator() {
    std::lock_guard<std::mutex> lock(generator_.mutex());
    generator_.set_state(state_);
  }

 private:
  at::Generator generator_;
  torch::Tensor state_;
};

std::string checksum_of(std::string_view bytes) {
  return "fnv1a64:" + Hash64().update(bytes).hex();
}

}  // namespace

int fuzz_safetensors(const uint8_t* data, std::size_t size) {
  const fs::path file = fresh_dir("safetensors") / "model.safetensors";
  write_bytes(file, as_text(data, size));
  return expect_clean([&] {
    SafetensorsFile tensors(file);
    for (const auto& entry : tensors.entries()) {
      tensors.read(entry);
      (void)tensors.find(entry.name);
    }
  });
}

int fuzz_config_json(const uint8_t* data, std::size_t size) {
  const fs::path file = fresh_dir("config_json") / "c.json";
  write_bytes(file, as_text(data, size));
  return expect_clean([&] { load_config(file); });
}

int fuzz_config_yaml(const uint8_t* data, std::size_t size) {
  const fs::path file = fresh_dir("config_yaml") / "c.yaml";
  write_bytes(file, as_text(data, size));
  return expect_clean([&] { load_config(file); });
}

int fuzz_tokenizer_json(const uint8_t* data, std::size_t size) {
  const fs::path dir = fresh_dir("tokenizer_json");
  write_bytes(dir / "tokenizer.json", as_text(data, size));
  return expect_clean([&] { exercise_tokenizer(dir); });
}

// The input is vocab.json, a NUL byte, then merges.txt.
int fuzz_vocab_merges(const uint8_t* data, std::size_t size) {
  const fs::path dir = fresh_dir("vocab_merges");
  const std::string_view input = as_text(data, size);
  const std::size_t nul = input.find('\0');
  write_bytes(dir / "vocab.json", input.substr(0, nul));
  write_bytes(dir / "merges.txt",
              nul == std::string_view::npos ? std::string_view() : input.substr(nul + 1));
  return expect_clean([&] { exercise_tokenizer(dir); });
}

// The input is trainer_state.json, in a checkpoint whose COMPLETE marker carries the right
// checksums, so read_checkpoint gets past them to the state itself; then what a resume does with
// the state before training: compare configs and restore the generators.
int fuzz_trainer_state(const uint8_t* data, std::size_t size) {
  const fs::path dir = fresh_dir("trainer_state");
  constexpr std::string_view kStubWeights = "stub";  // never read by read_checkpoint
  const std::string_view state = as_text(data, size);
  write_bytes(dir / "trainer_state.json", state);
  write_bytes(dir / "model.safetensors", kStubWeights);
  write_bytes(dir / "optimizer.safetensors", kStubWeights);
  const json complete = {{"files",
                          {{"trainer_state.json", checksum_of(state)},
                           {"model.safetensors", checksum_of(kStubWeights)},
                           {"optimizer.safetensors", checksum_of(kStubWeights)}}}};
  write_bytes(dir / "COMPLETE", complete.dump());
  return expect_clean([&] {
    const TrainerState saved = read_checkpoint(dir);
    compare_configs(saved.config, resolved_default_config());
    KeepCpuGenerator keep;
    restore_rng_state(saved);
  });
}

int fuzz_adapter_config(const uint8_t* data, std::size_t size) {
  const fs::path dir = fresh_dir("adapter_config");
  write_bytes(dir / "adapter_config.json", as_text(data, size));
  return expect_clean([&] {
    const AdapterConfig config = read_adapter_config(dir);
    (void)config.spec.scaling(std::max<int64_t>(config.spec.r, 1));
  });
}

// The input is meta.json, a NUL byte, then: seq_len - 1, the byte sizes of train.tokens,
// train.mask, validation.tokens and validation.mask (one byte each; sizes 4 * n and n agree),
// and the bytes the split files are filled with, repeated. Without the five bytes the splits are
// missing.
int fuzz_token_cache(const uint8_t* data, std::size_t size) {
  const fs::path dir = fresh_dir("token_cache") / "tokens-fuzz";
  fs::create_directories(dir);
  const std::string_view input = as_text(data, size);
  const std::size_t nul = input.find('\0');
  write_bytes(dir / kCacheMetaFile, input.substr(0, nul));
  const std::string_view rest =
      nul == std::string_view::npos ? std::string_view() : input.substr(nul + 1);
  int64_t seq_len = 1;
  if (rest.size() >= 5) {
    seq_len = static_cast<uint8_t>(rest[0]) % 16 + 1;
    const std::string_view fill = rest.substr(5);
    const fs::path files[] = {tokens_file(dir, "train"), mask_file(dir, "train"),
                              tokens_file(dir, "validation"), mask_file(dir, "validation")};
    for (int i = 0; i < 4; ++i) {
      std::string bytes(static_cast<uint8_t>(rest[i + 1]), '\0');
      for (std::size_t j = 0; j < bytes.size() && !fill.empty(); ++j)
        bytes[j] = fill[j % fill.size()];
      write_bytes(files[i], bytes);
    }
  }
  const json key = {{"fuzz", "token-cache"}};
  return expect_clean([&] {
    const auto cache = open_token_cache(dir, key, seq_len);
    if (!cache) return;
    for (const TokenSplit* split : {&cache->train, &cache->validation})
      if (split->num_windows() > 0) split->batch({0, split->num_windows() - 1});
  });
}

// The first byte chooses the file type and reading options; the rest is the file.
int fuzz_data_lines(const uint8_t* data, std::size_t size) {
  const uint8_t options = size > 0 ? data[0] : 0;
  const std::string_view text = size > 0 ? as_text(data + 1, size - 1) : std::string_view();
  const fs::path file = fresh_dir("data_lines") / ((options & 1) ? "data.jsonl" : "data.txt");
  write_bytes(file, text);
  DataConfig config;
  config.skip_bad_lines = (options & 2) != 0;
  config.txt_documents = (options & 4) ? TxtDocuments::kFile : TxtDocuments::kBlankLines;
  return expect_clean([&] {
    DocumentReader reader(data_files(file.string(), "data.train"), config);
    Document doc;
    while (reader.next(doc)) {
    }
  });
}

const std::vector<FuzzTarget>& fuzz_targets() {
  static const std::vector<FuzzTarget> targets = {
      {"safetensors", fuzz_safetensors},       {"config_json", fuzz_config_json},
      {"config_yaml", fuzz_config_yaml},       {"tokenizer_json", fuzz_tokenizer_json},
      {"vocab_merges", fuzz_vocab_merges},     {"trainer_state", fuzz_trainer_state},
      {"adapter_config", fuzz_adapter_config}, {"token_cache", fuzz_token_cache},
      {"data_lines", fuzz_data_lines},
  };
  return targets;
}

const FuzzTarget* find_fuzz_target(std::string_view name) {
  for (const auto& target : fuzz_targets())
    if (target.name == name) return &target;
  return nullptr;
}

}  // namespace lmtune::fuzz
