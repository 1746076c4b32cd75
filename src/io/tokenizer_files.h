// Reading, checking and copying the files tokenizers are loaded from; failures are InputErrors.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace lmtune {

// Hugging Face's files beside a tokenizer: copied by save() when present, and read for the
// special tokens they name.
inline constexpr const char* kTokenizerConfigFile = "tokenizer_config.json";
inline constexpr const char* kSpecialTokensMapFile = "special_tokens_map.json";

// The whole file; InputError when it cannot be read.
std::string read_tokenizer_file(const std::filesystem::path& path);

// The file parsed as JSON; InputError with the line and column of a syntax error.
nlohmann::json read_tokenizer_json(const std::filesystem::path& path);

// tokenizer_config.json and special_tokens_map.json when they exist in `dir`.
std::vector<std::filesystem::path> tokenizer_config_files(const std::filesystem::path& dir);

// The text of a special token as tokenizer_config.json and tokenizer.json write it: "<s>" or
// {"content": "<s>", ...}; nullopt for null or any other shape.
std::optional<std::string> special_token_text(const nlohmann::json& entry);

// The value of `key` in the first of `config_files` that sets it (not null).
std::optional<nlohmann::json> configured_value(
    const std::vector<std::filesystem::path>& config_files, const char* key);

// Copies each file into `dir` (created when missing); a file already in `dir` stays as it is.
void copy_tokenizer_files(const std::vector<std::filesystem::path>& files,
                          const std::filesystem::path& dir);

// Length of the longest prefix of `text` that is valid UTF-8: no overlong forms, surrogates or
// code points past U+10FFFF.
std::size_t valid_utf8_prefix(std::string_view text);

}  // namespace lmtune
