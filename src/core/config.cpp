#include "lmtune/core/config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <yaml-cpp/yaml.h>

#include "lmtune/core/errors.h"

namespace lmtune {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// ---------------------------------------------------------------------------------------------
// Problems: every error found while loading, each prefixed with where its value came from.

class Problems {
 public:
  explicit Problems(std::string file) : file_(std::move(file)) {}

  void set_origin(const std::string& key, std::string origin) { origins_[key] = std::move(origin); }
  void add(const std::string& key, const std::string& message) { add_rule(key, {}, message); }
  // A problem with `key` that a rule across keys found: it is blamed on the --set of `key` or of
  // one of the `others`, when one of them was set on the command line, else on the file.
  void add_rule(const std::string& key, std::initializer_list<std::string> others,
                const std::string& message) {
    std::vector<std::string> involved{key};
    involved.insert(involved.end(), others);
    std::string origin = file_;
    for (const auto& name : involved) {
      if (auto it = origins_.find(name); it != origins_.end()) {
        origin = it->second;
        break;
      }
    }
    messages_.push_back(origin + ": " + key + ": " + message);
    bad_keys_.insert(key);
  }
  bool ok(const std::string& key) const { return bad_keys_.count(key) == 0; }
  void throw_if_any() {
    if (!messages_.empty()) throw ConfigError(std::move(messages_));
  }

 private:
  std::string file_;
  std::map<std::string, std::string> origins_;
  std::vector<std::string> messages_;
  std::set<std::string> bad_keys_;
};

std::string describe(const json& value) {
  switch (value.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return std::string("boolean ") + (value.get<bool>() ? "true" : "false");
    case json::value_t::string:
      return "string " + value.dump();
    case json::value_t::array:
      return "a list";
    case json::value_t::object:
      return "a mapping";
    default:
      return "number " + value.dump();
  }
}

std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1] ? 1u : 0u)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// The closest of `candidates` to `name`, if it is close enough to be a plausible typo or a
// spelled-out abbreviation ("evaluation" for "eval").
std::optional<std::string> closest(const std::string& name,
                                   const std::vector<std::string>& candidates) {
  for (const auto& candidate : candidates)
    if (candidate.size() >= 3 && name.rfind(candidate, 0) == 0) return candidate;
  std::optional<std::string> best;
  std::size_t best_distance = std::max<std::size_t>(2, name.size() / 3) + 1;
  for (const auto& candidate : candidates) {
    std::size_t d = edit_distance(name, candidate);
    if (d < best_distance) best = candidate, best_distance = d;
  }
  return best;
}

// Names users bring from other trainers (Hugging Face's TrainingArguments, torchtune, axolotl),
// and the lmtune key that means the same.
struct ForeignName {
  const char* name;
  const char* hint;  // what to write instead
};
constexpr ForeignName kForeignNames[] = {
    {"learning_rate", "train.lr"},
    {"lr", "train.lr"},
    {"batch_size", "train.micro_batch_size"},
    {"per_device_train_batch_size", "train.micro_batch_size"},
    {"train_batch_size", "train.micro_batch_size"},
    {"micro_batch_size", "train.micro_batch_size"},
    {"gradient_accumulation_steps", "train.grad_accum_steps"},
    {"grad_accum_steps", "train.grad_accum_steps"},
    {"warmup", "train.warmup_steps"},
    {"warmup_steps", "train.warmup_steps"},
    {"num_warmup_steps", "train.warmup_steps"},
    {"num_train_epochs", "train.epochs"},
    {"epochs", "train.epochs"},
    {"max_steps", "train.max_steps"},
    {"weight_decay", "train.weight_decay"},
    {"lr_scheduler_type", "train.schedule"},
    {"max_grad_norm", "train.max_grad_norm"},
    {"fp16", "train.precision: fp16"},
    {"bf16", "train.precision: bf16"},
    {"precision", "train.precision"},
    {"output_dir", "run.output_dir"},
    {"seed", "run.seed"},
    {"model_name_or_path", "model.path"},
    {"base_model", "model.path"},
    {"gradient_checkpointing", "model.gradient_checkpointing"},
    {"max_seq_length", "data.seq_len"},
    {"max_seq_len", "data.seq_len"},
    {"seq_length", "data.seq_len"},
    {"sequence_len", "data.seq_len"},
    {"block_size", "data.seq_len"},
    {"seq_len", "data.seq_len"},
    {"train_file", "data.train"},
    {"dataset", "data.train"},
    {"validation_file", "data.validation"},
    {"eval_steps", "eval.every_steps"},
    {"save_steps", "checkpoint.every_steps"},
    {"save_total_limit", "checkpoint.keep_last"},
    {"logging_steps", "logging.every_steps"},
};

