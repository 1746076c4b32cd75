// Reading BPE tokenizers: GPT-2's vocab.json + merges.txt, and Hugging Face's tokenizer.json
// (its model and added tokens here, the rest of its pipeline in tokenizer_json.cpp).
#include "bpe_tokenizer.h"
#include "lmtune/core/errors.h"
#include "tokenizer_files.h"
#include "tokenizer_json.h"

namespace lmtune {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Ids beyond this are taken as a garbled file rather than allocated for (the largest
// vocabularies in use hold a few hundred thousand tokens).
constexpr int64_t kMaxTokenId = (int64_t{1} << 24) - 1;

// The GPT-2 end-of-text token: the EOS of every GPT-2-style vocabulary that does not name another.
constexpr const char* kEndOfText = "<|endoftext|>";

// object[key], or null when the object has no such key; unlike json::value(), copies nothing.
const json& member(const json& object, const char* key) {
  static const json kNull;
  auto it = object.find(key);
  return it == object.end() ? kNull : *it;
}

// vocab.json, or tokenizer.json's model.vocab (`key` says which): spelling -> id.
std::unordered_map<std::string, int32_t> read_vocab(const json& tree, const fs::path& file,
                                                    const std::string& key) {
  std::string where = key.empty() ? "" : key + ": ";
  if (!tree.is_object())
    throw InputError(file.string(), where + "expected an object mapping tokens to ids");
  std::unordered_map<std::string, int32_t> tokens;
  tokens.reserve(tree.size());
  std::vector<bool> seen;
  for (const auto& [spelling, value] : tree.items()) {
    if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
        value.get<int64_t>() > kMaxTokenId)
      throw InputError(file.string(), where + "token '" + spelling + "' has id " + value.dump() +
                                          "; expected an integer from 0 to " +
                                          std::to_string(kMaxTokenId));
    auto id = value.get<std::size_t>();
    if (id >= seen.size()) seen.resize(std::max(id + 1, 2 * seen.size()));
    if (seen[id])
      throw InputError(file.string(),
                       where + "id " + value.dump() + " is given to more than one token");
    seen[id] = true;
    tokens.emplace(spelling, static_cast<int32_t>(id));
  }
  return tokens;
}

// Resolves one merge rule against the vocabulary; `where` places it in `file` for errors.
BpeMerge resolve_merge(const std::string& left, const std::string& right,
                       const std::unordered_map<std::string, int32_t>& tokens, const fs::path& file,
                       const std::string& where, const std::string& vocab_name) {
  BpeMerge merge;
  const std::pair<const std::string*, int32_t*> parts[] = {{&left, &merge.left},
                                                           {&right, &merge.right}};
  for (const auto& [spelling, id] : parts) {
    auto it = tokens.find(*spelling);
    if (it == tokens.end())
      throw InputError(file.string(), where + "token '" + *spelling + "' is not in " + vocab_name);
    *id = it->second;
  }
  auto merged = tokens.find(left + right);
  if (merged == tokens.end())
    throw InputError(file.string(), where + "the merge of '" + left + "' and '" + right + "' ('" +
                                        left + right + "') is not in " + vocab_name);
  merge.merged = merged->second;
  return merge;
}

// merges.txt: an optional "#version" line, then one "left right" rule per line, highest priority
// first.
std::vector<BpeMerge> read_merges_txt(const fs::path& file,
                                      const std::unordered_map<std::string, int32_t>& tokens) {
  std::string text = read_tokenizer_file(file);
  std::vector<BpeMerge> merges;
  std::size_t line_number = 0;
  for (std::size_t start = 0; start < text.size();) {
    std::size_t end = std::min(text.find('\n', start), text.size());
    std::string line = text.substr(start, end - start);
    start = end + 1;
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line.rfind("#version", 0) == 0) continue;
    std::string where = "line " + std::to_string(line_number) + ": ";
    std::size_t space = line.find(' ');
    if (space == 0 || space == std::string::npos || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string::npos)
      throw InputError(file.string(),
                       where + "expected two tokens separated by one space, got '" + line + "'");
    merges.push_back(resolve_merge(line.substr(0, space), line.substr(space + 1), tokens, file,
                                   where, "vocab.json"));
  }
  return merges;
}

