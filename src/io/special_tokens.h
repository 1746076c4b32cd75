// Finds added and special tokens (<|endoftext|>, <s>, ...) written in text, so they encode as one
// id.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lmtune {

struct SpecialToken {
  std::string text;
  int64_t id = 0;
};

class SpecialTokenSplitter {
 public:
  SpecialTokenSplitter() = default;
  explicit SpecialTokenSplitter(std::vector<SpecialToken> tokens);

  const std::vector<SpecialToken>& tokens() const { return tokens_; }

  // Calls on_text(std::string_view) for each stretch of ordinary text and on_special(int64_t id)
  // for each special token, in the order they appear. Where two tokens start at the same place the
  // longer one wins, as in Hugging Face tokenizers.
  template <class OnText, class OnSpecial>
  void split(std::string_view text, OnText&& on_text, OnSpecial&& on_special) const;

 private:
  std::vector<SpecialToken> tokens_;  // longest first, so that ties go to the longer token
};

template <class OnText, class OnSpecial>
void SpecialTokenSplitter::split(std::string_view text, OnText&& on_text,
                                 OnSpecial&& on_special) const {
  if (tokens_.empty()) {
    if (!text.empty()) on_text(text);
    return;
  }
  // Where each token next occurs at or after `pos`; a token is searched again only once the text
  // before `pos` has been consumed past it, so the whole split stays linear in practice.
  std::vector<std::size_t> next(tokens_.size());
  for (std::size_t t = 0; t < tokens_.size(); ++t) next[t] = text.find(tokens_[t].text);
  std::size_t pos = 0;
  while (true) {
    auto first = std::min_element(next.begin(), next.end());  // first of equals = longest
    if (*first == std::string_view::npos) break;
    const SpecialToken& token = tokens_[first - next.begin()];
    if (*first > pos) on_text(text.substr(pos, *first - pos));
    on_special(token.id);
    pos = *first + token.text.size();
    for (std::size_t t = 0; t < tokens_.size(); ++t) {
      if (next[t] != std::string_view::npos && next[t] < pos)
        next[t] = text.find(tokens_[t].text, pos);
    }
  }
  if (pos < text.size()) on_text(text.substr(pos));
}

}  // namespace lmtune