std::optional<std::string> foreign_name_hint(const std::string& name) {
  for (const auto& foreign : kForeignNames)
    if (name == foreign.name) return std::string(foreign.hint);
  return std::nullopt;
}

std::string unknown_key_message(const std::string& key, const std::vector<std::string>& siblings) {
  std::string message = "unknown key";
  auto leaf = key.substr(key.rfind('.') + 1);
  if (auto hint = foreign_name_hint(leaf)) return message + "; did you mean '" + *hint + "'?";
  if (auto guess = closest(leaf, siblings)) {
    message += "; did you mean '" + *guess + "'?";
    return message;
  }
  for (const auto& info : config_keys()) {
    if (info.path.substr(info.path.rfind('.') + 1) == leaf)
      return message + "; did you mean '" + info.path + "'?";
  }
  return message;
}

// The spellings of an enum's values joined by `separator`, e.g. "fp32, bf16, fp16".
template <class E>
std::string enum_spellings(const char* separator) {
  std::ostringstream out;
  for (std::size_t i = 0; i < EnumNames<E>::kTable.size(); ++i)
    out << (i ? separator : "") << EnumNames<E>::kTable[i].second;
  return out.str();
}

std::string format_number(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

// ---------------------------------------------------------------------------------------------
// Visitors over the schema.

// Reads one section of the tree into its struct, checking type and range of each key.
class SectionReader {
 public:
  SectionReader(std::string section, const json& node, Problems& problems)
      : section_(std::move(section)), node_(node), problems_(problems) {}

  template <class T>
  void operator()(T& value, const Field& field) {
    names_.push_back(field.name());
    auto it = node_.find(field.name());
    if (it == node_.end()) return;
    std::string key = section_ + "." + field.name();
    if (auto error = read(*it, value, field)) problems_.add(key, *error);
  }

  void report_unknown_keys() {
    for (const auto& [name, value] : node_.items()) {
      if (std::find(names_.begin(), names_.end(), name) == names_.end()) {
        std::string key = section_ + "." + name;
        problems_.add(key, unknown_key_message(key, names_));
      }
    }
  }

 private:
  static std::optional<std::string> check_range(double v, const Field& field) {
    if (auto lo = field.min_value()) {
      if (field.min_exclusive() ? !(v > *lo) : !(v >= *lo))
        return "must be " + std::string(field.min_exclusive() ? "> " : ">= ") + format_number(*lo) +
               ", got " + format_number(v);
    }
    if (auto hi = field.max_value(); hi && !(v <= *hi))
      return "must be <= " + format_number(*hi) + ", got " + format_number(v);
    return std::nullopt;
  }

  static std::optional<std::string> read(const json& node, int64_t& value, const Field& field) {
    if (field.allows_auto() && node == "auto") {
      value = 0;
      return std::nullopt;
    }
    if (node.is_number_integer()) {
      value = node.get<int64_t>();
    } else if (node.is_number_float() && std::isfinite(node.get<double>()) &&
               node.get<double>() == std::floor(node.get<double>()) &&
               std::fabs(node.get<double>()) < 9.0e15) {
      value = static_cast<int64_t>(node.get<double>());
    } else {
      return std::string(field.allows_auto() ? "expected an integer or auto"
                                             : "expected an integer") +
             ", got " + describe(node);
    }
    return check_range(static_cast<double>(value), field);
  }

  static std::optional<std::string> read(const json& node, double& value, const Field& field) {
    if (!node.is_number()) return "expected a number, got " + describe(node);
    value = node.get<double>();
    if (!std::isfinite(value)) return "expected a finite number, got " + format_number(value);
    return check_range(value, field);
  }

  static std::optional<std::string> read(const json& node, bool& value, const Field&) {
    if (!node.is_boolean()) return "expected true or false, got " + describe(node);
    value = node.get<bool>();
    return std::nullopt;
  }

  static std::optional<std::string> read(const json& node, std::string& value, const Field&) {
    if (!node.is_string()) return "expected a string, got " + describe(node);
    value = node.get<std::string>();
    return std::nullopt;
  }

  // A list of strings; a single string is a list of one.
  static std::optional<std::string> read(const json& node, std::vector<std::string>& value,
                                         const Field&) {
    if (node.is_string()) {
      value = {node.get<std::string>()};
      return std::nullopt;
    }
    if (!node.is_array()) return "expected a list of strings, got " + describe(node);
    std::vector<std::string> items;
    for (const auto& item : node) {
      if (!item.is_string()) return "expected a list of strings, got an item " + describe(item);
      items.push_back(item.get<std::string>());
    }
    value = std::move(items);
    return std::nullopt;
  }

  template <class E, class = std::enable_if_t<IsConfigEnum<E>::value>>
  static std::optional<std::string> read(const json& node, E& value, const Field&) {
    std::string allowed = enum_spellings<E>(", ");
    if (!node.is_string()) return "expected one of " + allowed + ", got " + describe(node);
    auto parsed = enum_from_name<E>(node.get<std::string>());
    if (!parsed) return "expected one of " + allowed + ", got " + node.dump();
    value = *parsed;
    return std::nullopt;
  }

  std::string section_;
  const json& node_;
  Problems& problems_;
  std::vector<std::string> names_;
};

class TreeReader {
 public:
  TreeReader(const json& tree, Problems& problems) : tree_(tree), problems_(problems) {}

  template <class S>
  void section(const char* name, S& value) {
    sections_.push_back(name);
    auto it = tree_.find(name);
    if (it == tree_.end() || it->is_null()) return;
    if (!it->is_object()) {
      problems_.add(name, "expected a mapping of keys, got " + describe(*it));
      return;
    }
    SectionReader reader(name, *it, problems_);
    value.visit(reader);
    reader.report_unknown_keys();
  }

  void report_unknown_sections() {
    for (const auto& [name, value] : tree_.items()) {
      if (std::find(sections_.begin(), sections_.end(), name) != sections_.end()) continue;
      std::string message = "unknown section";
      if (auto hint = foreign_name_hint(name))
        message = "unknown section (lmtune's keys are grouped in sections); did you mean '" +
                  *hint + "'?";
      else if (auto guess = closest(name, sections_))
        message += "; did you mean '" + *guess + "'?";
      problems_.add(name, message);
    }
  }

 private:
  const json& tree_;
  Problems& problems_;
  std::vector<std::string> sections_;
};

template <class T>
json to_json_value(const T& value, const Field& field) {
  if constexpr (IsConfigEnum<T>::value) {
    return std::string(enum_name(value));
  } else if constexpr (std::is_same_v<T, int64_t>) {
    return field.allows_auto() && value == 0 ? json("auto") : json(value);
  } else {
    return value;
  }
}

class TreeWriter {
 public:
  template <class S>
  void section(const char* name, S& value) {
    current_ = &tree[name];
    *current_ = json::object();
    value.visit(*this);
  }
  template <class T>
  void operator()(T& value, const Field& field) {
    (*current_)[field.name()] = to_json_value(value, field);
  }

  json tree = json::object();

 private:
  json* current_ = nullptr;
};

template <class T>
std::string type_name(const Field& field) {
  if constexpr (std::is_same_v<T, int64_t>) {
    return field.allows_auto() ? "integer or auto" : "integer";
  } else if constexpr (std::is_same_v<T, double>) {
    return "number";
  } else if constexpr (std::is_same_v<T, bool>) {
    return "boolean";
  } else if constexpr (std::is_same_v<T, std::string>) {
    return field.is_path() ? "path" : "string";
  } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
    return "list";
  } else {
    return enum_spellings<T>("|");
  }
}

