// GPT-2's pre-tokenisation: splits text into the pieces BPE merges within, with PCRE2 (and its
// JIT).
#pragma once

#include <memory>
#include <string_view>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "lmtune/core/errors.h"

namespace lmtune {

class Gpt2Pretokenizer {
 public:
  Gpt2Pretokenizer();  // compiles the pattern; throws Error when PCRE2 cannot
  ~Gpt2Pretokenizer();
  Gpt2Pretokenizer(const Gpt2Pretokenizer&) = delete;
  Gpt2Pretokenizer& operator=(const Gpt2Pretokenizer&) = delete;

  // Calls piece(std::string_view) for each piece of `text`, in order; the pieces cover the text
  // exactly. `text` must be valid UTF-8 (see valid_utf8_prefix): it is not checked again here.
  template <class OnPiece>
  void split(std::string_view text, OnPiece&& piece) const;

 private:
  // Where the match at `offset` ends; every position starts a match, because each character is a
  // letter, a digit, white space or something else, and the pattern has an alternative for each.
  std::size_t match_end(std::string_view text, std::size_t offset, pcre2_match_data* match) const;

  pcre2_code* code_ = nullptr;
  bool jit_ = false;  // false where PCRE2 was built without its JIT: the interpreter is used
};

template <class OnPiece>
void Gpt2Pretokenizer::split(std::string_view text, OnPiece&& piece) const {
  std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)> match(
      pcre2_match_data_create_from_pattern(code_, nullptr), &pcre2_match_data_free);
  if (!match) throw Error("out of memory while pre-tokenising");
  std::size_t offset = 0;
  while (offset < text.size()) {
    std::size_t end = match_end(text, offset, match.get());
    piece(text.substr(offset, end - offset));
    offset = end;
  }
}

}  // namespace lmtune
