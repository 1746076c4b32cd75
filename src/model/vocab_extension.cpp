// Adding tokens to a model: its tokenizer's added tokens, and the embedding rows for them.
#include "lmtune/model/vocab_extension.h"

#include <algorithm>
#include <fstream>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "lmtune/core/errors.h"
#include "lmtune/io/json_file.h"
#include "lmtune/io/safetensors.h"
#include "lmtune/io/tokenizer.h"
#include "lmtune/model/hf_model_files.h"
#include "lmtune/model/model_factory.h"

namespace lmtune {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kTokenizerJson = "tokenizer.json";
constexpr const char* kTokenizerConfigJson = "tokenizer_config.json";

// The tensors whose rows are the vocabulary: GPT-2's wte, the Llama family's embed_tokens, and an
// untied lm_head.
bool is_vocabulary_tensor(const SafetensorsEntry& entry, int64_t vocab) {
  const std::string& name = entry.name;
  if (entry.shape.size() != 2 || entry.shape[0] != vocab) return false;
  for (const std::string suffix : {"wte.weight", "embed_tokens.weight", "lm_head.weight"}) {
    if (name.size() >= suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      return true;
  }
  return false;
}

// `rows` (V, C) grown to (new_vocab, C), and the rows of ids [first, first + count) set to the mean
// of the old rows, computed in fp32: a new token starts where the average token is, so its logit
// starts near the others' instead of at a random or zero vector's.
torch::Tensor with_mean_rows(const torch::Tensor& rows, int64_t first, int64_t count,
                             int64_t new_vocab) {
  const torch::Tensor mean =
      rows.to(torch::kFloat32).mean(0, /*keepdim=*/true).to(rows.scalar_type());
  torch::Tensor out = torch::cat({rows, mean.expand({new_vocab - rows.size(0), rows.size(1)})});
  out.slice(0, first, first + count).copy_(mean.expand({count, rows.size(1)}));
  return out;
}

// An added token as transformers' add_tokens() makes one: matched as written, not special.
json added_token_flags(const std::string& content) {
  return {{"content", content}, {"single_word", false}, {"lstrip", false},
          {"rstrip", false},    {"normalized", false},  {"special", false}};
}

// Sorts `tokens` into those to add and those the tokenizer already has (or listed twice).
void choose_tokens(const Tokenizer& tokenizer, const std::vector<std::string>& tokens,
                   VocabExtension& extension) {
  for (const auto& token : tokens) {
    const bool repeated =
        std::find(extension.added.begin(), extension.added.end(), token) != extension.added.end();
    if (repeated || tokenizer.encode(token).size() == 1)
      extension.present.push_back(token);
    else
      extension.added.push_back(token);
  }
}

// Writes the tokenizer of `model_dir` into `out` with the extension's tokens added.
void write_extended_tokenizer(const fs::path& model_dir, const fs::path& out,
                              const VocabExtension& extension) {
  load_tokenizer(model_dir)->save(out);
  const bool has_json = fs::exists(model_dir / kTokenizerJson);
  // transformers keeps added tokens in tokenizer.json's added_tokens, and for a tokenizer without
  // one in tokenizer_config.json's added_tokens_decoder; lmtune reads them from the same places.
  const fs::path file = out / (has_json ? kTokenizerJson : kTokenizerConfigJson);
  json tree = read_json_file(file, "the tokenizer file", /*object=*/true);
  for (std::size_t i = 0; i < extension.added.size(); ++i) {
    const int64_t id = extension.first_id + static_cast<int64_t>(i);
    json flags = added_token_flags(extension.added[i]);
    if (has_json) {
      flags["id"] = id;
      tree["added_tokens"].push_back(flags);
    } else {
      tree["added_tokens_decoder"][std::to_string(id)] = flags;
    }
  }
  write_file_atomically(file, tree.dump(2) + "\n");
  auto extended = load_tokenizer(out);
  for (std::size_t i = 0; i < extension.added.size(); ++i) {
    const int64_t id = extension.first_id + static_cast<int64_t>(i);
    if (extended->encode(extension.added[i]) != std::vector<int64_t>{id})
      throw Error(file.string() + ": the added token '" + extension.added[i] +
                  "' does not encode as its id " + std::to_string(id));
  }
}

// Writes config.json and the weights of `model_dir` into `out` with the vocabulary grown.
void write_extended_model(const fs::path& model_dir, const fs::path& out,
                          const VocabExtension& extension) {
  json config = read_hf_config(model_dir);
  config["vocab_size"] = extension.new_vocab;
  const int64_t count = static_cast<int64_t>(extension.added.size());
  HfWeights weights(model_dir);
  NamedTensors tensors;
  for (const auto& name : weights.names()) {
    const SafetensorsEntry& entry = *weights.find(name);
    torch::Tensor t = weights.read(entry);
    if (is_vocabulary_tensor(entry, extension.old_vocab))
      t = with_mean_rows(t, extension.first_id, count, extension.new_vocab);
    tensors.emplace_back(name, std::move(t));
  }
  write_hf_weights(out, std::move(tensors));
  write_file_atomically(out / "config.json", config.dump(2) + "\n");
  if (fs::exists(model_dir / "generation_config.json"))
    fs::copy_file(model_dir / "generation_config.json", out / "generation_config.json");
  load_causal_lm(out);  // shapes and names checked as training will check them
}

// The vocabulary sizes of config.json, checking that the weights hold a token embedding of that
// many rows.
void plan_model(const fs::path& model_dir, VocabExtension& extension) {
  const json config = read_hf_config(model_dir);
  if (!config.contains("vocab_size") || !config["vocab_size"].is_number_integer())
    throw InputError((model_dir / "config.json").string(), "vocab_size: expected an integer");
  extension.old_vocab = config["vocab_size"].get<int64_t>();
  extension.new_vocab = std::max(extension.old_vocab,
                                 extension.first_id + static_cast<int64_t>(extension.added.size()));
  HfWeights weights(model_dir);
  const auto names = weights.names();
  if (std::none_of(names.begin(), names.end(), [&](const std::string& name) {
        return is_vocabulary_tensor(*weights.find(name), extension.old_vocab);
      }))
    throw InputError(weights.source().string(),
                     "no token embedding of vocab_size (" + std::to_string(extension.old_vocab) +
                         ") rows (wte.weight or embed_tokens.weight) to grow");
}

}  // namespace

std::vector<std::string> read_token_list(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw InputError(file.string(), "cannot read the token list (does it exist?)");
  std::vector<std::string> tokens;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    if (valid_utf8(line) != line)
      throw InputError(file.string(), "line " + std::to_string(number) + ": not valid UTF-8");
    tokens.push_back(line);
  }
  if (tokens.empty()) throw InputError(file.string(), "lists no tokens (one per line)");
  return tokens;
}

VocabExtension plan_vocabulary_extension(const fs::path& model_dir,
                                         const std::vector<std::string>& tokens) {
  VocabExtension extension;
  auto tokenizer = load_tokenizer(model_dir);
  if (!fs::exists(model_dir / kTokenizerJson) && !fs::exists(model_dir / "vocab.json"))
    throw InputError((model_dir / "tokenizer.model").string(),
                     "tokens can be added to a tokenizer.json or to GPT-2's vocab.json + "
                     "merges.txt, not to a SentencePiece model");
  extension.first_id = tokenizer->vocab_size();
  choose_tokens(*tokenizer, tokens, extension);
  plan_model(model_dir, extension);
  return extension;
}

void write_vocabulary_extension(const fs::path& model_dir, const VocabExtension& extension,
                                const fs::path& out) {
  write_extended_tokenizer(model_dir, out, extension);
  write_extended_model(model_dir, out, extension);
}

}  // namespace lmtune
