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

// The special tokens a model's tokenizer puts around one text when it prepares model input (the
// single-text template of tokenizer.json's post-processor). Data preparation frames each document
// as prefix + encode(text) + suffix, as the model saw documents in training.
struct TokenFraming {
  std::vector<int64_t> prefix;  // {<|begin_of_text|>} for Llama 3, {<s>} for Llama 2; often empty
  std::vector<int64_t> suffix;  // {</s>} where the template ends a text with EOS; often empty
};

// Text to token ids and back. Implementations are immutable after loading, so one tokenizer may
// encode from several threads at once.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Ids of `text` without any added BOS/EOS. Added and special tokens written in the text (such as
  // <|endoftext|>) become their own ids. Any bytes are accepted, invalid UTF-8 included.
  virtual std::vector<int64_t> encode(std::string_view text) const = 0;
  // The text of `ids`, special tokens written out, as Hugging Face's tokenizers decode them. For
  // byte-level BPE, decode(encode(text)) == text byte for byte, and the result may be invalid
  // UTF-8 when the ids split a character; byte-fallback tokens that do not form UTF-8 become
  // U+FFFD, so ids encoded from text always decode to valid UTF-8. Throws Error on an id outside
  // the vocabulary.
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;
  // One past the largest id, added tokens included (50257 for GPT-2).
  virtual int64_t vocab_size() const = 0;
  virtual std::optional<int64_t> eos_id() const = 0;  // <|endoftext|> for GPT-2
  // What the tokenizer adds around a text that encode() leaves out; nothing by default. A
  // document separator where the framing has none is the caller's choice (GPT-2 was trained with
  // eos_id() between documents, and its framing is empty).
  virtual TokenFraming framing() const { return {}; }
  // Writes this tokenizer's files into an HF model directory: the files it was loaded from
  // (vocab.json + merges.txt, tokenizer.json or tokenizer.model) and tokenizer_config.json /
  // special_tokens_map.json when they were present, so that transformers' AutoTokenizer loads it.
  virtual void save(const std::filesystem::path& dir) const = 0;
};

// Finds the tokenizer from a model directory's files: tokenizer.json (BPE: byte-level as GPT-2,
// Llama 3 and Qwen2, or SentencePiece-style with byte fallback), else vocab.json + merges.txt
// (GPT-2), else tokenizer.model (SentencePiece). Throws InputError naming the file (and line or
// key) when the files are missing, broken or use a component lmtune does not implement.
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& dir);

// Whether `dir` holds any tokenizer file (checked in full by check_tokenizer_files).
bool has_tokenizer_files(const std::filesystem::path& dir);

// Checks that `dir` holds one of the tokenizer layouts load_tokenizer reads, without reading them.
// Throws InputError naming the directory or the missing file.
void check_tokenizer_files(const std::filesystem::path& dir);

// `bytes` as valid UTF-8 text, as Hugging Face's decoders give text (Python's
// bytes.decode("utf-8", "replace"), Rust's String::from_utf8_lossy): each maximal ill-formed
// subpart (a byte that cannot start a sequence, or a sequence cut short) becomes one U+FFFD; the
// rest is copied. Decoded ids that split a character need this before they are shown as text.
std::string valid_utf8(std::string_view bytes);

}  // namespace lmtune