// "[0, 0.5]", ">= 1", "> 0": the bounds a field declares, as docs/config.md shows them.
std::string range_text(const Field& field) {
  auto lo = field.min_value();
  auto hi = field.max_value();
  if (lo && hi && !field.min_exclusive())
    return "[" + format_number(*lo) + ", " + format_number(*hi) + "]";
  if (lo && hi) return "(" + format_number(*lo) + ", " + format_number(*hi) + "]";
  if (lo) return (field.min_exclusive() ? "> " : ">= ") + format_number(*lo);
  if (hi) return "<= " + format_number(*hi);
  return "";
}

class KeyLister {
 public:
  template <class S>
  void section(const char* name, S& value) {
    prefix_ = std::string(name) + ".";
    value.visit(*this);
  }
  template <class T>
  void operator()(T& value, const Field& field) {
    keys.push_back({prefix_ + field.name(), type_name<T>(field), to_json_value(value, field),
                    field.help(), range_text(field)});
  }

  std::vector<KeyInfo> keys;

 private:
  std::string prefix_;
};

// ---------------------------------------------------------------------------------------------
// Parsing files and values.

// A plain YAML scalar typed by the YAML 1.2 core schema: null, boolean, integer, float or string.
json infer_scalar(const std::string& text) {
  if (text.empty() || text == "~" || text == "null" || text == "Null" || text == "NULL")
    return nullptr;
  if (text == "true" || text == "True" || text == "TRUE") return true;
  if (text == "false" || text == "False" || text == "FALSE") return false;
  static const std::map<std::string, double> kSpecial = {
      {".inf", INFINITY}, {"+.inf", INFINITY}, {"-.inf", -INFINITY}, {".nan", NAN},
      {".Inf", INFINITY}, {"+.Inf", INFINITY}, {"-.Inf", -INFINITY}, {".NaN", NAN}};
  if (auto it = kSpecial.find(text); it != kSpecial.end()) return it->second;
  bool numeric = text.find_first_not_of("0123456789+-.eE") == std::string::npos &&
                 text.find_first_of("0123456789") != std::string::npos;
  if (numeric) {
    const char* begin = text.c_str();
    char* end = nullptr;
    errno = 0;
    long long integer = std::strtoll(begin, &end, 10);
    if (*end == '\0' && errno == 0) return static_cast<int64_t>(integer);
    double real = std::strtod(begin, &end);
    if (*end == '\0') return real;
  }
  return text;
}

