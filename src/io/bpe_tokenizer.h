// Byte-level BPE exactly as GPT-2 encodes: its pre-tokenisation, then merges by rank within each
// piece.
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
#include "gpt2_pretokenizer.h"
#include "lmtune/io/tokenizer.h"
#include "special_tokens.h"

namespace lmtune {

// A byte-level BPE tokenizer as its files describe it, checked against itself.
struct BpeVocabulary {
  std::unordered_map<std::string, int32_t> tokens;  // byte-level spelling ("Ġthe") -> id
  std::vector<BpeMerge> merges;                     // by rank: the first applies first
  std::vector<SpecialToken> added;                  // recognised in text before pre-tokenisation
  std::optional<int64_t> eos_id;
  bool add_prefix_space = false;     // a space is put before text that does not start with one
  std::filesystem::path vocab_file;  // named in errors about the vocabulary
  std::vector<std::filesystem::path> files;  // what save() copies
};

// GPT-2's vocab.json and merges.txt in `dir`, with the special tokens its tokenizer_config.json
// names. Throws InputError naming the file (and the line of merges.txt) when they are broken.
BpeVocabulary read_gpt2_vocabulary(const std::filesystem::path& dir);

// Why lmtune cannot encode a tokenizer.json as Hugging Face would (another model type, a
// normalizer, another pre-tokeniser, ...), or nullopt when it is byte-level BPE as GPT-2's.
std::optional<std::string> unsupported_tokenizer_json(const nlohmann::json& tree);

// The byte-level BPE of a parsed tokenizer.json read from `file`: model.vocab, model.merges (as
// "a b" strings or ["a", "b"] pairs) and added_tokens. Throws InputError naming the file and key.
BpeVocabulary read_tokenizer_json_vocabulary(const nlohmann::json& tree,
                                             const std::filesystem::path& file);

class BpeTokenizer : public Tokenizer {
 public:
  // Throws InputError naming vocabulary.vocab_file when a byte has no token of its own.
  explicit BpeTokenizer(BpeVocabulary vocabulary);
  ~BpeTokenizer() override;

  std::vector<int64_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(token_bytes_.size()); }
  std::optional<int64_t> eos_id() const override { return eos_id_; }
  void save(const std::filesystem::path& dir) const override;

 private:
  void encode_text(std::string_view text, WordCache& cache, std::vector<int64_t>& ids) const;
  void encode_piece(std::string_view piece, WordCache& cache, std::vector<int64_t>& ids) const;
  void merge(std::string_view piece, std::vector<int64_t>& ids) const;

  Gpt2Pretokenizer pretokenizer_;
  SpecialTokenSplitter specials_;
  std::array<int32_t, 256> byte_ids_{};  // the token of each single byte
  MergeTable rules_;
  std::vector<std::string> token_bytes_;  // by id: the bytes the token stands for
  std::vector<bool> defined_;             // by id: whether the id has a token
  std::optional<int64_t> eos_id_;
  bool add_prefix_space_ = false;
  std::vector<std::filesystem::path> files_;
  // Encoding is const, so the cache is guarded; a thread that finds it busy uses its own.
  mutable std::mutex cache_mutex_;
  mutable WordCache cache_;
};

}  // namespace lmtune
