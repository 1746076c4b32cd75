#include "tokenizer_json.h"

#include <stdexcept>

namespace lmtune {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kNormalizers = "NFC, NFD, NFKC, NFKD, Prepend, Replace, Sequence";
constexpr const char* kPreTokenizers = "ByteLevel, Split, Digits, Metaspace, Sequence";
constexpr const char* kDecoders =
    "ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence";
constexpr const char* kPostProcessors =
    "TemplateProcessing, RobertaProcessing, BertProcessing, ByteLevel, Sequence";

// Reads the fields of one tokenizer.json component, naming the file and the key path (`where`,
// such as "pre_tokenizer.pretokenizers[1]") in every error.
class ComponentReader {
 public:
  explicit ComponentReader(const fs::path& file) : file_(file) {}

  [[noreturn]] void malformed(const std::string& where, const std::string& what) const {
    throw InputError(file_.string(), where + ": " + what);
  }

  // `what` is "the normalizer \"Lowercase\"" or the like.
  [[noreturn]] void unsupported(const std::string& where, const std::string& what,
                                const char* supported) const {
    throw UnsupportedTokenizer(
        file_.string(), where + ": " + what + " is not supported (supported: " + supported + ")");
  }

  std::string type(const json& node, const std::string& where) const {
    if (!node.is_object() || !node.contains("type") || !node["type"].is_string())
      malformed(where, "expected an object with a \"type\", got " + abbreviated(node));
    return node["type"].get<std::string>();
  }

  bool flag(const json& node, const char* key, bool fallback, const std::string& where) const {
    auto it = node.find(key);
    if (it == node.end() || it->is_null()) return fallback;
    if (!it->is_boolean())
      malformed(where + "." + key, "expected true or false, got " + it->dump());
    return it->get<bool>();
  }

  std::string text(const json& node, const char* key, const std::string& where) const {
    auto it = node.find(key);
    if (it == node.end() || !it->is_string()) malformed(where + "." + key, "expected a string");
    return it->get<std::string>();
  }

  std::optional<std::string> optional_text(const json& node, const char* key,
                                           const std::string& where) const {
    auto it = node.find(key);
    if (it == node.end() || it->is_null()) return std::nullopt;
    return text(node, key, where);
  }

  std::size_t count(const json& node, const char* key, const std::string& where) const {
    auto it = node.find(key);
    if (it == node.end() || !it->is_number_unsigned())
      malformed(where + "." + key, "expected a whole number");
    return it->get<std::size_t>();
  }

  const json& list(const json& node, const char* key, const std::string& where) const {
    auto it = node.find(key);
    if (it == node.end() || !it->is_array()) malformed(where + "." + key, "expected a list");
    return *it;
  }

  // node["pattern"]: {"String": literal} or {"Regex": pattern}.
  TextPattern pattern(const json& node, const std::string& where) const {
    std::string key = where + ".pattern";
    auto it = node.find("pattern");
    if (it == node.end() || !it->is_object() || it->size() != 1 || !it->begin()->is_string())
      malformed(key, "expected {\"String\": TEXT} or {\"Regex\": PATTERN}");
    std::string kind = it->begin().key(), value = it->begin()->get<std::string>();
    if (kind != "String" && kind != "Regex")
      malformed(key, "expected {\"String\": TEXT} or {\"Regex\": PATTERN}, got " + it->dump());
    try {
      return kind == "String" ? TextPattern::literal(value) : TextPattern::regex(value);
    } catch (const std::invalid_argument& e) {
      malformed(key + "." + kind, e.what());
    }
  }

  // One id of a post-processor's [TEXT, ID] pair.
  int64_t pair_id(const json& node, const char* key, const std::string& where) const {
    auto it = node.find(key);
    if (it == node.end() || !it->is_array() || it->size() != 2 || !(*it)[1].is_number_unsigned())
      malformed(where + "." + key, "expected [TEXT, ID]");
    return (*it)[1].get<int64_t>();
  }

  static std::string abbreviated(const json& node) {
    std::string text = node.dump();
    return text.size() > 80 ? text.substr(0, 77) + "..." : text;
  }