// Whether `text` is well-formed UTF-8 (Unicode's table 3-7: no overlong forms, no surrogates,
// nothing above U+10FFFF).
bool is_utf8(const std::string& text) {
  for (std::size_t i = 0; i < text.size();) {
    const auto lead = static_cast<unsigned char>(text[i]);
    if (lead < 0x80) {
      ++i;
      continue;
    }
    std::size_t continuation = 0;
    unsigned char low = 0x80, high = 0xbf;  // the range of the byte after the lead
    if (lead >= 0xc2 && lead <= 0xdf) {
      continuation = 1;
    } else if (lead >= 0xe0 && lead <= 0xef) {
      continuation = 2;
      if (lead == 0xe0) low = 0xa0;
      if (lead == 0xed) high = 0x9f;
    } else if (lead >= 0xf0 && lead <= 0xf4) {
      continuation = 3;
      if (lead == 0xf0) low = 0x90;
      if (lead == 0xf4) high = 0x8f;
    } else {
      return false;
    }
    if (text.size() - i <= continuation) return false;
    for (std::size_t k = 1; k <= continuation; ++k) {
      const auto byte = static_cast<unsigned char>(text[i + k]);
      if (byte < (k == 1 ? low : 0x80) || byte > (k == 1 ? high : 0xbf)) return false;
    }
    i += continuation + 1;
  }
  return true;
}

// A YAML scalar or key as text for the JSON tree. yaml-cpp passes a file's invalid UTF-8 bytes
// through, and the JSON tree throws json::type_error when it prints them (in an error message);
// such text is a ConfigError at its line instead (tests/fuzz/config_yaml/review-*).
const std::string& utf8_scalar(const YAML::Node& node, const std::string& file) {
  if (!is_utf8(node.Scalar()))
    throw ConfigError({file + ":" + std::to_string(node.Mark().line + 1) + ":" +
                       std::to_string(node.Mark().column + 1) +
                       ": not valid UTF-8 text; save the file as UTF-8"});
  return node.Scalar();
}

json yaml_to_json(const YAML::Node& node, const std::string& file) {
  switch (node.Type()) {
    case YAML::NodeType::Map: {
      json object = json::object();
      std::map<std::string, int> first_line;  // of each key, to name both lines of a duplicate
      for (const auto& entry : node) {
        std::string key =
            entry.first.IsScalar() ? utf8_scalar(entry.first, file) : entry.first.as<std::string>();
        const int line = entry.first.Mark().line + 1;
        if (auto [it, added] = first_line.emplace(key, line); !added)
          throw ConfigError({file + ":" + std::to_string(line) + ": duplicate key '" + key +
                             "' (first on line " + std::to_string(it->second) +
                             "); keep one of them"});
        object[key] = yaml_to_json(entry.second, file);
      }
      return object;
    }
    case YAML::NodeType::Sequence: {
      json array = json::array();
      for (const auto& item : node) array.push_back(yaml_to_json(item, file));
      return array;
    }
    case YAML::NodeType::Scalar:
      // Quoted scalars carry the tag "!" and stay strings; plain ones are typed.
      return node.Tag() == "!" ? json(utf8_scalar(node, file))
                               : infer_scalar(utf8_scalar(node, file));
    default:
      return nullptr;
  }
}

