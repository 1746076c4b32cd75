// Text generation from a GPT-2 model: greedy or sampled (temperature, top-k, top-p), with a KV
// cache.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "lmtune/model/gpt2.h"

namespace lmtune {

struct GenerateOptions {
  int64_t max_new_tokens = 50;
  double temperature = 1.0;  // 0 = greedy
  int64_t top_k = 0;         // 0 = no top-k filter
  double top_p = 1.0;        // 1 = no nucleus filter
  uint64_t seed = 1234;
  std::optional<int64_t> stop_id;  // end-of-text: generation stops after producing it
  bool use_cache = true;           // false recomputes the whole sequence each step (for testing)
};

// The new token ids following `prompt` (not including it). Stops at stop_id, after
// max_new_tokens, or when the model's context is full.
std::vector<int64_t> generate(GPT2& model, const std::vector<int64_t>& prompt,
                              const GenerateOptions& options);

}  // namespace lmtune