 private:
  const fs::path& file_;
};

std::string list_item_key(const std::string& where, const char* key, std::size_t i) {
  return where + "." + key + "[" + std::to_string(i) + "]";
}

void add_normalizer(const ComponentReader& reader, const json& node, const std::string& where,
                    TextNormalizer& normalizer) {
  std::string type = reader.type(node, where);
  if (type == "Sequence") {
    const json& steps = reader.list(node, "normalizers", where);
    for (std::size_t i = 0; i < steps.size(); ++i)
      add_normalizer(reader, steps[i], list_item_key(where, "normalizers", i), normalizer);
  } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    normalizer.add_normal_form(type == "NFC"    ? NormalForm::kNfc
                               : type == "NFD"  ? NormalForm::kNfd
                               : type == "NFKC" ? NormalForm::kNfkc
                                                : NormalForm::kNfkd);
  } else if (type == "Prepend") {
    normalizer.add_prepend(reader.text(node, "prepend", where));
  } else if (type == "Replace") {
    normalizer.add_replace(
        TextReplacement(reader.pattern(node, where), reader.text(node, "content", where)));
  } else {
    reader.unsupported(where, "the normalizer \"" + type + "\"", kNormalizers);
  }
}

SplitBehavior split_behavior(const ComponentReader& reader, const json& node,
                             const std::string& where) {
  std::string name = reader.text(node, "behavior", where);
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  reader.malformed(where + ".behavior",
                   "expected Removed, Isolated, MergedWithPrevious, MergedWithNext or "
                   "Contiguous, got \"" +
                       name + "\"");
}

// Metaspace's prepend_scheme; files written before it existed say add_prefix_space instead.
PrependScheme prepend_scheme(const ComponentReader& reader, const json& node,
                             const std::string& where) {
  auto name = reader.optional_text(node, "prepend_scheme", where);
  if (!name)
    return reader.flag(node, "add_prefix_space", true, where) ? PrependScheme::kAlways
                                                              : PrependScheme::kNever;
  if (*name == "always") return PrependScheme::kAlways;
  if (*name == "first") return PrependScheme::kFirst;
  if (*name == "never") return PrependScheme::kNever;
  reader.malformed(where + ".prepend_scheme",
                   "expected \"always\", \"first\" or \"never\", got \"" + *name + "\"");
}

// Metaspace's replacement: one character, "▁" in every model in use.
std::string metaspace_replacement(const ComponentReader& reader, const json& node,
                                  const std::string& where) {
  std::string replacement = reader.text(node, "replacement", where);
  if (replacement.empty() || valid_utf8_prefix(replacement) != replacement.size() ||
      utf8_char_length(replacement) != replacement.size())
    reader.malformed(where + ".replacement", "expected one character");
  return replacement;
}

struct PreTokenizerReading {
  const ComponentReader& reader;
  std::optional<bool> add_prefix_space;  // tokenizer_config.json's, which wins
  PreTokenizer pre_tokenizer;
};

void add_pre_tokenizer(PreTokenizerReading& reading, const json& node, const std::string& where) {
  const ComponentReader& reader = reading.reader;
  std::string type = reader.type(node, where);
  if (type == "Sequence") {
    const json& steps = reader.list(node, "pretokenizers", where);
    for (std::size_t i = 0; i < steps.size(); ++i)
      add_pre_tokenizer(reading, steps[i], list_item_key(where, "pretokenizers", i));
    return;
  }
  // BPE sees ByteLevel's output as bytes; a step after it would see GPT-2's byte alphabet.
  if (reading.pre_tokenizer.byte_level())
    reader.unsupported(where, "the pre-tokenizer \"" + type + "\" after ByteLevel",
                       "ByteLevel as the last pre-tokenizer");
  if (type == "ByteLevel") {
    bool add_prefix_space =
        reading.add_prefix_space.value_or(reader.flag(node, "add_prefix_space", false, where));
    reading.pre_tokenizer.add_byte_level(add_prefix_space,
                                         reader.flag(node, "use_regex", true, where));
  } else if (type == "Split") {
    reading.pre_tokenizer.add_split(reader.pattern(node, where),
                                    split_behavior(reader, node, where),
                                    reader.flag(node, "invert", false, where));
  } else if (type == "Digits") {
    reading.pre_tokenizer.add_digits(reader.flag(node, "individual_digits", false, where));
  } else if (type == "Metaspace") {
    reading.pre_tokenizer.add_metaspace(metaspace_replacement(reader, node, where),
                                        prepend_scheme(reader, node, where),
                                        reader.flag(node, "split", true, where));
  } else {
    reader.unsupported(where, "the pre-tokenizer \"" + type + "\"", kPreTokenizers);
  }
}