std::string read_text(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw ConfigError({file.string() + ": cannot read the config file (does it exist?)"});
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string location(const fs::path& file, std::size_t line, std::size_t column) {
  return file.string() + ":" + std::to_string(line) + ":" + std::to_string(column);
}

// Skips a JSON string starting at text[i] == '"'; returns the index after its closing quote.
std::size_t skip_json_string(const std::string& text, std::size_t i) {
  for (++i; i < text.size() && text[i] != '"'; ++i)
    if (text[i] == '\\') ++i;
  return i + 1;
}

// nlohmann::json keeps the last of two equal keys silently; a config with both is a mistake. The
// text has already parsed, so a scan of strings, braces and colons is enough to find them.
void reject_duplicate_json_keys(const std::string& text, const fs::path& file) {
  struct Scope {
    bool object;
    std::map<std::string, std::size_t> key_lines;
  };
  std::vector<Scope> scopes;
  std::size_t line = 1;
  for (std::size_t i = 0; i < text.size();) {
    const char ch = text[i];
    if (ch == '\n') ++line;
    if (ch == '{' || ch == '[') scopes.push_back({ch == '{', {}});
    if ((ch == '}' || ch == ']') && !scopes.empty()) scopes.pop_back();
    if (ch != '"') {
      ++i;
      continue;
    }
    std::size_t end = skip_json_string(text, i);
    std::size_t next = text.find_first_not_of(" \t\r\n", end);
    if (!scopes.empty() && scopes.back().object && next != std::string::npos && text[next] == ':') {
      std::string key = json::parse(text.substr(i, end - i)).get<std::string>();
      auto [it, added] = scopes.back().key_lines.emplace(key, line);
      if (!added)
        throw ConfigError({file.string() + ":" + std::to_string(line) + ": duplicate key '" + key +
                           "' (first on line " + std::to_string(it->second) +
                           "); keep one of them"});
    }
    i = end;
  }
}

json parse_json(const std::string& text, const fs::path& file) {
  try {
    json tree = json::parse(text);
    reject_duplicate_json_keys(text, file);
    return tree;
  } catch (const json::parse_error& e) {
    // e.byte is the 1-based offset of the character that failed.
    std::size_t offset = std::min<std::size_t>(e.byte > 0 ? e.byte - 1 : 0, text.size());
    std::size_t line = 1 + std::count(text.begin(), text.begin() + offset, '\n');
    std::size_t line_start = text.rfind('\n', offset == 0 ? 0 : offset - 1);
    std::size_t column =
        line_start == std::string::npos || offset == 0 ? offset + 1 : offset - line_start;
    std::string message = e.what();
    if (auto pos = message.find("syntax error"); pos != std::string::npos)
      message = message.substr(pos);
    throw ConfigError({location(file, line, column) + ": JSON " + message});
  }
}

// YAML forbids tabs in indentation; yaml-cpp's own message for them does not say "tab".
void reject_tab_indentation(const std::string& text, const fs::path& file) {
  std::size_t line = 1;
  for (std::size_t start = 0; start < text.size(); ++line) {
    std::size_t end = std::min(text.find('\n', start), text.size());
    std::size_t indent = text.find_first_not_of(" \t", start);
    if (indent != std::string::npos && indent < end && text[indent] != '#') {
      std::size_t tab = text.find('\t', start);
      if (tab < indent)
        throw ConfigError({location(file, line, tab - start + 1) +
                           ": YAML indentation uses a tab; indent with spaces"});
    }
    start = end + 1;
  }
}

json parse_yaml(const std::string& text, const fs::path& file) {
  reject_tab_indentation(text, file);
  try {
    return yaml_to_json(YAML::Load(text), file.string());
  } catch (const YAML::ParserException& e) {
    throw ConfigError(
        {location(file, e.mark.line + 1, e.mark.column + 1) + ": YAML syntax error: " + e.msg});
  } catch (const YAML::Exception& e) {
    throw ConfigError({file.string() + ": YAML error: " + e.msg});
  }
}

void set_dotted(json& tree, const std::string& key, json value) {
  json* node = &tree;
  std::size_t start = 0;
  while (true) {
    std::size_t dot = key.find('.', start);
    std::string part = key.substr(start, dot - start);
    if (dot == std::string::npos) {
      (*node)[part] = std::move(value);
      return;
    }
    json& child = (*node)[part];
    if (!child.is_object()) child = json::object();
    node = &child;
    start = dot + 1;
  }
}

// A --set value for a list key: a YAML/JSON flow list ([q_proj, v_proj]), or names separated by
// commas (q_proj,v_proj); an empty value is the empty list.
json parse_list_value(const std::string& text) {
  json list = json::array();
  std::string body = text;
  if (body.size() >= 2 && body.front() == '[' && body.back() == ']')
    body = body.substr(1, body.size() - 2);
  std::size_t start = 0;
  while (start <= body.size()) {
    std::size_t comma = std::min(body.find(',', start), body.size());
    std::string item = body.substr(start, comma - start);
    item.erase(0, item.find_first_not_of(" \t\"'"));
    item.erase(item.find_last_not_of(" \t\"'") + 1);
    if (!item.empty()) list.push_back(item);
    start = comma + 1;
  }
  return list;
}

const KeyInfo* find_key(const std::vector<KeyInfo>& keys, const std::string& path) {
  for (const auto& key : keys)
    if (key.path == path) return &key;
  return nullptr;
}

// Makes every relative path value in the tree absolute against `base`.
void resolve_paths(json& tree, const std::vector<KeyInfo>& keys, const fs::path& base) {
  for (const auto& key : keys) {
    if (key.type != "path") continue;
    auto dot = key.path.find('.');
    auto section = tree.find(key.path.substr(0, dot));
    if (section == tree.end() || !section->is_object()) continue;
    auto value = section->find(key.path.substr(dot + 1));
    if (value == section->end() || !value->is_string() || value->get<std::string>().empty())
      continue;
    fs::path path = value->get<std::string>();
    if (path.is_relative()) *value = (base / path).lexically_normal().string();
  }
}

// The model's context (n_positions) when it is known before loading it: from the shape of a random
// model, or from a pretrained model's config.json when that file is readable. Unreadable files are
// reported by check_inputs (lmtune/train/preflight.h), which the commands run.
// The model's context and the config.json key it comes from ("n_positions" for a random model).
struct ModelContext {
  int64_t tokens = 0;
  std::string key;
};

std::optional<ModelContext> known_context_length(const Config& config) {
  if (config.model.init == ModelInit::kRandom)
    return ModelContext{config.model.n_positions, "n_positions"};
  if (config.model.path.empty()) return std::nullopt;
  std::ifstream in(fs::path(config.model.path) / "config.json");
  if (!in) return std::nullopt;
  json hf = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!hf.is_object()) return std::nullopt;
  std::optional<ModelContext> context;
  for (const char* key : {"n_positions", "n_ctx", "max_position_embeddings"}) {
    if (hf.contains(key) && hf[key].is_number_integer()) {
      context = ModelContext{hf[key].get<int64_t>(), key};
      break;
    }
  }
  // Attention within a sliding window (Mistral; Qwen2 and Qwen3 with use_sliding_window) is not
  // implemented, so sequences must fit in the window (lmtune/model/llama.h).
  // The same rule as LlamaConfig::from_hf_json (lmtune/model/llama.h), which this layer cannot
  // include: Mistral's window defaults to 4096 when config.json does not set it.
  const bool mistral = hf.value("model_type", "") == "mistral";
  const bool windowed =
      mistral || (hf.contains("use_sliding_window") && hf["use_sliding_window"] == true);
  std::optional<int64_t> window;
  if (hf.contains("sliding_window") && hf["sliding_window"].is_number_integer())
    window = hf["sliding_window"].get<int64_t>();
  else if (mistral && !hf.contains("sliding_window"))
    window = 4096;
  if (context && windowed && window && *window < context->tokens)
    context = ModelContext{*window, "sliding_window"};
  return context;
}