// tokenizer.json's model.merges: "left right" strings (older files) or ["left", "right"] pairs.
std::vector<BpeMerge> read_json_merges(const json& tree, const fs::path& file,
                                       const std::unordered_map<std::string, int32_t>& tokens) {
  if (!tree.is_array())
    throw InputError(file.string(), "model.merges: expected a list of merge rules");
  std::vector<BpeMerge> merges;
  merges.reserve(tree.size());
  for (std::size_t i = 0; i < tree.size(); ++i) {
    const json& rule = tree[i];
    std::string where = "model.merges[" + std::to_string(i) + "]: ";
    std::string left, right;
    if (rule.is_string()) {
      std::string text = rule.get<std::string>();
      std::size_t space = text.find(' ');
      if (space != std::string::npos && text.find(' ', space + 1) == std::string::npos) {
        left = text.substr(0, space);
        right = text.substr(space + 1);
      }
    } else if (rule.is_array() && rule.size() == 2 && rule[0].is_string() && rule[1].is_string()) {
      left = rule[0].get<std::string>();
      right = rule[1].get<std::string>();
    }
    if (left.empty() || right.empty())
      throw InputError(
          file.string(),
          where + "expected \"left right\" or [\"left\", \"right\"], got " + rule.dump());
    merges.push_back(resolve_merge(left, right, tokens, file, where, "model.vocab"));
  }
  return merges;
}

// tokenizer.json's added_tokens: [{"id": 50256, "content": "<|endoftext|>", "special": true,
// "normalized": false, "lstrip": false, "rstrip": false, "single_word": false}, ...]. A missing
// flag is false, but "normalized", which is true for tokens that are not special, as in
// transformers.
std::vector<SpecialToken> read_added_tokens(const json& tree, const fs::path& file) {
  std::vector<SpecialToken> added;
  if (tree.is_null()) return added;
  if (!tree.is_array()) throw InputError(file.string(), "added_tokens: expected a list");
  for (std::size_t i = 0; i < tree.size(); ++i) {
    const json& entry = tree[i];
    std::string where = "added_tokens[" + std::to_string(i) + "]";
    bool ok = entry.is_object() && entry.contains("id") && entry["id"].is_number_integer() &&
              entry["id"].get<int64_t>() >= 0 && entry["id"].get<int64_t>() <= kMaxTokenId &&
              entry.contains("content") && entry["content"].is_string();
    if (!ok)
      throw InputError(
          file.string(),
          where + ": expected {\"id\": ID, \"content\": TEXT, ...}, got " + entry.dump());
    auto flag = [&](const char* key, bool fallback) {
      const json& value = member(entry, key);
      if (value.is_null()) return fallback;
      if (!value.is_boolean())
        throw InputError(file.string(), where + "." + key + ": expected true or false");
      return value.get<bool>();
    };
    SpecialToken token{entry["content"].get<std::string>(), entry["id"].get<int64_t>()};
    token.lstrip = flag("lstrip", false);
    token.rstrip = flag("rstrip", false);
    token.single_word = flag("single_word", false);
    token.normalized = flag("normalized", !flag("special", false));
    added.push_back(std::move(token));
  }
  return added;
}

