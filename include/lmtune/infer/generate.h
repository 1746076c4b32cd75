// Text generation from a causal LM: greedy or sampled (temperature, top-k, top-p), with a KV
// cache.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "lmtune/io/tokenizer.h"
#include "lmtune/model/causal_lm.h"

namespace lmtune {

struct GenerateOptions {
  int64_t max_new_tokens = 50;
  double temperature = 1.0;  // 0 = greedy
  int64_t top_k = 0;         // 0 = no top-k filter
  double top_p = 1.0;        // 1 = no nucleus filter
  uint64_t seed = 1234;
  std::vector<int64_t> stop_ids;  // end-of-sequence ids: generation stops after producing one
  bool use_cache = true;          // false recomputes the whole sequence each step (for testing)
};

// The ids that end a sequence for the model in `model_dir`: its config.json's eos_token_id(s),
// those generation_config.json lists (it may list several, as Llama 3's does), and the tokenizer's
// end-of-text.
std::vector<int64_t> end_of_sequence_ids(const std::filesystem::path& model_dir,
                                         const ModelSpec& spec,
                                         std::optional<int64_t> tokenizer_eos);

// The ids of a prompt framed as the model saw text in training and as transformers'
// tokenizer(prompt) gives it: the tokenizer's prefix (a BOS for Llama 3 and Llama 2), then `text`.
std::vector<int64_t> prompt_ids(const Tokenizer& tokenizer, std::string_view text);

// The text of generated ids without the stop id that ended them, as valid UTF-8 (bytes of a
// character the last ids cut short become U+FFFD, as in Hugging Face's decode).
std::string continuation_text(const Tokenizer& tokenizer, std::vector<int64_t> produced,
                              const std::vector<int64_t>& stop_ids);

// The new token ids following `prompt` (not including it). Stops at a stop id, after
// max_new_tokens, or when the model's context is full.
std::vector<int64_t> generate(const CausalLM& model, const std::vector<int64_t>& prompt,
                              const GenerateOptions& options);

}  // namespace lmtune
