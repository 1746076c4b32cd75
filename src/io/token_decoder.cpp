#include "token_decoder.h"

#include "byte_alphabet.h"

namespace lmtune {

namespace {

// The byte a "<0xNN>" token stands for (two hex digits, either case), or -1.
int fallback_byte(const std::string& token) {
  if (token.size() != 6 || token.compare(0, 3, "<0x") != 0 || token[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  int high = hex(token[3]), low = hex(token[4]);
  return high < 0 || low < 0 ? -1 : high * 16 + low;
}

void decode_byte_fallback(std::vector<std::string>& tokens) {
  std::vector<std::string> out;
  std::string bytes;  // the run of byte tokens not yet written
  auto flush = [&] {
    if (bytes.empty()) return;
    if (valid_utf8_prefix(bytes) == bytes.size()) {
      out.push_back(bytes);
    } else {
      for (std::size_t i = 0; i < bytes.size(); ++i) out.push_back("\xEF\xBF\xBD");  // U+FFFD
    }
    bytes.clear();
  };
  for (std::string& token : tokens) {
    int byte = fallback_byte(token);
    if (byte >= 0) {
      bytes += static_cast<char>(byte);
      continue;
    }
    flush();
    out.push_back(std::move(token));
  }
  flush();
  tokens = std::move(out);
}

std::string join_tokens(const std::vector<std::string>& tokens, const std::string& separator) {
  std::string out;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (i > 0) out += separator;
    out += tokens[i];
  }
  return out;
}

void strip_token(std::string& token, const std::string& content, std::size_t start,
                 std::size_t stop) {
  std::size_t from = 0, to = token.size();
  for (std::size_t i = 0; i < start && token.compare(from, content.size(), content) == 0; ++i)
    from += content.size();
  for (std::size_t i = 0; i < stop && to >= from + content.size() &&
                          token.compare(to - content.size(), content.size(), content) == 0;
       ++i)
    to -= content.size();
  token = token.substr(from, to - from);
}

}  // namespace

void TokenDecoder::add_byte_level() {
  steps_.push_back([](std::vector<std::string>& tokens) {
    std::string bytes;
    for (const std::string& token : tokens) bytes += spelling_to_bytes(token).value_or(token);
    tokens.assign(1, std::move(bytes));
  });
}

void TokenDecoder::add_replace(TextReplacement replacement) {
  steps_.push_back([replacement = std::move(replacement)](std::vector<std::string>& tokens) {
    for (std::string& token : tokens) token = replacement.apply(token);
  });
}

void TokenDecoder::add_byte_fallback() {
  steps_.push_back(decode_byte_fallback);
}

void TokenDecoder::add_fuse() {
  steps_.push_back(
      [](std::vector<std::string>& tokens) { tokens.assign(1, join_tokens(tokens, "")); });
}

void TokenDecoder::add_strip(std::string content, std::size_t start, std::size_t stop) {
  steps_.push_back([=](std::vector<std::string>& tokens) {
    for (std::string& token : tokens) strip_token(token, content, start, stop);
  });
}

void TokenDecoder::add_metaspace(std::string replacement, bool prepended) {
  TextReplacement to_space(TextPattern::literal(replacement), " ");
  TextReplacement dropped(TextPattern::literal(std::move(replacement)), "");
  steps_.push_back([=](std::vector<std::string>& tokens) {
    for (std::size_t i = 0; i < tokens.size(); ++i)
      tokens[i] = (i == 0 && prepended ? dropped : to_space).apply(tokens[i]);
  });
}

std::string TokenDecoder::decode(std::vector<std::string> tokens) const {
  if (steps_.empty()) return join_tokens(tokens, " ");
  for (const Step& step : steps_) step(tokens);
  return join_tokens(tokens, "");
}

}  // namespace lmtune
