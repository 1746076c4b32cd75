// Byte-pair encoding as Hugging Face's tokenizers run it: added tokens, normalizer,
// pre-tokenizer, merges by rank within each word (over bytes or characters, with byte fallback),
// decoder; GPT-2's own files are the byte-level case of it.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "bpe_tables.h"
#include "lmtune/io/tokenizer.h"
#include "pre_tokenizer.h"
#include "special_tokens.h"
#include "text_normalizer.h"
#include "token_decoder.h"

namespace lmtune {

// tokenizer.json's model options beyond the vocabulary and merges.
struct BpeModelOptions {
  std::optional<int32_t> unk_id;  // what a character outside the vocabulary becomes, if anything
  bool fuse_unk = false;          // a run of such characters becomes one unk_id
  bool byte_fallback = false;     // such a character becomes its <0xNN> byte tokens instead
  bool ignore_merges = false;     // a word that is a token becomes that token, merges unseen
};

// A BPE tokenizer as its files describe it, checked against itself.
struct BpeVocabulary {
  std::unordered_map<std::string, int32_t> tokens;  // spelling ("Ġthe", "▁the") -> id
  std::vector<BpeMerge> merges;                     // by rank: the first applies first
  std::vector<SpecialToken> added;                  // recognised in text before everything else
  BpeModelOptions model;
  TextNormalizer normalizer;
  PreTokenizer pre_tokenizer;  // ByteLevel last: BPE merges bytes, else characters
  TokenDecoder decoder;
  TokenFraming framing;
  std::optional<int64_t> eos_id;
  std::string tokenizer_class;       // written to tokenizer_config.json when save() writes one
  std::filesystem::path vocab_file;  // named in errors about the vocabulary
  std::vector<std::filesystem::path> files;  // what save() copies
};

// GPT-2's vocab.json and merges.txt in `dir`, with the special tokens its tokenizer_config.json
// names. Throws InputError naming the file (and the line of merges.txt) when they are broken.
BpeVocabulary read_gpt2_vocabulary(const std::filesystem::path& dir);

// The BPE tokenizer of a parsed tokenizer.json read from `file`: model.vocab, model.merges (as
// "a b" strings or ["a", "b"] pairs), added_tokens, normalizer, pre_tokenizer, decoder and
// post_processor. Throws UnsupportedTokenizer naming the file and the component lmtune does not
// implement, or InputError naming the file and key of a malformed part.
BpeVocabulary read_tokenizer_json_vocabulary(const nlohmann::json& tree,
                                             const std::filesystem::path& file);

class BpeTokenizer : public Tokenizer {
 public:
  // Throws InputError naming vocabulary.vocab_file when a byte-level vocabulary lacks a byte.
  explicit BpeTokenizer(BpeVocabulary vocabulary);
  ~BpeTokenizer() override;

  std::vector<int64_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(spellings_.size()); }
  std::optional<int64_t> eos_id() const override { return eos_id_; }
  TokenFraming framing() const override { return framing_; }
  void save(const std::filesystem::path& dir) const override;

 private:
  void index_vocabulary(const std::unordered_map<std::string, int32_t>& tokens,
                        const std::filesystem::path& vocab_file);
  void encode_stretch(std::string_view stretch, bool at_input_start, WordCache& cache,
                      std::vector<int64_t>& ids) const;
  void encode_word(std::string_view word, WordCache& cache, std::vector<int64_t>& ids) const;
  void initial_symbols(std::string_view word, std::vector<int32_t>& symbols) const;
  void merge(std::vector<int32_t>& symbols, std::vector<int64_t>& ids) const;

  SpecialTokenSplitter specials_;             // matched in the text as written
  SpecialTokenSplitter normalized_specials_;  // matched in normalized text
  TextNormalizer normalizer_;
  PreTokenizer pre_tokenizer_;
  TokenDecoder decoder_;
  BpeModelOptions options_;
  MergeTable rules_;
  std::array<int32_t, 256> byte_ids_{};             // byte-level: the token of each single byte
  std::array<int32_t, 256> fallback_ids_{};         // byte fallback: the id of <0xNN>, -1 if none
  std::unordered_map<char32_t, int32_t> char_ids_;  // character level: one-character tokens
  std::unordered_map<std::string, int32_t> word_ids_;  // ignore_merges: words that are tokens
  std::vector<std::string> spellings_;  // by id: the token as the vocabulary spells it
  std::vector<bool> defined_;           // by id: whether the id has a token
  std::optional<int64_t> eos_id_;
  TokenFraming framing_;
  std::string tokenizer_class_;
  std::vector<std::filesystem::path> files_;
  // Encoding is const, so the cache is guarded; a thread that finds it busy uses its own.
  mutable std::mutex cache_mutex_;
  mutable WordCache cache_;
};

}  // namespace lmtune
