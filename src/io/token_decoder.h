// tokenizer.json's decoders (ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, in
// sequence): the text of a list of token spellings.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "text_normalizer.h"

namespace lmtune {

class TokenDecoder {
 public:
  // Each token's spelling in GPT-2's byte alphabet back to its bytes, all joined into one. Bytes
  // that are not UTF-8 are kept as they are, so that byte-level decoding round-trips any input.
  void add_byte_level();
  void add_replace(TextReplacement replacement);
  // Runs of <0xNN> tokens back to their bytes; a run that is not valid UTF-8 becomes one U+FFFD
  // per byte, as in Hugging Face tokenizers.
  void add_byte_fallback();
  void add_fuse();  // all tokens joined into one
  // From each token, up to `start` leading and `stop` trailing copies of `content`.
  void add_strip(std::string content, std::size_t start, std::size_t stop);
  // `replacement` back to a space; in the first token it is dropped when `prepended` (the
  // pre-tokenizer put one there).
  void add_metaspace(std::string replacement, bool prepended);

  // The text of `tokens`. Without any step, the tokens joined by single spaces, as Hugging Face's
  // tokenizers decode when tokenizer.json has no decoder.
  std::string decode(std::vector<std::string> tokens) const;

 private:
  using Step = std::function<void(std::vector<std::string>& tokens)>;
  std::vector<Step> steps_;
};

}  // namespace lmtune
