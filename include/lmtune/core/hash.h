// A stable 64-bit hash (FNV-1a) for cache keys and de-duplication: the same value on every
// machine and every run, unlike std::hash.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace lmtune {

class Hash64 {
 public:
  Hash64& update(std::string_view bytes) {
    for (unsigned char c : bytes) {
      state_ ^= c;
      state_ *= kPrime;
    }
    return *this;
  }
  // Integers are hashed as their 8 little-endian bytes, so the value does not depend on the host.
  Hash64& update_int(uint64_t value) {
    char bytes[8];
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((value >> (8 * i)) & 0xff);
    return update(std::string_view(bytes, 8));
  }
  uint64_t value() const { return state_; }
  // 16 lowercase hex digits.
  std::string hex() const {
    static constexpr char kDigits[] = "0123456789abcdef";
    std::string out(16, '0');
    for (int i = 0; i < 16; ++i) out[15 - i] = kDigits[(state_ >> (4 * i)) & 0xf];
    return out;
  }

 private:
  static constexpr uint64_t kOffsetBasis = 0xcbf29ce484222325ull;
  static constexpr uint64_t kPrime = 0x100000001b3ull;
  uint64_t state_ = kOffsetBasis;
};

}  // namespace lmtune
