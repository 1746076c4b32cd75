// Training byte-level BPE tokenizers (`lmtune tokenizer train`): words counted through a chosen
// pre-tokenizer, merges learned by Hugging Face BpeTrainer's rule, files written as Hugging Face
// loads them. Reads no training files itself: the caller feeds it text.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lmtune {

// The pre-tokenizers a tokenizer can be trained with, by name: "gpt2" (GPT-2's pattern), "llama3"
// (Llama 3's pattern, digits in threes), "qwen2" (NFC, then Qwen2's pattern, digits one by one),
// "smollm" (each digit alone, then GPT-2's pattern).
const std::vector<std::string>& bpe_pre_tokenizer_names();

struct BpeTrainingOptions {
  int64_t vocab_size = 0;              // tokens in all: special tokens, the 256 bytes and merges
  std::string pre_tokenizer = "gpt2";  // one of bpe_pre_tokenizer_names()
  std::vector<std::string> special_tokens = {"<|endoftext|>"};  // ids 0, 1, ...; the first is EOS
  int64_t min_frequency = 2;  // a pair seen fewer times than this is never merged
};

// What training learned: the vocabulary by id and the merge rules by rank.
struct TrainedBpe {
  BpeTrainingOptions options;
  // By id: the special tokens as written, the 256 single bytes, then one token per merge. Bytes
  // are spelt in GPT-2's byte alphabet ("Ġthe" is " the").
  std::vector<std::string> tokens;
  std::vector<std::pair<int32_t, int32_t>> merges;  // (left id, right id), highest priority first
};

// Counts words, then learns merges: the most frequent pair of adjacent tokens, counted over every
// word of the text, becomes a new token, until the vocabulary is full or no pair is seen
// min_frequency times. Among pairs seen equally often the smallest (left id, right id) wins, ids
// being those of TrainedBpe::tokens; Hugging Face's BpeTrainer, given every byte as its initial
// alphabet, breaks ties by the same rule over the same ids (docs/tokenizers.md).
class BpeTrainer {
 public:
  // Throws UsageError for an unknown pre-tokenizer, special tokens that are empty, repeated or not
  // UTF-8, or a vocabulary too small to hold the special tokens and the 256 bytes.
  explicit BpeTrainer(BpeTrainingOptions options);
  ~BpeTrainer();
  BpeTrainer(const BpeTrainer&) = delete;
  BpeTrainer& operator=(const BpeTrainer&) = delete;

  // Counts the words of one document as the trained tokenizer will see them: special tokens
  // written in it are cut out, the rest normalized and pre-tokenized.
  void add_text(std::string_view text);

  int64_t words_seen() const;      // words counted, repeats included
  int64_t distinct_words() const;  // different words counted

  // Learns the merges from the words counted so far. The result may hold fewer tokens than
  // options.vocab_size when the text runs out of pairs seen min_frequency times.
  TrainedBpe train() const;

 private:
  struct Counts;
  BpeTrainingOptions options_;
  std::unique_ptr<Counts> counts_;
};

// Writes a trained tokenizer into `dir` (created when missing): tokenizer.json (what lmtune and
// transformers load), GPT-2's vocab.json and merges.txt (the same vocabulary and merges; they
// encode alike only with the gpt2 pre-tokenizer) and tokenizer_config.json naming the first special
// token as EOS. Each file is written whole or not at all; failures throw lmtune::Error.
void write_trained_tokenizer(const TrainedBpe& bpe, const std::filesystem::path& dir);

}  // namespace lmtune
