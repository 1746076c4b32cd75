#include "lmtune/data/cleaning.h"

#include <algorithm>
#include <cctype>

#include "lmtune/core/hash.h"

namespace lmtune {
namespace {

constexpr std::string_view kUrlPrefixes[] = {"https://", "http://", "www."};

// Removes every non-empty range [i, match(text, i)) found scanning left to right; returns how
// many ranges it removed. Copies only when something is removed.
template <class Match>
int64_t remove_matches(std::string& text, Match match) {
  std::string kept;
  int64_t removed = 0;
  std::size_t kept_from = 0;
  for (std::size_t i = 0; i < text.size();) {
    std::size_t end = match(std::string_view(text), i);
    if (end == i) {
      ++i;
      continue;
    }
    kept.append(text, kept_from, i - kept_from);
    kept_from = i = end;
    ++removed;
  }
  if (removed > 0) {
    kept.append(text, kept_from, std::string::npos);
    text = std::move(kept);
  }
  return removed;
}

bool starts_with_ignoring_case(std::string_view text, std::size_t at, std::string_view prefix) {
  if (text.size() - at < prefix.size()) return false;
  for (std::size_t i = 0; i < prefix.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(text[at + i])) != prefix[i]) return false;
  return true;
}

bool ends_url(char c) {
  return std::isspace(static_cast<unsigned char>(c)) || c == '<' || c == '>' || c == '"' ||
         c == '`';
}

// Trailing characters that end the sentence around a URL rather than the URL itself: "see
// https://example.com." keeps its full stop, "(https://example.com/a_(b))" its last bracket.
std::size_t without_trailing_punctuation(std::string_view text, std::size_t at, std::size_t end) {
  while (end > at) {
    char last = text[end - 1];
    std::string_view url = text.substr(at, end - at);
    bool unbalanced_bracket = last == ')' && std::count(url.begin(), url.end(), '(') <
                                                 std::count(url.begin(), url.end(), ')');
    if (std::string_view(".,;:!?'").find(last) == std::string_view::npos && !unbalanced_bracket)
      break;
    --end;
  }
  return end;
}

std::size_t url_end(std::string_view text, std::size_t at) {
  if (at > 0 && std::isalnum(static_cast<unsigned char>(text[at - 1]))) return at;
  for (std::string_view prefix : kUrlPrefixes) {
    if (!starts_with_ignoring_case(text, at, prefix)) continue;
    std::size_t end = at + prefix.size();
    while (end < text.size() && !ends_url(text[end])) ++end;
    end = without_trailing_punctuation(text, at, end);
    return end > at + prefix.size() ? end : at;
  }
  return at;
}

std::size_t html_tag_end(std::string_view text, std::size_t at) {
  if (text[at] != '<') return at;
  if (text.substr(at, 4) == "<!--") {
    std::size_t close = text.find("-->", at + 4);
    return close == std::string_view::npos ? at : close + 3;
  }
  // A tag name follows at once ("<p", "</p", "<!DOCTYPE", "<?xml"); "a < b" is not a tag.
  std::size_t name = at + 1;
  if (name < text.size() && (text[name] == '/' || text[name] == '!' || text[name] == '?')) ++name;
  if (name >= text.size() || !std::isalpha(static_cast<unsigned char>(text[name]))) return at;
  for (std::size_t i = name; i < text.size(); ++i) {
    if (text[i] == '>') return i + 1;
    if (text[i] == '<') return at;
  }
  return at;
}

std::size_t control_char_end(std::string_view text, std::size_t at) {
  auto c = static_cast<unsigned char>(text[at]);
  if ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7f) return at + 1;
  // C1 controls U+0080..U+009F, encoded in UTF-8 as C2 80..C2 9F.
  if (c == 0xc2 && at + 1 < text.size()) {
    auto next = static_cast<unsigned char>(text[at + 1]);
    if (next >= 0x80 && next <= 0x9f) return at + 2;
  }
  return at;
}

bool is_blank(std::string_view text) {
  return std::all_of(text.begin(), text.end(),
                     [](char c) { return std::isspace(static_cast<unsigned char>(c)); });
}

uint64_t document_hash(const Document& doc) {
  Hash64 hash;
  // The prompt's length (plus one) separates "ab" + "c" from "a" + "bc" and plain documents.
  hash.update_int(doc.prompt ? doc.prompt->size() + 1 : 0);
  if (doc.prompt) hash.update(*doc.prompt);
  return hash.update(doc.text).value();
}

}  // namespace

int64_t strip_urls(std::string& text) {
  return remove_matches(text, url_end);
}

int64_t strip_html_tags(std::string& text) {
  if (text.find('<') == std::string::npos) return 0;
  return remove_matches(text, html_tag_end);
}

int64_t drop_control_chars(std::string& text) {
  return remove_matches(text, control_char_end);
}

int64_t count_chars(std::string_view text) {
  return std::count_if(text.begin(), text.end(),
                       [](char c) { return (static_cast<unsigned char>(c) & 0xc0) != 0x80; });
}

bool DocumentFilter::keep(Document& doc, PrepareReport& report) {
  if (doc.prompt) clean(*doc.prompt, report);
  clean(doc.text, report);
  if (too_short(doc)) {
    ++report.dropped_short;
    return false;
  }
  if (config_.dedupe && !seen_.insert(document_hash(doc)).second) {
    ++report.dropped_duplicates;
    return false;
  }
  return true;
}

void DocumentFilter::clean(std::string& text, PrepareReport& report) const {
  // Tags go first, so a URL inside an attribute goes with its tag.
  if (config_.strip_html) report.html_tags_stripped += strip_html_tags(text);
  if (config_.strip_urls) report.urls_stripped += strip_urls(text);
  if (config_.drop_control_chars) report.control_chars_dropped += drop_control_chars(text);
}

bool DocumentFilter::too_short(const Document& doc) const {
  std::string_view prompt = doc.prompt ? std::string_view(*doc.prompt) : std::string_view();
  if (is_blank(prompt) && is_blank(doc.text)) return true;
  return count_chars(prompt) + count_chars(doc.text) < config_.min_chars;
}

}  // namespace lmtune
