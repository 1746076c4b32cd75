// Finds added and special tokens (<|endoftext|>, <s>, ...) written in text, so they encode as one
// id, with tokenizer.json's lstrip, rstrip and single_word rules.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lmtune {

struct SpecialToken {
  std::string text;
  int64_t id = 0;
  bool lstrip = false;       // also takes the white space before it
  bool rstrip = false;       // also takes the white space after it
  bool single_word = false;  // only where no word character touches it on either side
  bool normalized = false;   // matched in normalized text rather than in the text as written
};

class SpecialTokenSplitter {
 public:
  SpecialTokenSplitter() = default;
  explicit SpecialTokenSplitter(std::vector<SpecialToken> tokens);

  const std::vector<SpecialToken>& tokens() const { return tokens_; }
  bool empty() const { return tokens_.empty(); }

  // Calls on_text(std::string_view) for each stretch of ordinary text and on_special(int64_t id)
  // for each special token, in the order they appear; the stretches are views into `text`. The
  // leftmost token wins, the longer where two start at the same place, as in Hugging Face
  // tokenizers.
  template <class OnText, class OnSpecial>
  void split(std::string_view text, OnText&& on_text, OnSpecial&& on_special) const;

 private:
  struct Match {
    std::size_t start;  // white space taken by lstrip included
    std::size_t stop;   // white space taken by rstrip included
    int64_t id;
  };

  // The matches of one text, one at a time, each found once (see next()).
  class Search {
   public:
    Search(const std::vector<SpecialToken>& tokens, std::string_view text);
    // The next match that starts at or after `consumed`, the end of the previous one.
    std::optional<Match> next(std::size_t consumed);

   private:
    bool stands_alone(std::size_t start, std::size_t end) const;

    const std::vector<SpecialToken>& tokens_;
    std::string_view text_;
    // Where each token next occurs; a token is searched again only once the text before this
    // has been consumed past it, so the whole split stays linear in practice.
    std::vector<std::size_t> next_;
  };

  std::vector<SpecialToken> tokens_;  // longest first, so that ties go to the longer token
};

template <class OnText, class OnSpecial>
void SpecialTokenSplitter::split(std::string_view text, OnText&& on_text,
                                 OnSpecial&& on_special) const {
  std::size_t consumed = 0;
  if (!tokens_.empty()) {
    Search search(tokens_, text);
    while (std::optional<Match> match = search.next(consumed)) {
      if (match->start > consumed) on_text(text.substr(consumed, match->start - consumed));
      on_special(match->id);
      consumed = match->stop;
    }
  }
  if (consumed < text.size()) on_text(text.substr(consumed));
}

}  // namespace lmtune
