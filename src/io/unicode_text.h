// UTF-8 helpers of the tokenizers, and the Unicode properties and normal forms they take from ICU;
// never throws on invalid UTF-8, which the callers pass through byte by byte.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "tokenizer_files.h"

namespace lmtune {

// Unicode normal forms, as tokenizer.json's normalizers name them.
enum class NormalForm { kNfc, kNfd, kNfkc, kNfkd };

// `text` (valid UTF-8) in the normal form, through ICU.
std::string to_normal_form(std::string_view text, NormalForm form);

// The UTF-8 encoding of one code point.
std::string utf8_encode(char32_t code_point);

// Bytes in the character that starts `text` (valid UTF-8, not empty): 1 to 4.
inline std::size_t utf8_char_length(std::string_view text) {
  auto lead = static_cast<unsigned char>(text[0]);
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

// The code point of the character that starts `text` (valid UTF-8, not empty).
char32_t utf8_decode_first(std::string_view text);

// The code point of the character that ends `text` (valid UTF-8, not empty).
char32_t utf8_decode_last(std::string_view text);

// Unicode's White_Space property (what Rust's char::is_whitespace and \s in Rust's regex mean).
bool is_unicode_whitespace(char32_t code_point);

// A word character as \w in Rust's regex: Alphabetic, a mark, a decimal digit, connector
// punctuation (such as '_') or a join control.
bool is_word_character(char32_t code_point);

// Splits `text` into its longest valid UTF-8 runs and the single bytes between them: calls
// on_valid(std::string_view) for each run and on_invalid(std::string_view) for each stray byte,
// in order. Tokenizers see text as Unicode; the bytes that are not get their own pieces.
template <class OnValid, class OnInvalid>
void for_each_utf8_run(std::string_view text, OnValid&& on_valid, OnInvalid&& on_invalid) {
  while (!text.empty()) {
    std::size_t valid = valid_utf8_prefix(text);
    if (valid > 0) on_valid(text.substr(0, valid));
    if (valid == text.size()) return;
    on_invalid(text.substr(valid, 1));
    text.remove_prefix(valid + 1);
  }
}

}  // namespace lmtune
