// TokenSplit: the windows of one split of the token cache, read from memory-mapped files.
#include <algorithm>
#include <cerrno>
#include <cstring>

#include "lmtune/core/errors.h"
#include "lmtune/data/dataset.h"
#include "lmtune/io/mapped_file.h"

namespace lmtune {
namespace fs = std::filesystem;

namespace {

constexpr int64_t kIgnoreIndex = -100;  // cross-entropy's "no loss here"

uint32_t read_u32_le(const uint8_t* bytes) {
  return static_cast<uint32_t>(bytes[0]) | static_cast<uint32_t>(bytes[1]) << 8 |
         static_cast<uint32_t>(bytes[2]) << 16 | static_cast<uint32_t>(bytes[3]) << 24;
}

}  // namespace

// A read-only memory map of a whole file; the OS pages it in as batches touch it.
TokenSplit::TokenSplit(const fs::path& tokens_file, const fs::path& mask_file, int64_t seq_len)
    : tokens_(std::make_shared<MappedFile>(tokens_file)),
      mask_(std::make_shared<MappedFile>(mask_file)),
      seq_len_(seq_len) {
  // The stream holds k * seq_len + 1 tokens for k windows (see SplitWriter).
  const auto length = static_cast<int64_t>(mask_->size());
  if (tokens_->size() != 4 * mask_->size() || length < 1 || (length - 1) % seq_len != 0)
    throw InputError(tokens_file.string(),
                     "damaged token cache: " + std::to_string(tokens_->size()) +
                         " token bytes and " + std::to_string(mask_->size()) +
                         " mask bytes do not make windows of " + std::to_string(seq_len + 1) +
                         " tokens");
  num_windows_ = (length - 1) / seq_len;
}

std::vector<int64_t> TokenSplit::window_document_lengths(int64_t eos_id) const {
  std::vector<int64_t> lengths(static_cast<std::size_t>(num_windows_), 0);
  const int64_t length = static_cast<int64_t>(mask_->size());
  const auto eos = static_cast<uint32_t>(eos_id);
  // Token t (t >= 1) is the target of window (t - 1) / seq_len; token 0 is the leading end-of-text.
  auto close_document = [&](int64_t first, int64_t last) {
    const int64_t tokens = last - first + 1;
    for (int64_t w = (first - 1) / seq_len_; w <= (last - 1) / seq_len_; ++w)
      lengths[w] = std::max(lengths[w], tokens);
  };
  int64_t first = 1;
  for (int64_t t = 1; t < length; ++t) {
    if (read_u32_le(tokens_->bytes() + 4 * t) != eos) continue;
    close_document(first, t);
    first = t + 1;
  }
  if (first < length) close_document(first, length - 1);
  return lengths;
}

Batch TokenSplit::batch(const std::vector<int64_t>& windows) const {
  const auto B = static_cast<int64_t>(windows.size());
  const int64_t T = seq_len_;
  Batch batch;
  batch.inputs = torch::empty({B, T}, torch::kInt64);   // (B, T)
  batch.targets = torch::empty({B, T}, torch::kInt64);  // (B, T)
  int64_t* inputs = batch.inputs.data_ptr<int64_t>();
  int64_t* targets = batch.targets.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t w = windows[b];
    TORCH_CHECK(w >= 0 && w < num_windows_, "window ", w, " outside [0, ", num_windows_, ")");
    const uint8_t* tokens = tokens_->bytes() + 4 * w * T;
    const uint8_t* mask = mask_->bytes() + w * T;
    for (int64_t t = 0; t < T; ++t) {
      inputs[b * T + t] = read_u32_le(tokens + 4 * t);
      targets[b * T + t] = mask[t + 1] ? read_u32_le(tokens + 4 * (t + 1)) : kIgnoreIndex;
      batch.target_tokens += mask[t + 1];
    }
  }
  return batch;
}

}  // namespace lmtune
