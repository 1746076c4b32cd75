// GPT-2's byte alphabet: the printable character that spells each byte in byte-level BPE
// vocabularies ("Ġ" is the space byte), both ways.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace lmtune {

// The UTF-8 spelling of `byte` in the alphabet.
std::string byte_spelling(unsigned char byte);

// The bytes a byte-level spelling stands for, or nullopt when it uses a character outside the
// alphabet (added tokens such as "<|endoftext|>" are spelt in plain ASCII and do map).
std::optional<std::string> spelling_to_bytes(std::string_view spelling);

}  // namespace lmtune