// Adapters train over a frozen, pretrained base; a quantized base cannot train without them.
void check_lora_rules(const Config& c, Problems& p) {
  if (c.model.quantize != Quantize::kNone && !c.lora.enabled && p.ok("model.quantize"))
    p.add_rule("model.quantize", {"lora.enabled"},
               std::string(enum_name(c.model.quantize)) +
                   " needs lora: a quantized base is frozen and only adapters train; add a lora "
                   "section (or --set lora.enabled=true), or set model.quantize: none");
  if (c.model.double_quant && c.model.quantize != Quantize::kNf4 && p.ok("model.double_quant"))
    p.add_rule("model.double_quant", {"model.quantize"},
               "applies to model.quantize: nf4 only (it quantizes nf4's block absmax values)");
  if (!c.lora.enabled) {
    if (!c.lora.adapter.empty() && p.ok("lora.adapter"))
      p.add_rule("lora.adapter", {"lora.enabled"}, "is set but lora.enabled is false");
    return;
  }
  if (c.model.init == ModelInit::kRandom && p.ok("model.init"))
    p.add_rule("model.init", {"lora.enabled"},
               "random cannot be used with lora: adapters train over a pretrained base");
  if (c.train.freeze_layers > 0 && p.ok("train.freeze_layers"))
    p.add_rule("train.freeze_layers", {"lora.enabled"},
               "has no effect with lora (the whole base is frozen); remove it");
  if (c.train.freeze_embeddings && p.ok("train.freeze_embeddings"))
    p.add_rule("train.freeze_embeddings", {"lora.enabled"},
               "has no effect with lora (the whole base is frozen); remove it");
}

