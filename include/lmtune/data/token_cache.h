// The token cache on disk: the key that decides whether a cache is still valid, the writer of one
// split's token and loss-mask files, and publishing a finished cache directory atomically, so an
// interrupted prepare never leaves a directory that looks complete.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lmtune/core/config.h"
#include "lmtune/io/file_lock.h"
#include "lmtune/io/tokenizer.h"

namespace lmtune {

// Bumped whenever the layout or the meaning of the files changes, so old caches are not reused.
inline constexpr int kCacheFormat = 1;
inline constexpr const char* kCacheMetaFile = "meta.json";  // written last: its presence marks
                                                            // a complete cache

// Everything the tokens depend on: the files' contents (in order), the tokenizer's behaviour and
// every data option except the paths.
nlohmann::json cache_key(const DataConfig& config,
                         const std::vector<std::filesystem::path>& train_files,
                         const std::vector<std::filesystem::path>& validation_files,
                         const Tokenizer& tokenizer);

// Cache directory name for a key: "tokens-" and 16 hex digits of its hash.
std::string cache_dir_name(const nlohmann::json& key);

// A split's files in a cache directory: "<split>.tokens" (uint32 little-endian) and
// "<split>.mask" (one uint8 per token: 1 when the token carries loss as a target).
std::filesystem::path tokens_file(const std::filesystem::path& dir, const std::string& split);
std::filesystem::path mask_file(const std::filesystem::path& dir, const std::string& split);

// Writes one split as a token stream cut into windows of seq_len + 1 tokens, window k starting at
// token k * seq_len, so consecutive windows overlap by one token and every token after the first
// is a target exactly once. The stream starts with end-of-text (an input only), so every document
// is read after an end-of-text; padding is end-of-text that carries no loss.
class SplitWriter {
 public:
  // With pad_documents, every document starts a new window (data.packing: pad). `framing` is what
  // the tokenizer puts around a text (a BOS for Llama 3): every document gets it.
  SplitWriter(const std::filesystem::path& dir, const std::string& split, int64_t seq_len,
              bool pad_documents, int64_t eos_id, TokenFraming framing = {});
  ~SplitWriter();
  SplitWriter(const SplitWriter&) = delete;
  SplitWriter& operator=(const SplitWriter&) = delete;

  // Appends a document: the framing's prefix (no loss: it is given, not predicted), prompt tokens
  // (carrying loss when prompt_loss), text tokens, the framing's suffix, and end-of-text unless
  // the suffix already ends with it.
  void add(const std::vector<int64_t>& prompt, const std::vector<int64_t>& text, bool prompt_loss);
  // Pads the last window and writes everything to disk (fsynced).
  void finish();

  int64_t tokens() const { return tokens_; }  // document tokens, end-of-text included
  int64_t windows() const { return (length_ - 1) / seq_len_; }

 private:
  void push(int64_t id, bool loss);
  void pad_to_window();
  void flush();

  std::filesystem::path tokens_path_, mask_path_;
  int tokens_fd_ = -1, mask_fd_ = -1;
  std::vector<uint8_t> token_bytes_, mask_bytes_;  // buffered, not yet written
  int64_t seq_len_;
  bool pad_documents_;
  int64_t eos_id_;
  TokenFraming framing_;
  int64_t length_ = 0;  // tokens in the stream, padding included
  int64_t tokens_ = 0;
};

// A split's per-window scores computed by `what` (a model's fingerprint, say): "<split>.<score>-"
// and 16 hex digits of its hash, ".f64". Another model's scores have another name, so a stale
// file is never read.
std::filesystem::path score_file(const std::filesystem::path& dir, const std::string& split,
                                 const std::string& score, const nlohmann::json& what);
// The `windows` scores (float64 little-endian) in `path`; nullopt when it is absent or has
// another size.
std::optional<std::vector<double>> read_scores(const std::filesystem::path& path, int64_t windows);
// Writes the scores to `path` atomically (a temporary file, fsynced, renamed).
void write_scores(const std::filesystem::path& path, const std::vector<double>& scores);

// Writes `text` to `path` and fsyncs it.
void write_synced(const std::filesystem::path& path, const std::string& text);

// The right to build the cache `final_dir`, held until the lock is destroyed: one process builds a
// cache while others that want the same one wait here, then read what it published. Creates the
// cache root.
FileLock lock_cache_build(const std::filesystem::path& final_dir);

// A new, empty directory in `cache_root` to build the cache `name` in.
std::filesystem::path make_build_dir(const std::filesystem::path& cache_root,
                                     const std::string& name);

// Renames the finished `build_dir` to `final_dir`. When another process published `final_dir`
// first, removes `build_dir` and keeps theirs.
void publish_cache(const std::filesystem::path& build_dir, const std::filesystem::path& final_dir);

}  // namespace lmtune
