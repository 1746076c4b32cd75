// Regular expressions over UTF-8 with Unicode classes (\p{L}, \p{N}, \s), through PCRE2 and its
// JIT: the pre-tokenizers' patterns and the normalizers' and decoders' Replace.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace lmtune {

class RegexPattern {
 public:
  // Compiles `pattern` with Unicode classes; throws std::invalid_argument with PCRE2's message,
  // for the caller to name the file and key it came from.
  explicit RegexPattern(const std::string& pattern);
  ~RegexPattern();
  RegexPattern(RegexPattern&& other) noexcept;
  RegexPattern& operator=(RegexPattern&& other) noexcept;
  RegexPattern(const RegexPattern&) = delete;
  RegexPattern& operator=(const RegexPattern&) = delete;

  // Calls on_match(start, end) for each match in `text`, leftmost first and without overlap, as
  // Rust's and Oniguruma's find_iter do: after an empty match the search goes on one character
  // further. `text` must be valid UTF-8 (see valid_utf8_prefix): it is not checked again here.
  template <class OnMatch>
  void for_each_match(std::string_view text, OnMatch&& on_match) const;

 private:
  // The first match at or after `offset` as (start, end), or start == npos when there is none.
  std::pair<std::size_t, std::size_t> find(std::string_view text, std::size_t offset) const;

  pcre2_code* code_ = nullptr;
  bool jit_ = false;  // false where PCRE2 was built without its JIT: the interpreter is used
};

template <class OnMatch>
void RegexPattern::for_each_match(std::string_view text, OnMatch&& on_match) const {
  std::size_t offset = 0;
  while (offset <= text.size()) {
    auto [start, end] = find(text, offset);
    if (start == std::string_view::npos) return;
    on_match(start, end);
    offset = end;
    if (start == end) {  // step over one whole character
      if (end == text.size()) return;
      ++offset;
      while (offset < text.size() && (static_cast<unsigned char>(text[offset]) & 0xC0) == 0x80)
        ++offset;
    }
  }
}

// A pattern as tokenizer.json writes one: {"String": literal} or {"Regex": pattern}.
class TextPattern {
 public:
  // Both throw std::invalid_argument for an empty literal or a pattern PCRE2 cannot compile.
  static TextPattern literal(std::string text);
  static TextPattern regex(const std::string& pattern);

  // As RegexPattern::for_each_match; a literal matches wherever it occurs, without overlap.
  template <class OnMatch>
  void for_each_match(std::string_view text, OnMatch&& on_match) const;

 private:
  std::string literal_;
  std::shared_ptr<const RegexPattern> regex_;  // set for a pattern, else literal_ is matched
};

template <class OnMatch>
void TextPattern::for_each_match(std::string_view text, OnMatch&& on_match) const {
  if (regex_) {
    regex_->for_each_match(text, on_match);
    return;
  }
  for (std::size_t at = text.find(literal_); at != std::string_view::npos;
       at = text.find(literal_, at + literal_.size()))
    on_match(at, at + literal_.size());
}

}  // namespace lmtune