// GPT-2's vocab.json lists <|endoftext|> as an ordinary token; tokenizer_config.json may name
// other special tokens, in its added_tokens_decoder or as bos/eos/unk/pad tokens.
std::vector<SpecialToken> configured_special_tokens(
    const std::unordered_map<std::string, int32_t>& tokens,
    const std::vector<fs::path>& config_files) {
  std::vector<std::string> texts = {kEndOfText};
  std::vector<SpecialToken> special;
  for (const auto& file : config_files) {
    json config = read_tokenizer_json(file);
    if (!config.is_object()) throw InputError(file.string(), "expected a JSON object");
    for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token"}) {
      if (auto text = config.contains(key) ? special_token_text(config[key]) : std::nullopt)
        texts.push_back(*text);
    }
    for (const auto& [id, entry] : member(config, "added_tokens_decoder").items()) {
      auto text = special_token_text(entry);
      bool numeric =
          !id.empty() && id.size() < 9 && id.find_first_not_of("0123456789") == std::string::npos;
      if (!text || !numeric || std::stoll(id) > kMaxTokenId)
        throw InputError(file.string(),
                         "added_tokens_decoder." + id + ": expected an id and {\"content\": TEXT}");
      special.push_back({*text, std::stoll(id)});
    }
  }
  for (const auto& text : texts) {
    if (auto it = tokens.find(text); it != tokens.end()) special.push_back({text, it->second});
  }
  return special;
}

// The id of the configured EOS token, else of <|endoftext|>, among the tokens.
std::optional<int64_t> find_eos(const BpeVocabulary& vocabulary,
                                const std::vector<fs::path>& config_files) {
  auto configured = configured_value(config_files, "eos_token");
  std::string eos = configured ? special_token_text(*configured).value_or(kEndOfText) : kEndOfText;
  for (const auto& token : vocabulary.added) {
    if (token.text == eos) return token.id;
  }
  if (auto it = vocabulary.tokens.find(eos); it != vocabulary.tokens.end()) return it->second;
  // Else the token the post-processor ends each text with, if it names one.
  if (!configured && !vocabulary.framing.suffix.empty()) return vocabulary.framing.suffix.back();
  return std::nullopt;
}

// transformers lets tokenizer_config.json's add_prefix_space override the tokenizer files.
std::optional<bool> configured_prefix_space(const std::vector<fs::path>& config_files) {
  auto configured = configured_value(config_files, "add_prefix_space");
  if (configured && configured->is_boolean()) return configured->get<bool>();
  return std::nullopt;
}

// Whether `value` is absent, null or equal to `neutral` (the setting lmtune implements).
bool is_default(const json& object, const char* key, const json& neutral) {
  auto it = object.find(key);
  return it == object.end() || it->is_null() || *it == neutral;
}

// Refuses a model lmtune would not encode as Hugging Face does.
void check_model_supported(const json& model, const fs::path& file) {
  auto refuse = [&](const std::string& what) { throw UnsupportedTokenizer(file.string(), what); };
  if (!is_default(model, "type", "BPE"))
    refuse("model.type " + model["type"].dump() + " is not BPE, the one model type supported");
  if (!is_default(model, "dropout", 0.0))
    refuse("model.dropout is set: BPE dropout is not supported");
  if (!is_default(model, "continuing_subword_prefix", ""))
    refuse("model.continuing_subword_prefix is set: subword prefixes are not supported");
  if (!is_default(model, "end_of_word_suffix", ""))
    refuse("model.end_of_word_suffix is set: word suffixes are not supported");
}

// Each id the post-processor adds must be a token, so that decoding it works.
void check_framing_ids(const BpeVocabulary& vocabulary, const fs::path& file) {
  std::vector<bool> defined;
  auto define = [&](int64_t id) {
    if (id >= static_cast<int64_t>(defined.size())) defined.resize(id + 1);
    defined[id] = true;
  };
  for (const auto& [spelling, id] : vocabulary.tokens) define(id);
  for (const auto& token : vocabulary.added) define(token.id);
  for (const auto* ids : {&vocabulary.framing.prefix, &vocabulary.framing.suffix}) {
    for (int64_t id : *ids) {
      if (id >= static_cast<int64_t>(defined.size()) || !defined[id])
        throw InputError(file.string(), "post_processor: it adds id " + std::to_string(id) +
                                            ", which is no token of model.vocab or added_tokens");
    }
  }
}

