// Reading the pipeline of a Hugging Face tokenizer.json around its model: normalizer,
// pre_tokenizer, decoder and post_processor. Each throws UnsupportedTokenizer for a component
// lmtune does not implement and InputError for a malformed one, naming the file and key.
#pragma once

#include <filesystem>
#include <optional>

#include <nlohmann/json.hpp>

#include "lmtune/core/errors.h"
#include "lmtune/io/tokenizer.h"
#include "pre_tokenizer.h"
#include "text_normalizer.h"
#include "token_decoder.h"

namespace lmtune {

// A well-formed tokenizer.json that uses something lmtune would not encode exactly as Hugging
// Face does (another model type, a pre-tokenizer it lacks, ...): lmtune refuses rather than
// approximate. load_tokenizer falls back to a tokenizer.model beside it.
class UnsupportedTokenizer : public InputError {
 public:
  using InputError::InputError;
};

// `node` is tree["normalizer"] (null for none).
TextNormalizer read_normalizer(const nlohmann::json& node, const std::filesystem::path& file);

// `node` is tree["pre_tokenizer"] (null for none). `add_prefix_space`, when set, overrides the
// ByteLevel pre-tokenizer's (tokenizer_config.json may set it).
PreTokenizer read_pre_tokenizer(const nlohmann::json& node, const std::filesystem::path& file,
                                std::optional<bool> add_prefix_space);

// `node` is tree["decoder"] (null for none).
TokenDecoder read_decoder(const nlohmann::json& node, const std::filesystem::path& file);

// `node` is tree["post_processor"] (null for none): the special tokens its single-text template
// puts around a text.
TokenFraming read_post_processor(const nlohmann::json& node, const std::filesystem::path& file);

}  // namespace lmtune