void add_decoder(const ComponentReader& reader, const json& node, const std::string& where,
                 TokenDecoder& decoder) {
  std::string type = reader.type(node, where);
  if (type == "Sequence") {
    const json& steps = reader.list(node, "decoders", where);
    for (std::size_t i = 0; i < steps.size(); ++i)
      add_decoder(reader, steps[i], list_item_key(where, "decoders", i), decoder);
  } else if (type == "ByteLevel") {
    decoder.add_byte_level();
  } else if (type == "Replace") {
    decoder.add_replace(
        TextReplacement(reader.pattern(node, where), reader.text(node, "content", where)));
  } else if (type == "ByteFallback") {
    decoder.add_byte_fallback();
  } else if (type == "Fuse") {
    decoder.add_fuse();
  } else if (type == "Strip") {
    std::string content = reader.text(node, "content", where);
    if (content.empty()) reader.malformed(where + ".content", "expected one character");
    decoder.add_strip(content, reader.count(node, "start", where),
                      reader.count(node, "stop", where));
  } else if (type == "Metaspace") {
    decoder.add_metaspace(metaspace_replacement(reader, node, where),
                          prepend_scheme(reader, node, where) != PrependScheme::kNever);
  } else {
    reader.unsupported(where, "the decoder \"" + type + "\"", kDecoders);
  }
}

// The ids TemplateProcessing's "single" template puts before and after the text ($A).
void add_template(const ComponentReader& reader, const json& node, const std::string& where,
                  TokenFraming& framing) {
  const json& single = reader.list(node, "single", where);
  const json& specials = node.contains("special_tokens") ? node["special_tokens"] : json::object();
  TokenFraming own;
  bool seen_text = false;
  for (std::size_t i = 0; i < single.size(); ++i) {
    std::string at = list_item_key(where, "single", i);
    const json& piece = single[i];
    if (piece.is_object() && piece.contains("Sequence")) {
      if (seen_text || piece["Sequence"].value("id", "") != "A")
        reader.unsupported(at, "the template piece " + piece.dump(), "one $A in a single template");
      seen_text = true;
      continue;
    }
    if (!piece.is_object() || !piece.contains("SpecialToken") ||
        !piece["SpecialToken"].contains("id") || !piece["SpecialToken"]["id"].is_string())
      reader.malformed(at, "expected {\"SpecialToken\": {\"id\": NAME}} or {\"Sequence\": ...}");
    std::string name = piece["SpecialToken"]["id"].get<std::string>();
    auto special = specials.find(name);
    if (special == specials.end() || !special->contains("ids") || !(*special)["ids"].is_array())
      reader.malformed(at, "special token \"" + name + "\" is not in " + where + ".special_tokens");
    for (const json& id : (*special)["ids"]) {
      if (!id.is_number_unsigned())
        reader.malformed(where + ".special_tokens." + name + ".ids", "expected whole numbers");
      (seen_text ? own.suffix : own.prefix).push_back(id.get<int64_t>());
    }
  }
  if (!seen_text) reader.malformed(where + ".single", "the template has no $A");
  framing.prefix.insert(framing.prefix.begin(), own.prefix.begin(), own.prefix.end());
  framing.suffix.insert(framing.suffix.end(), own.suffix.begin(), own.suffix.end());
}

// Adds what one post-processor puts around the text, outside what the ones before it put.
void add_post_processor(const ComponentReader& reader, const json& node, const std::string& where,
                        TokenFraming& framing) {
  std::string type = reader.type(node, where);
  if (type == "Sequence") {
    const json& steps = reader.list(node, "processors", where);
    for (std::size_t i = 0; i < steps.size(); ++i)
      add_post_processor(reader, steps[i], list_item_key(where, "processors", i), framing);
  } else if (type == "TemplateProcessing") {
    add_template(reader, node, where, framing);
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    framing.prefix.insert(framing.prefix.begin(), reader.pair_id(node, "cls", where));
    framing.suffix.push_back(reader.pair_id(node, "sep", where));
  } else if (type != "ByteLevel") {  // ByteLevel only trims offsets, which lmtune has none of
    reader.unsupported(where, "the post-processor \"" + type + "\"", kPostProcessors);
  }
}

}  // namespace

TextNormalizer read_normalizer(const json& node, const fs::path& file) {
  TextNormalizer normalizer;
  if (!node.is_null()) add_normalizer(ComponentReader(file), node, "normalizer", normalizer);
  return normalizer;
}

PreTokenizer read_pre_tokenizer(const json& node, const fs::path& file,
                                std::optional<bool> add_prefix_space) {
  ComponentReader reader(file);
  PreTokenizerReading reading{reader, add_prefix_space, {}};
  if (!node.is_null()) add_pre_tokenizer(reading, node, "pre_tokenizer");
  return std::move(reading.pre_tokenizer);
}

TokenDecoder read_decoder(const json& node, const fs::path& file) {
  TokenDecoder decoder;
  if (!node.is_null()) add_decoder(ComponentReader(file), node, "decoder", decoder);
  return decoder;
}

TokenFraming read_post_processor(const json& node, const fs::path& file) {
  TokenFraming framing;
  if (!node.is_null()) add_post_processor(ComponentReader(file), node, "post_processor", framing);
  return framing;
}

}  // namespace lmtune
