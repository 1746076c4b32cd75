#include "lmtune/io/tokenizer_vocabulary.h"

#include <sentencepiece_processor.h>

#include <map>
#include <optional>

#include <nlohmann/json.hpp>

#include "bpe_tokenizer.h"
#include "lmtune/core/errors.h"
#include "lmtune/io/tokenizer.h"
#include "pre_tokenizer.h"
#include "tokenizer_files.h"
#include "tokenizer_json.h"

namespace lmtune {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

bool vocabulary_flag(const json& node, const char* key, bool fallback) {
  auto it = node.find(key);
  return it != node.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

std::string vocabulary_step_type(const json& step) {
  auto it = step.find("type");
  return it != step.end() && it->is_string() ? it->get<std::string>() : "?";
}

// tokenizer.json's pre_tokenizer as a list of steps, Sequences flattened.
void flatten_pre_tokenizer(const json& node, std::vector<const json*>& steps) {
  if (!node.is_object()) return;
  auto inner = node.find("pretokenizers");
  if (vocabulary_step_type(node) == "Sequence" && inner != node.end() && inner->is_array()) {
    for (const auto& step : *inner) flatten_pre_tokenizer(step, steps);
  } else {
    steps.push_back(&node);
  }
}

// ByteLevel without a prefix space (tokenizer_config.json's add_prefix_space wins, as in
// transformers), with or without GPT-2's pattern.
bool is_byte_level_step(const json& step, bool use_regex, std::optional<bool> prefix_space) {
  return vocabulary_step_type(step) == "ByteLevel" &&
         vocabulary_flag(step, "use_regex", true) == use_regex &&
         !prefix_space.value_or(vocabulary_flag(step, "add_prefix_space", false));
}

// A Split that isolates the matches of `pattern`.
bool is_isolating_split(const json& step, const char* pattern) {
  if (vocabulary_step_type(step) != "Split" || step.value("behavior", "") != "Isolated" ||
      vocabulary_flag(step, "invert", false))
    return false;
  auto it = step.find("pattern");
  return it != step.end() && it->is_object() && it->contains("Regex") && (*it)["Regex"] == pattern;
}

PreTokenizerShape classify_pre_tokenizer(const json& tree, std::optional<bool> prefix_space,
                                         std::string& summary) {
  const json pre_tokenizer = tree.value("pre_tokenizer", json());
  std::vector<const json*> steps;  // into pre_tokenizer
  flatten_pre_tokenizer(pre_tokenizer, steps);
  summary = "Sequence[";
  for (std::size_t i = 0; i < steps.size(); ++i)
    summary += (i ? ", " : "") + vocabulary_step_type(*steps[i]);
  summary += "]";
  // NFC (Qwen2's) leaves the text llama.cpp sees alike; any other normalizer changes it.
  const json normalizer = tree.value("normalizer", json());
  if (!normalizer.is_null() && vocabulary_step_type(normalizer) != "NFC")
    return PreTokenizerShape::kOther;
  if (steps.size() == 1 && is_byte_level_step(*steps[0], true, prefix_space))
    return PreTokenizerShape::kGpt2;
  if (steps.size() != 2) return PreTokenizerShape::kOther;
  const json& first = *steps[0];
  const json& last = *steps[1];
  if (vocabulary_step_type(first) == "Digits" &&
      vocabulary_flag(first, "individual_digits", false) &&
      is_byte_level_step(last, true, prefix_space))
    return PreTokenizerShape::kDigitsGpt2;
  if (!is_byte_level_step(last, false, prefix_space)) return PreTokenizerShape::kOther;
  if (is_isolating_split(first, kLlama3SplitPattern)) return PreTokenizerShape::kLlama3;
  if (is_isolating_split(first, kQwen2SplitPattern)) return PreTokenizerShape::kQwen2;
  return PreTokenizerShape::kOther;
}

std::optional<bool> configured_prefix_space_of(const fs::path& dir) {
  auto value = configured_value(tokenizer_config_files(dir), "add_prefix_space");
  return value && value->is_boolean() ? std::optional<bool>(value->get<bool>()) : std::nullopt;
}

// tokenizer_config.json's added_tokens_decoder: id -> {"content", "special", ...}.
std::map<int64_t, json> added_tokens_decoder(const fs::path& dir) {
  std::map<int64_t, json> entries;
  const fs::path file = dir / kTokenizerConfigFile;
  if (!fs::is_regular_file(file)) return entries;
  const json config = read_tokenizer_json(file);
  auto decoder = config.find("added_tokens_decoder");
  if (decoder == config.end() || !decoder->is_object()) return entries;
  for (const auto& [id, entry] : decoder->items()) {
    const bool numeric =
        !id.empty() && id.size() < 9 && id.find_first_not_of("0123456789") == std::string::npos;
    if (!numeric || !special_token_text(entry))
      throw InputError(file.string(),
                       "added_tokens_decoder." + id + ": expected an id and {\"content\": TEXT}");
    entries[std::stoll(id)] = entry;
  }
  return entries;
}

VocabularyToken& token_at(TokenizerVocabulary& vocabulary, int64_t id) {
  if (id >= static_cast<int64_t>(vocabulary.tokens.size())) vocabulary.tokens.resize(id + 1);
  return vocabulary.tokens[id];
}

TokenizerVocabulary list_sentencepiece(const fs::path& file) {
  sentencepiece::SentencePieceProcessor processor;
  const auto status = processor.LoadFromSerializedProto(read_tokenizer_file(file));
  if (!status.ok())
    throw InputError(file.string(), "not a SentencePiece model (" + status.ToString() + ")");
  TokenizerVocabulary vocabulary;
  vocabulary.kind = VocabularyKind::kSentencePiece;
  vocabulary.file = file;
  vocabulary.pre_tokenizer_summary = "SentencePiece";
  for (int id = 0; id < processor.GetPieceSize(); ++id) {
    VocabularyToken& token = token_at(vocabulary, id);
    token.text = processor.IdToPiece(id);
    token.defined = true;
    token.score = processor.GetScore(id);
    token.type = processor.IsUnknown(id)   ? PieceType::kUnknown
                 : processor.IsControl(id) ? PieceType::kControl
                 : processor.IsUnused(id)  ? PieceType::kUnused
                 : processor.IsByte(id)    ? PieceType::kByte
                                           : PieceType::kNormal;
  }
  // transformers adds tokenizer_config.json's added tokens on top of the model's pieces.
  for (const auto& [id, entry] : added_tokens_decoder(file.parent_path())) {
    VocabularyToken& token = token_at(vocabulary, id);
    token.text = *special_token_text(entry);
    token.defined = token.added = true;
    token.special = vocabulary_flag(entry, "special", false);
  }
  return vocabulary;
}

// A BPE vocabulary read by lmtune's tokenizer readers; `special` says which added ids are special.
TokenizerVocabulary list_bpe(const BpeVocabulary& bpe, const std::map<int64_t, bool>& special,
                             bool special_by_default) {
  TokenizerVocabulary vocabulary;
  vocabulary.kind = VocabularyKind::kByteLevelBpe;
  vocabulary.file = bpe.vocab_file;
  for (const auto& [spelling, id] : bpe.tokens) {
    VocabularyToken& token = token_at(vocabulary, id);
    token.text = spelling;
    token.defined = true;
  }
  std::vector<std::string> spellings(vocabulary.tokens.size());
  for (std::size_t id = 0; id < spellings.size(); ++id) spellings[id] = vocabulary.tokens[id].text;
  for (const auto& added : bpe.added) {
    VocabularyToken& token = token_at(vocabulary, added.id);
    token.text = added.text;
    token.defined = token.added = true;
    auto it = special.find(added.id);
    token.special = it != special.end() ? it->second : special_by_default;
  }
  vocabulary.merges.reserve(bpe.merges.size());
  for (const auto& merge : bpe.merges)
    vocabulary.merges.emplace_back(spellings[merge.left], spellings[merge.right]);
  return vocabulary;
}

TokenizerVocabulary list_tokenizer_json(const fs::path& file, const fs::path& sentencepiece_model) {
  const json tree = read_tokenizer_json(file);
  std::optional<BpeVocabulary> bpe;
  try {
    bpe = read_tokenizer_json_vocabulary(tree, file);
  } catch (const UnsupportedTokenizer&) {
    if (!fs::exists(sentencepiece_model)) throw;
    return list_sentencepiece(sentencepiece_model);
  }
  if (!bpe->pre_tokenizer.byte_level()) {
    if (fs::exists(sentencepiece_model)) return list_sentencepiece(sentencepiece_model);
    throw InputError(file.string(),
                     "is a SentencePiece-style BPE (not byte-level); GGUF export reads such a "
                     "vocabulary from the tokenizer.model it came from: put that file beside it");
  }
  std::map<int64_t, bool> special;
  for (const auto& entry : tree.value("added_tokens", json::array()))
    special[entry.at("id").get<int64_t>()] = vocabulary_flag(entry, "special", false);
  TokenizerVocabulary vocabulary = list_bpe(*bpe, special, /*special_by_default=*/false);
  vocabulary.pre_tokenizer = classify_pre_tokenizer(
      tree, configured_prefix_space_of(file.parent_path()), vocabulary.pre_tokenizer_summary);
  return vocabulary;
}

// GPT-2's vocab.json + merges.txt: its byte-level pre-tokenizer with GPT-2's pattern; the special
// tokens tokenizer_config.json names (and <|endoftext|>) are added tokens, special unless its
// added_tokens_decoder says otherwise.
TokenizerVocabulary list_gpt2_files(const fs::path& dir) {
  std::map<int64_t, bool> special;
  for (const auto& [id, entry] : added_tokens_decoder(dir))
    special[id] = vocabulary_flag(entry, "special", false);
  TokenizerVocabulary vocabulary =
      list_bpe(read_gpt2_vocabulary(dir), special, /*special_by_default=*/true);
  const bool prefix_space = configured_prefix_space_of(dir).value_or(false);
  vocabulary.pre_tokenizer = prefix_space ? PreTokenizerShape::kOther : PreTokenizerShape::kGpt2;
  vocabulary.pre_tokenizer_summary =
      std::string("ByteLevel") + (prefix_space ? " with add_prefix_space" : "");
  return vocabulary;
}

}  // namespace

TokenizerVocabulary read_tokenizer_vocabulary(const fs::path& dir, bool prefer_sentencepiece) {
  check_tokenizer_files(dir);
  const fs::path tokenizer_json = dir / "tokenizer.json";
  const fs::path sentencepiece_model = dir / "tokenizer.model";
  try {
    if (prefer_sentencepiece && fs::exists(sentencepiece_model))
      return list_sentencepiece(sentencepiece_model);
    if (fs::exists(tokenizer_json)) return list_tokenizer_json(tokenizer_json, sentencepiece_model);
    if (fs::exists(dir / "vocab.json")) return list_gpt2_files(dir);
    return list_sentencepiece(sentencepiece_model);
  } catch (const json::exception& e) {
    // A value of the wrong JSON type where the readers do not check field by field.
    throw InputError(dir.string(), std::string("malformed tokenizer file: ") + e.what());
  }
}

}  // namespace lmtune