// Rules that involve more than one key. Keys that already failed on their own are not judged again.
// `context` is the model's, when known.
void check_cross_key_rules(const Config& c, const std::optional<ModelContext>& context,
                           Problems& p) {
  if (c.data.train.empty() && p.ok("data.train"))
    p.add("data.train", "is required: the training data file (.txt or .jsonl)");
  if (c.model.init == ModelInit::kPretrained && c.model.path.empty() && p.ok("model.path"))
    p.add("model.path", "is required with model.init: pretrained (or set model.init: random)");
  if (c.model.init == ModelInit::kRandom && c.model.path.empty() && c.model.tokenizer.empty() &&
      p.ok("model.tokenizer"))
    p.add("model.tokenizer",
          "is required with model.init: random and no model.path: the model "
          "needs a tokenizer");
  if (c.model.init == ModelInit::kRandom && c.model.n_embd % c.model.n_head != 0 &&
      p.ok("model.n_embd") && p.ok("model.n_head"))
    p.add_rule("model.n_embd", {"model.n_head", "model.init"},
               "must be divisible by model.n_head (" + std::to_string(c.model.n_head) + "), got " +
                   std::to_string(c.model.n_embd));
  if (!c.data.validation.empty() && c.data.validation_split > 0 && p.ok("data.validation_split"))
    p.add_rule("data.validation_split", {"data.validation"},
               "cannot be used together with data.validation; set one of them");
  if (c.train.min_lr > c.train.lr && p.ok("train.min_lr") && p.ok("train.lr"))
    p.add_rule("train.min_lr", {"train.lr"},
               "must not exceed train.lr (" + format_number(c.train.lr) + "), got " +
                   format_number(c.train.min_lr));
  if (c.train.precision == Precision::kFp16 && c.run.device == Device::kCpu &&
      p.ok("train.precision"))
    p.add_rule("train.precision", {"run.device"}, "fp16 needs a CUDA device; use bf16 on the CPU");
  check_lora_rules(c, p);
  const auto& prompts = c.eval.sample_prompts;
  if (std::find(prompts.begin(), prompts.end(), "") != prompts.end() && p.ok("eval.sample_prompts"))
    p.add("eval.sample_prompts", "holds an empty prompt; give each prompt some text");
  if (c.data.seq_len == 1 && p.ok("data.seq_len"))
    p.add("data.seq_len", "must be 0 (the model's context) or at least 2, got 1");
  if (context && c.data.seq_len > context->tokens && p.ok("data.seq_len"))
    p.add_rule("data.seq_len", {"model.path", "model.n_positions"},
               "must not exceed the model's " + context->key + " (" +
                   std::to_string(context->tokens) + "), got " + std::to_string(c.data.seq_len) +
                   "; set data.seq_len to " + std::to_string(context->tokens) +
                   " or less (0 takes the model's context)");
}

// data.seq_len: 0 becomes the model's context, capped at kMaxDefaultSeqLen, where it is known.
void resolve_seq_len(Config& config, const std::optional<ModelContext>& context) {
  if (config.data.seq_len == 0 && context)
    config.data.seq_len = std::min(context->tokens, kMaxDefaultSeqLen);
}

}  // namespace

std::vector<KeyInfo> config_keys() {
  Config defaults;
  KeyLister lister;
  defaults.visit(lister);
  return lister.keys;
}

