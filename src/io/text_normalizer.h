// tokenizer.json's normalizers: Unicode normal forms, Prepend and Replace, in sequence; and the
// Replace that decoders share with them.
#pragma once

#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "regex_pattern.h"
#include "unicode_text.h"

namespace lmtune {

// Replaces every match of a literal string or of a pattern, left to right, with `content`.
class TextReplacement {
 public:
  TextReplacement(TextPattern pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}

  // `text` with the matches replaced, within each valid UTF-8 run of `text`.
  std::string apply(std::string_view text) const;

 private:
  TextPattern pattern_;
  std::string content_;
};

class TextNormalizer {
 public:
  void add_normal_form(NormalForm form) { steps_.emplace_back(form); }
  void add_prepend(std::string prefix) { steps_.emplace_back(Prepend{std::move(prefix)}); }
  void add_replace(TextReplacement replacement) { steps_.emplace_back(std::move(replacement)); }

  bool empty() const { return steps_.empty(); }

  // `text` after every step in order. Bytes that are not UTF-8 pass through unchanged.
  std::string normalize(std::string_view text) const;

 private:
  struct Prepend {
    std::string prefix;  // put before text that is not empty
  };
  using Step = std::variant<NormalForm, Prepend, TextReplacement>;

  std::vector<Step> steps_;
};

}  // namespace lmtune
