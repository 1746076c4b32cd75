#include "regex_pattern.h"

#include <memory>
#include <stdexcept>

#include "lmtune/core/errors.h"

namespace lmtune {
namespace {

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(code, buffer, sizeof(buffer));
  return reinterpret_cast<const char*>(buffer);
}

// One match block per thread serves every pattern: only the whole match's offsets are read, and
// PCRE2 records them even when the pattern has more groups than the block has room for.
pcre2_match_data* thread_match_data() {
  thread_local std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)> match(
      pcre2_match_data_create(/*ovecsize=*/1, nullptr), &pcre2_match_data_free);
  if (!match) throw Error("out of memory while matching a tokenizer pattern");
  return match.get();
}

}  // namespace

RegexPattern::RegexPattern(const std::string& pattern) {
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  // UTF + UCP: \p{L}, \w, \d and \s are Unicode classes, as in the regex engines of the
  // tokenizers the patterns come from.
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                        PCRE2_UTF | PCRE2_UCP, &error, &error_offset, nullptr);
  if (!code_)
    throw std::invalid_argument("PCRE2 cannot compile the pattern at offset " +
                                std::to_string(error_offset) + ": " + pcre2_message(error));
  jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
}

RegexPattern::~RegexPattern() {
  pcre2_code_free(code_);
}

RegexPattern::RegexPattern(RegexPattern&& other) noexcept
    : code_(std::exchange(other.code_, nullptr)), jit_(other.jit_) {}

RegexPattern& RegexPattern::operator=(RegexPattern&& other) noexcept {
  std::swap(code_, other.code_);
  std::swap(jit_, other.jit_);
  return *this;
}

TextPattern TextPattern::literal(std::string text) {
  if (text.empty()) throw std::invalid_argument("an empty string matches nowhere");
  TextPattern pattern;
  pattern.literal_ = std::move(text);
  return pattern;
}

TextPattern TextPattern::regex(const std::string& pattern) {
  TextPattern compiled;
  compiled.regex_ = std::make_shared<const RegexPattern>(pattern);
  return compiled;
}

std::pair<std::size_t, std::size_t> RegexPattern::find(std::string_view text,
                                                       std::size_t offset) const {
  auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  pcre2_match_data* match = thread_match_data();
  // The caller has checked the UTF-8 once for the whole text; PCRE2 would check it at every call.
  int rc =
      jit_ ? pcre2_jit_match(code_, subject, text.size(), offset, 0, match, nullptr)
           : pcre2_match(code_, subject, text.size(), offset, PCRE2_NO_UTF_CHECK, match, nullptr);
  if (rc == PCRE2_ERROR_NOMATCH) return {std::string_view::npos, std::string_view::npos};
  if (rc < 0)
    throw Error("matching a tokenizer pattern failed at byte " + std::to_string(offset) + ": " +
                pcre2_message(rc));
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
  return {ovector[0], ovector[1]};
}

}  // namespace lmtune
