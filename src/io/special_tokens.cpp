#include "special_tokens.h"

#include <algorithm>

#include "unicode_text.h"

namespace lmtune {

namespace {

// The last character of `text` as (where it starts, code point), or nullopt when `text` is empty
// or does not end in valid UTF-8.
std::optional<std::pair<std::size_t, char32_t>> last_character(std::string_view text) {
  if (text.empty()) return std::nullopt;
  std::size_t start = text.size() - 1;
  while (start > 0 && text.size() - start < 4 &&
         (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80)
    --start;
  std::string_view tail = text.substr(start);
  if (valid_utf8_prefix(tail) != tail.size()) return std::nullopt;
  return std::make_pair(start, utf8_decode_first(tail));
}

// The length of the white space that ends `text`.
std::size_t trailing_space_length(std::string_view text) {
  std::size_t end = text.size();
  while (auto last = last_character(text.substr(0, end))) {
    if (!is_unicode_whitespace(last->second)) break;
    end = last->first;
  }
  return text.size() - end;
}

// The length of the white space that starts `text`.
std::size_t leading_space_length(std::string_view text) {
  std::size_t valid = valid_utf8_prefix(text), end = 0;
  while (end < valid && is_unicode_whitespace(utf8_decode_first(text.substr(end))))
    end += utf8_char_length(text.substr(end));
  return end;
}

bool ends_with_word_character(std::string_view text) {
  auto last = last_character(text);
  return last && is_word_character(last->second);
}

bool starts_with_word_character(std::string_view text) {
  return valid_utf8_prefix(text.substr(0, 4)) > 0 && is_word_character(utf8_decode_first(text));
}

}  // namespace

SpecialTokenSplitter::SpecialTokenSplitter(std::vector<SpecialToken> tokens) {
  for (auto& token : tokens) {
    if (!token.text.empty()) tokens_.push_back(std::move(token));  // an empty token matches nowhere
  }
  std::stable_sort(
      tokens_.begin(), tokens_.end(),
      [](const SpecialToken& a, const SpecialToken& b) { return a.text.size() > b.text.size(); });
}

SpecialTokenSplitter::Search::Search(const std::vector<SpecialToken>& tokens, std::string_view text)
    : tokens_(tokens), text_(text), next_(tokens.size()) {
  for (std::size_t t = 0; t < tokens_.size(); ++t) next_[t] = text_.find(tokens_[t].text);
}

std::optional<SpecialTokenSplitter::Match> SpecialTokenSplitter::Search::next(
    std::size_t consumed) {
  while (true) {
    auto first = std::min_element(next_.begin(), next_.end());  // first of equals = longest
    if (*first == std::string_view::npos) return std::nullopt;
    const SpecialToken& token = tokens_[first - next_.begin()];
    std::size_t start = *first, end = start + token.text.size();
    // Matches never overlap: the search goes on after this one, whether it is kept or not.
    for (std::size_t t = 0; t < tokens_.size(); ++t) {
      if (next_[t] != std::string_view::npos && next_[t] < end)
        next_[t] = text_.find(tokens_[t].text, end);
    }
    // rstrip may have consumed the white space a token written with leading spaces starts with.
    if (start < consumed || (token.single_word && !stands_alone(start, end))) continue;
    if (token.lstrip)
      start = std::max(start - trailing_space_length(text_.substr(0, start)), consumed);
    if (token.rstrip) end += leading_space_length(text_.substr(end));
    return Match{start, end, token.id};
  }
}

bool SpecialTokenSplitter::Search::stands_alone(std::size_t start, std::size_t end) const {
  return !ends_with_word_character(text_.substr(0, start)) &&
         !starts_with_word_character(text_.substr(end));
}

}  // namespace lmtune
