#include "byte_alphabet.h"

#include <array>

namespace lmtune {

namespace {

// Bytes printable in Latin-1 stand for themselves, the others (controls, space, ...) take U+0100
// on, in byte order, so that every token is a readable string.
const std::array<char32_t, 256>& byte_code_points() {
  static const auto kAlphabet = [] {
    std::array<char32_t, 256> alphabet{};
    char32_t next = 0x100;
    for (int byte = 0; byte < 256; ++byte) {
      bool printable =
          (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) || byte >= 0xAE;
      alphabet[byte] = printable ? static_cast<char32_t>(byte) : next++;
    }
    return alphabet;
  }();
  return kAlphabet;
}

}  // namespace

std::string byte_spelling(unsigned char byte) {
  char32_t code_point = byte_code_points()[byte];
  if (code_point < 0x80) return std::string(1, static_cast<char>(code_point));
  // The alphabet stays below U+0800: two bytes.
  return {static_cast<char>(0xC0 | (code_point >> 6)),
          static_cast<char>(0x80 | (code_point & 0x3F))};
}

std::optional<std::string> spelling_to_bytes(std::string_view spelling) {
  static const auto kByteOf = [] {
    std::array<int, 0x200> byte_of;
    byte_of.fill(-1);
    for (int byte = 0; byte < 256; ++byte) byte_of[byte_code_points()[byte]] = byte;
    return byte_of;
  }();
  std::string bytes;
  for (std::size_t i = 0; i < spelling.size();) {
    auto lead = static_cast<unsigned char>(spelling[i]);
    char32_t code_point = lead;
    if (lead >= 0xC0 && lead < 0xE0 && i + 1 < spelling.size()) {
      code_point = ((lead & 0x1F) << 6) | (static_cast<unsigned char>(spelling[i + 1]) & 0x3F);
      i += 2;
    } else if (lead < 0x80) {
      i += 1;
    } else {
      return std::nullopt;
    }
    if (code_point >= kByteOf.size() || kByteOf[code_point] < 0) return std::nullopt;
    bytes += static_cast<char>(kByteOf[code_point]);
  }
  return bytes;
}

}  // namespace lmtune
