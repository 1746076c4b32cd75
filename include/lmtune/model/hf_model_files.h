// A Hugging Face model directory on disk: its config.json, its weights in one safetensors file or
// in shards listed by model.safetensors.index.json, and writing a model back in the same layout.
// Errors are InputError naming the file, tensor or key (exit 3).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lmtune/io/safetensors.h"

namespace lmtune {

class CausalLMImpl;
class Tokenizer;

// Writes above this many bytes of weights are split into shards with an index, as transformers'
// save_pretrained does (its default max_shard_size is 5 GB).
inline constexpr int64_t kDefaultMaxShardBytes = int64_t{5} * 1000 * 1000 * 1000;

// The parsed config.json of `dir`. InputError when the directory or the file is missing or the
// file is not a JSON object.
nlohmann::json read_hf_config(const std::filesystem::path& dir);

// The weights of a model directory: model.safetensors, or the shards model.safetensors.index.json
// names (every shard must exist and hold the tensors the index places in it).
class HfWeights {
 public:
  explicit HfWeights(const std::filesystem::path& dir);

  // The named tensor, or nullptr.
  const SafetensorsEntry* find(const std::string& name) const;
  // A CPU copy of the tensor in its stored dtype.
  torch::Tensor read(const SafetensorsEntry& entry) const;
  // The file holding `entry`, for messages.
  const std::filesystem::path& file_of(const SafetensorsEntry& entry) const;
  // Every tensor name, in file order.
  std::vector<std::string> names() const;
  // A short hex digest that tells this model's weights from others': every tensor's name, dtype
  // and shape, and the first and last 4 KiB of its bytes (reading all of a large model would
  // take seconds; two different models differ within those bytes).
  std::string fingerprint() const;
  // The file to name in a message about the weights as a whole.
  const std::filesystem::path& source() const { return source_; }

 private:
  std::filesystem::path source_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<const SafetensorsFile*, const SafetensorsEntry*>> index_;
};

// Copies every parameter of `model` from `weights` (stored F32, F16 or BF16; converted to the
// parameter's dtype and layout), checking names and shapes; a tensor the model does not use is an
// error unless the architecture may ignore it.
void load_hf_weights(CausalLMImpl& model, const HfWeights& weights);

// Writes weights with HF names as model.safetensors, or as shards of at most `max_shard_bytes`
// with model.safetensors.index.json, replacing the other layout's files in `dir`.
void write_hf_weights(const std::filesystem::path& dir, NamedTensors tensors,
                      int64_t max_shard_bytes = kDefaultMaxShardBytes);

// Writes `model` as an HF model directory: config.json, model.safetensors (or shards of at most
// `max_shard_bytes` with model.safetensors.index.json), and the tokenizer's files when given.
void save_hf_model(const CausalLMImpl& model, const std::filesystem::path& dir,
                   const Tokenizer* tokenizer = nullptr,
                   int64_t max_shard_bytes = kDefaultMaxShardBytes);

}  // namespace lmtune
