#include "gpt2_pretokenizer.h"

#include <string>

namespace lmtune {
namespace {

// GPT-2's pattern (openai/gpt-2 encoder.py). Contractions are matched case-sensitively, letters
// and digits keep one leading space, and a run of white space leaves its last space to the word
// after it. The possessive forms (++) give the same matches as GPT-2's greedy ones, because no
// later alternative could use what they give back, and spare PCRE2 the backtracking.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s+(?!\S)|\s++)";

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(code, buffer, sizeof(buffer));
  return reinterpret_cast<const char*>(buffer);
}

}  // namespace

Gpt2Pretokenizer::Gpt2Pretokenizer() {
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  // UTF + UCP: \p{L}, \p{N} and \s are Unicode classes, as in the `regex` module GPT-2 used.
  // ANCHORED: every match starts where the previous one ended (see match_end).
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kGpt2Pattern), PCRE2_ZERO_TERMINATED,
                        PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED, &error, &error_offset, nullptr);
  if (!code_)
    throw Error("cannot compile GPT-2's pre-tokenisation pattern: " + pcre2_message(error));
  jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
}

Gpt2Pretokenizer::~Gpt2Pretokenizer() {
  pcre2_code_free(code_);
}

std::size_t Gpt2Pretokenizer::match_end(std::string_view text, std::size_t offset,
                                        pcre2_match_data* match) const {
  auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  // The caller has checked the UTF-8 once for the whole text; PCRE2 would check it at every call.
  int rc =
      jit_ ? pcre2_jit_match(code_, subject, text.size(), offset, 0, match, nullptr)
           : pcre2_match(code_, subject, text.size(), offset, PCRE2_NO_UTF_CHECK, match, nullptr);
  if (rc < 0)
    throw Error("pre-tokenisation failed at byte " + std::to_string(offset) + ": " +
                pcre2_message(rc));
  return pcre2_get_ovector_pointer(match)[1];
}

}  // namespace lmtune
