// Text generation from a causal LM: greedy or sampled (temperature, top-k, top-p), one prompt or
// a batch of them at a time, with a KV cache; and a continuation's text as its tokens come.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "lmtune/io/tokenizer.h"
#include "lmtune/model/causal_lm.h"

namespace lmtune {

struct GenerateOptions {
  int64_t max_new_tokens = 50;
  double temperature = 1.0;       // 0 = greedy
  int64_t top_k = 0;              // 0 = no top-k filter
  double top_p = 1.0;             // 1 = no nucleus filter
  uint64_t seed = 1234;           // each prompt samples from its own generator seeded with this
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

// A continuation's text while it is being generated, for printing token by token: add() returns
// the text that has become final. Bytes of a character the tokens so far cut short, and trailing
// U+FFFD that a later token may still turn into a character (SentencePiece's byte tokens), are
// held back until it is known what they are, so the pieces add() and finish() return, joined,
// equal continuation_text() of all the tokens.
class ContinuationStream {
 public:
  ContinuationStream(const Tokenizer& tokenizer, std::vector<int64_t> stop_ids);
  // The text `token` completes (often empty, never part of a character); a stop id adds nothing.
  std::string add(int64_t token);
  // The rest of the text, once no more tokens come.
  std::string finish();

 private:
  const Tokenizer& tokenizer_;
  std::vector<int64_t> stop_ids_;
  std::vector<int64_t> tokens_;  // without stop ids
  std::string emitted_;          // the text add() has returned so far
};

// Called with each token as it is picked: the prompt's index in the batch, and the token's id.
using TokenCallback = std::function<void(std::size_t prompt, int64_t token)>;

// The new token ids following `prompt` (not including it). Stops at a stop id, after
// max_new_tokens, or when the model's context is full. `on_token`, when given, sees each token as
// it is picked.
std::vector<int64_t> generate(const CausalLM& model, const std::vector<int64_t>& prompt,
                              const GenerateOptions& options,
                              const std::function<void(int64_t)>& on_token = {});

// The new token ids following each of `prompts`, decoded together as one batch: prompts are
// left-padded to the longest (padding never attended to, positions counted from each prompt's
// first token), and a prompt leaves the batch as soon as it stops. Each prompt gets what
// generate() gives it alone: the same tokens when greedy, and when sampling, draws from its own
// generator seeded with options.seed, so that its continuation does not depend on the other
// prompts or the batch size (up to the float rounding of batched matrix products, which
// changes a token only where two candidates are that close).
std::vector<std::vector<int64_t>> generate_batch(const CausalLM& model,
                                                 const std::vector<std::vector<int64_t>>& prompts,
                                                 const GenerateOptions& options,
                                                 const TokenCallback& on_token = {});

}  // namespace lmtune
