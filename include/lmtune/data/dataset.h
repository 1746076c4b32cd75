// Training data: preparing text into a token cache (read, clean, dedupe, tokenize, pack, split),
// the memory-mapped splits it holds, and a batcher whose position in the shuffled order is saved.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/types.h>
#include <nlohmann/json.hpp>

#include "lmtune/core/config.h"

namespace lmtune {

class MappedFile;
class Tokenizer;

// What preparing did, reported to the user and kept in the cache's meta.json.
struct PrepareReport {
  std::string cache_dir;    // where the token cache is
  bool from_cache = false;  // true when an existing cache was reused
  int64_t files = 0;
  int64_t bytes = 0;      // bytes of input text read
  int64_t documents = 0;  // documents read, before cleaning
  int64_t bad_lines_skipped = 0;
  int64_t urls_stripped = 0;  // URLs removed
  int64_t html_tags_stripped = 0;
  int64_t control_chars_dropped = 0;
  int64_t dropped_short = 0;  // documents under data.min_chars (or empty) after cleaning
  int64_t dropped_duplicates = 0;
  int64_t train_documents = 0;
  int64_t validation_documents = 0;
  int64_t train_tokens = 0;
  int64_t validation_tokens = 0;
  int64_t train_windows = 0;  // windows of seq_len + 1 tokens
  int64_t validation_windows = 0;
  double seconds = 0;  // time spent preparing (0 when from_cache)

  // Every field above, and mb_per_sec (input bytes per second of preparing; 0 when from_cache).
  nlohmann::json to_json() const;
  static PrepareReport from_json(const nlohmann::json& json);
};

// Logs the report for people, on stderr (spdlog info): documents, each cleaning step, tokens.
void log_prepare_report(const PrepareReport& report);

// A batch of windows. inputs (B, T) and targets (B, T) token ids; targets are -100 where a token
// carries no loss (padding, prompt tokens). Both int64 on the CPU.
struct Batch {
  torch::Tensor inputs;
  torch::Tensor targets;
  int64_t target_tokens = 0;  // targets that are not -100
};

// One split of the token cache: windows of seq_len + 1 tokens, memory-mapped.
class TokenSplit {
 public:
  TokenSplit() = default;
  TokenSplit(const std::filesystem::path& tokens_file, const std::filesystem::path& mask_file,
             int64_t seq_len);

  int64_t num_windows() const { return num_windows_; }
  int64_t seq_len() const { return seq_len_; }
  // Per window, the length in tokens (end-of-text included) of the longest document with a target
  // in it; documents are the runs of tokens that end-of-text separates. One pass over the stream.
  std::vector<int64_t> window_document_lengths(int64_t eos_id) const;
  // The windows with these indices, as one batch.
  Batch batch(const std::vector<int64_t>& windows) const;

 private:
  std::shared_ptr<MappedFile> tokens_, mask_;
  int64_t seq_len_ = 0;
  int64_t num_windows_ = 0;
};

struct PreparedData {
  TokenSplit train;
  TokenSplit validation;  // num_windows() == 0 when there is no validation data
  PrepareReport report;
};

// Prepares the data of `config` with `tokenizer` into the token cache under `cache_root` (or
// reuses it when its key, covering the files' contents, the tokenizer and every option that
// changes the tokens, matches). Bad data is InputError naming the file and line (exit 3).
PreparedData prepare_data(const DataConfig& config, const Tokenizer& tokenizer,
                          const std::filesystem::path& cache_root);

// The complete token cache in `dir` made with `key`, if there is one: its meta.json and split
// files read and checked. A damaged or stale one is removed (with a warning) and nullopt returned,
// so prepare_data rebuilds it. Public so that the fuzzer reaches the cache's readers directly.
std::optional<PreparedData> open_token_cache(const std::filesystem::path& dir,
                                             const nlohmann::json& key, int64_t seq_len);

// Where the batcher stands: `epoch` passes over the data done, `index` windows into this one.
struct BatchPosition {
  int64_t epoch = 0;
  int64_t index = 0;
};

// data.order: curriculum. The ranked windows and how fast they open up: at optimizer step s the
// easiest n(s) = max(batch, ceil(N * f(s))) of the N windows are available, where
// f(s) = start_fraction + (1 - start_fraction) * min(1, s / pace_steps).
struct Curriculum {
  std::vector<int64_t> ranked;   // every window index once, easiest first
  double start_fraction = 1;     // (0, 1]
  int64_t pace_steps = 0;        // steps until all are available; 0 = all from the start
  int64_t batches_per_step = 1;  // micro-batches per optimizer step (train.grad_accum_steps)
};

// The curriculum ranking: window indices sorted by `scores` (lowest, the easiest, first), ties in
// window order.
std::vector<int64_t> rank_easiest_first(const std::vector<double>& scores);

// Micro-batches of training windows: shuffled by (seed, epoch), in file order (sequential), or
// paced by a curriculum. Every batch is a pure function of (seed, position), so data-parallel ranks
// agree and the position is two integers: a resumed run continues at once without replaying.
class Batcher {
 public:
  Batcher(const TokenSplit& split, int64_t batch_size, uint64_t seed,
          DataOrder order = DataOrder::kShuffle, Curriculum curriculum = {});

  Batch next();
  // The window indices of the next micro-batch, without moving.
  std::vector<int64_t> peek() const;
  BatchPosition position() const { return position_; }
  void set_position(BatchPosition position);
  // Micro-batches per epoch (the last, partial batch of an epoch is dropped).
  int64_t batches_per_epoch() const;
  // Curriculum: the windows the next micro-batch is drawn from (all of them for other orders).
  int64_t available_windows() const;

 private:
  void order_epoch();
  int64_t optimizer_step() const;  // of the next micro-batch, from the position
  std::vector<int64_t> paced_batch(int64_t available) const;

  const TokenSplit& split_;
  int64_t batch_size_;
  uint64_t seed_;
  DataOrder order_kind_;
  Curriculum curriculum_;
  BatchPosition position_;
  std::vector<int64_t> order_;  // window indices of the current epoch
};

}  // namespace lmtune