// model.byte_fallback, fuse_unk, ignore_merges and unk_token.
BpeModelOptions read_model_options(const json& model, const BpeVocabulary& vocabulary,
                                   const fs::path& file) {
  BpeModelOptions options;
  auto flag = [&](const char* key) {
    const json& value = member(model, key);
    if (!value.is_null() && !value.is_boolean())
      throw InputError(file.string(), std::string("model.") + key + ": expected true or false");
    return value.is_boolean() && value.get<bool>();
  };
  options.byte_fallback = flag("byte_fallback");
  options.fuse_unk = flag("fuse_unk");
  options.ignore_merges = flag("ignore_merges");
  const json& unk = member(model, "unk_token");
  if (unk.is_null()) return options;
  auto it =
      unk.is_string() ? vocabulary.tokens.find(unk.get<std::string>()) : vocabulary.tokens.end();
  if (it == vocabulary.tokens.end())
    throw InputError(file.string(), "model.unk_token: " + unk.dump() + " is not in model.vocab");
  options.unk_id = it->second;
  return options;
}

}  // namespace

BpeVocabulary read_gpt2_vocabulary(const fs::path& dir) {
  BpeVocabulary vocabulary;
  vocabulary.vocab_file = dir / "vocab.json";
  fs::path merges_file = dir / "merges.txt";
  vocabulary.tokens =
      read_vocab(read_tokenizer_json(vocabulary.vocab_file), vocabulary.vocab_file, "");
  vocabulary.merges = read_merges_txt(merges_file, vocabulary.tokens);
  auto config_files = tokenizer_config_files(dir);
  vocabulary.added = configured_special_tokens(vocabulary.tokens, config_files);
  vocabulary.eos_id = find_eos(vocabulary, config_files);
  vocabulary.pre_tokenizer.add_byte_level(configured_prefix_space(config_files).value_or(false),
                                          /*use_regex=*/true);
  vocabulary.decoder.add_byte_level();
  vocabulary.tokenizer_class = "GPT2Tokenizer";
  vocabulary.files = {vocabulary.vocab_file, merges_file};
  vocabulary.files.insert(vocabulary.files.end(), config_files.begin(), config_files.end());
  return vocabulary;
}

BpeVocabulary read_tokenizer_json_vocabulary(const json& tree, const fs::path& file) {
  if (!tree.is_object() || !tree.contains("model") || !tree["model"].is_object())
    throw InputError(file.string(), "expected an object with a \"model\" object");
  const json& model = tree["model"];
  check_model_supported(model, file);
  BpeVocabulary vocabulary;
  vocabulary.vocab_file = file;
  vocabulary.tokens = read_vocab(member(model, "vocab"), file, "model.vocab");
  vocabulary.merges = read_json_merges(member(model, "merges"), file, vocabulary.tokens);
  vocabulary.model = read_model_options(model, vocabulary, file);
  vocabulary.added = read_added_tokens(member(tree, "added_tokens"), file);
  auto config_files = tokenizer_config_files(file.parent_path());
  vocabulary.normalizer = read_normalizer(member(tree, "normalizer"), file);
  vocabulary.pre_tokenizer = read_pre_tokenizer(member(tree, "pre_tokenizer"), file,
                                                configured_prefix_space(config_files));
  vocabulary.decoder = read_decoder(member(tree, "decoder"), file);
  vocabulary.framing = read_post_processor(member(tree, "post_processor"), file);
  check_framing_ids(vocabulary, file);
  vocabulary.eos_id = find_eos(vocabulary, config_files);
  // A class that runs tokenizer.json as it is; GPT2Tokenizer would rebuild the pipeline.
  vocabulary.tokenizer_class = "PreTrainedTokenizerFast";
  vocabulary.files = {file};
  vocabulary.files.insert(vocabulary.files.end(), config_files.begin(), config_files.end());
  return vocabulary;
}

}  // namespace lmtune
