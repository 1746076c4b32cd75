#include "tokenizer_files.h"

#include <cstring>
#include <fstream>
#include <sstream>

#include "lmtune/core/errors.h"
#include "lmtune/io/tokenizer.h"

namespace lmtune {
namespace fs = std::filesystem;
using nlohmann::json;

std::string read_tokenizer_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path.string(), "cannot read the tokenizer file (does it exist?)");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw InputError(path.string(), "reading the tokenizer file failed");
  return text.str();
}

json read_tokenizer_json(const fs::path& path) {
  std::string text = read_tokenizer_file(path);
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    // what() reads "[json.exception.parse_error.101] parse error at line 3, column 7: ..."; the
    // part from "parse error" on already says where.
    std::string message = e.what();
    auto start = message.find("parse error");
    throw InputError(path.string(),
                     "not valid JSON (" +
                         (start == std::string::npos ? message : message.substr(start)) +
                         "); the file may be truncated");
  }
}

std::vector<fs::path> tokenizer_config_files(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const char* name : {kTokenizerConfigFile, kSpecialTokensMapFile}) {
    if (fs::is_regular_file(dir / name)) files.push_back(dir / name);
  }
  return files;
}

std::optional<std::string> special_token_text(const json& entry) {
  if (entry.is_string()) return entry.get<std::string>();
  if (entry.is_object() && entry.contains("content") && entry["content"].is_string())
    return entry["content"].get<std::string>();
  return std::nullopt;
}

std::optional<json> configured_value(const std::vector<fs::path>& config_files, const char* key) {
  for (const auto& file : config_files) {
    json config = read_tokenizer_json(file);
    if (!config.is_object()) throw InputError(file.string(), "expected a JSON object");
    if (auto it = config.find(key); it != config.end() && !it->is_null()) return *it;
  }
  return std::nullopt;
}

void copy_tokenizer_files(const std::vector<fs::path>& files, const fs::path& dir) {
  fs::create_directories(dir);
  for (const auto& file : files) {
    fs::path target = dir / file.filename();
    // Saving into the directory it was loaded from must not truncate the source.
    if (fs::exists(target) && fs::equivalent(file, target)) continue;
    fs::copy_file(file, target, fs::copy_options::overwrite_existing);
  }
}

namespace {

bool is_continuation(unsigned char byte) {
  return (byte & 0xC0) == 0x80;
}

// The UTF-8 sequence at the start of `s` (n > 0 bytes available): its length when it is well
// formed, else the length of its maximal subpart (the bytes that begin a well-formed sequence
// before the first that cannot continue it; at least 1), which a decoder replaces by one U+FFFD.
// The ranges of the second byte are those of the Unicode standard's table of well-formed
// sequences.
struct Utf8Sequence {
  std::size_t length = 0;
  bool valid = false;
};

Utf8Sequence utf8_sequence(const unsigned char* s, std::size_t n) {
  unsigned char lead = s[0];
  unsigned char low = 0x80, high = 0xBF;  // allowed range of the second byte
  std::size_t length = 0;
  if (lead < 0x80) {
    return {1, true};
  } else if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) low = 0xA0;   // overlong
    if (lead == 0xED) high = 0x9F;  // surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) low = 0x90;   // overlong
    if (lead == 0xF4) high = 0x8F;  // past U+10FFFF
  } else {
    return {1, false};
  }
  if (n < 2 || s[1] < low || s[1] > high) return {1, false};
  for (std::size_t i = 2; i < length; ++i) {
    if (i >= n || !is_continuation(s[i])) return {i, false};
  }
  return {length, true};
}

}  // namespace

std::size_t valid_utf8_prefix(std::string_view text) {
  auto s = reinterpret_cast<const unsigned char*>(text.data());
  std::size_t n = text.size(), i = 0;
  constexpr uint64_t kHighBits = 0x8080808080808080ull;
  while (i < n) {
    // Most text is ASCII: skip it eight bytes at a time.
    if (i + 8 <= n) {
      uint64_t word;
      std::memcpy(&word, s + i, sizeof(word));
      if ((word & kHighBits) == 0) {
        i += 8;
        continue;
      }
    }
    if (s[i] < 0x80) {
      ++i;
      continue;
    }
    const Utf8Sequence sequence = utf8_sequence(s + i, n - i);
    if (!sequence.valid) return i;
    i += sequence.length;
  }
  return n;
}

std::string valid_utf8(std::string_view bytes) {
  std::size_t valid = valid_utf8_prefix(bytes);
  if (valid == bytes.size()) return std::string(bytes);
  auto s = reinterpret_cast<const unsigned char*>(bytes.data());
  std::string text(bytes.substr(0, valid));
  for (std::size_t i = valid, n = bytes.size(); i < n;) {
    const Utf8Sequence sequence = utf8_sequence(s + i, n - i);
    if (sequence.valid)
      text.append(bytes.substr(i, sequence.length));
    else
      text += "\xEF\xBF\xBD";  // U+FFFD
    i += sequence.length;
  }
  return text;
}

}  // namespace lmtune