std::string config_keys_markdown() {
  auto escape = [](const std::string& text) {
    std::string out;
    for (char ch : text) {
      if (ch == '<' || ch == '>' || ch == '|') out += '\\';
      out += ch;
    }
    return out;
  };
  auto type_cell = [](const std::string& type) {
    if (type.find('|') == std::string::npos) return type;
    std::string out = "`";
    for (char ch : type) out += ch == '|' ? std::string("`, `") : std::string(1, ch);
    return out + "`";
  };
  std::ostringstream out;
  std::string section;
  for (const auto& key : config_keys()) {
    std::string key_section = key.path.substr(0, key.path.find('.'));
    if (key_section != section) {
      section = key_section;
      out << "\n## `" << section << "`\n\n"
          << "| key | type | default | range | meaning |\n| --- | --- | --- | --- | --- |\n";
    }
    out << "| `" << key.path << "` | " << type_cell(key.type) << " | `" << key.default_value.dump()
        << "` | " << key.range << " | " << escape(key.help) << " |\n";
  }
  return out.str();
}

Override parse_override(const std::string& text) {
  auto eq = text.find('=');
  if (eq == std::string::npos || eq == 0)
    throw UsageError("--set " + text + ": expected KEY=VALUE, for example --set train.lr=3e-5");
  return {text.substr(0, eq), text.substr(eq + 1)};
}

json read_config_tree(const fs::path& file, const char* expected) {
  std::string ext = file.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char ch) { return std::tolower(ch); });
  if (ext != ".json" && ext != ".yaml" && ext != ".yml")
    throw UsageError(file.string() + ": config files must end in .json, .yaml or .yml");
  std::string text = read_text(file);
  json tree = ext == ".json" ? parse_json(text, file) : parse_yaml(text, file);
  if (tree.is_null()) throw ConfigError({file.string() + ": the config file is empty"});
  if (!tree.is_object())
    throw ConfigError(
        {file.string() + ": expected " + expected + " at the top level, got " + describe(tree)});
  return tree;
}

Config load_config(const fs::path& file, const std::vector<Override>& overrides) {
  return load_config_tree(read_config_tree(file), fs::absolute(file).parent_path(), file.string(),
                          overrides);
}

Config load_config_tree(json tree, const fs::path& base_dir, const std::string& source,
                        const std::vector<Override>& overrides) {
  const auto keys = config_keys();
  resolve_paths(tree, keys, base_dir);

  Problems problems(source);
  for (const auto& override : overrides) {
    const KeyInfo* key = find_key(keys, override.key);
    bool literal = key && (key->type == "string" || key->type == "path" ||
                           key->type.find('|') != std::string::npos);
    json value = literal ? json(override.value) : infer_scalar(override.value);
    if (key && key->type == "list") value = parse_list_value(override.value);
    if (key && key->type == "path" && !override.value.empty() &&
        fs::path(override.value).is_relative())
      value = (fs::current_path() / override.value).lexically_normal().string();
    set_dotted(tree, override.key, std::move(value));
    problems.set_origin(override.key, "--set " + override.key + "=" + override.value);
  }

  // Writing a lora section (in the file or with --set lora.KEY) is asking for adapters.
  if (auto lora = tree.find("lora");
      lora != tree.end() && lora->is_object() && !lora->contains("enabled"))
    (*lora)["enabled"] = true;

  Config config;
  TreeReader reader(tree, problems);
  config.visit(reader);
  reader.report_unknown_sections();
  if (config.run.output_dir.empty())
    config.run.output_dir =
        (fs::current_path() / "runs" / fs::path(source).stem()).lexically_normal().string();
  const auto context = known_context_length(config);  // reads the model's config.json once
  check_cross_key_rules(config, context, problems);
  problems.throw_if_any();
  resolve_seq_len(config, context);
  return config;
}

std::string describe_value(const json& value) {
  return describe(value);
}

std::optional<std::string> closest_name(const std::string& name,
                                        const std::vector<std::string>& candidates) {
  return closest(name, candidates);
}

std::string unknown_config_key_message(const std::string& dotted_name) {
  const std::string section = dotted_name.substr(0, dotted_name.find('.'));
  std::vector<std::string> siblings;
  for (const auto& info : config_keys())
    if (info.path.rfind(section + ".", 0) == 0)
      siblings.push_back(info.path.substr(section.size() + 1));
  return unknown_key_message(dotted_name, siblings);
}

json config_to_json(const Config& config) {
  TreeWriter writer;
  Config copy = config;  // visit() is shared with the readers, so it takes a mutable config
  copy.visit(writer);
  return writer.tree;
}

json with_current_defaults(const json& recorded) {
  try {
    // Its paths are absolute already: the base directory resolves nothing.
    return config_to_json(load_config_tree(recorded, fs::path("/"), "the recorded config"));
  } catch (const Error&) {
    return recorded;
  }
}

}  // namespace lmtune
