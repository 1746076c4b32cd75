// Tokenizers: the interface, and finding a model directory's tokenizer from its files.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lmtune {

// Text to token ids and back. Implementations are immutable after loading, so one tokenizer may
// encode from several threads at once.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Ids of `text` without any added BOS/EOS. Added and special tokens written in the text (such as
  // <|endoftext|>) become their own ids. Any bytes are accepted, invalid UTF-8 included.
  virtual std::vector<int64_t> encode(std::string_view text) const = 0;
  // The text of `ids`; for byte-level BPE, decode(encode(text)) == text byte for byte. The result
  // may be invalid UTF-8 when the ids split a character. Throws Error on an id outside the
  // vocabulary.
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;
  // One past the largest id, added tokens included (50257 for GPT-2).
  virtual int64_t vocab_size() const = 0;
  virtual std::optional<int64_t> eos_id() const = 0;  // <|endoftext|> for GPT-2
  // Writes this tokenizer's files into an HF model directory: the files it was loaded from
  // (vocab.json + merges.txt, tokenizer.json or tokenizer.model) and tokenizer_config.json /
  // special_tokens_map.json when they were present, so that transformers' AutoTokenizer loads it.
  virtual void save(const std::filesystem::path& dir) const = 0;
};

// Finds the tokenizer from a model directory's files: tokenizer.json (byte-level BPE), else
// vocab.json + merges.txt (GPT-2), else tokenizer.model (SentencePiece). Throws InputError naming
// the file (and line) when the files are missing or broken.
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& dir);

}  // namespace lmtune
