#include "lmtune/model/hf_model_files.h"

#include <fstream>
#include <set>

#include "lmtune/core/errors.h"
#include "lmtune/core/hash.h"
#include "lmtune/io/json_file.h"
#include "lmtune/io/tokenizer.h"
#include "lmtune/model/causal_lm.h"
#include "lmtune/model/projection.h"

namespace lmtune {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

std::string shape_string(c10::IntArrayRef shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// The shard file names of an index, in order of first appearance.
std::vector<std::string> shard_names(const json& index, const fs::path& file) {
  auto map = index.find("weight_map");
  if (map == index.end() || !map->is_object())
    throw InputError(file.string(), "has no \"weight_map\" object");
  std::vector<std::string> names;
  for (const auto& [tensor, shard] : map->items()) {
    if (!shard.is_string())
      throw InputError(file.string(), "weight_map." + tensor + ": expected a file name");
    if (std::find(names.begin(), names.end(), shard.get<std::string>()) == names.end())
      names.push_back(shard.get<std::string>());
  }
  return names;
}

int64_t tensor_bytes(const torch::Tensor& t) {
  return t.numel() * static_cast<int64_t>(t.element_size());
}

}  // namespace

json read_hf_config(const fs::path& dir) {
  if (!fs::is_directory(dir)) throw InputError(dir.string(), "model directory does not exist");
  return read_json_file(dir / "config.json", "the model's config.json", /*object=*/true);
}

HfWeights::HfWeights(const fs::path& dir) {
  if (fs::exists(dir / kIndexFile)) {
    source_ = dir / kIndexFile;
    const json index = read_json_file(source_, "the weights index", /*object=*/true);
    for (const auto& name : shard_names(index, source_)) {
      if (!fs::exists(dir / name))
        throw InputError((dir / name).string(),
                         "missing: a shard " + std::string(kIndexFile) + " lists");
      files_.push_back(std::make_unique<SafetensorsFile>(dir / name));
    }
    for (const auto& [tensor, shard] : index["weight_map"].items()) {
      for (const auto& file : files_) {
        if (file->path().filename() != shard.get<std::string>()) continue;
        const SafetensorsEntry* entry = file->find(tensor);
        if (!entry)
          throw InputError(file->path().string(), "missing tensor '" + tensor + "' (" +
                                                      std::string(kIndexFile) + " places it here)");
        index_[tensor] = {file.get(), entry};
      }
    }
    return;
  }
  source_ = dir / kSingleFile;
  if (!fs::exists(source_)) {
    std::string hint = fs::exists(dir / "pytorch_model.bin")
                           ? "; only safetensors weights are read: convert pytorch_model.bin with "
                             "transformers (save_pretrained(safe_serialization=True))"
                           : "";
    throw InputError(source_.string(), "model weights not found" + hint);
  }
  files_.push_back(std::make_unique<SafetensorsFile>(source_));
  for (const auto& entry : files_.back()->entries())
    index_[entry.name] = {files_.back().get(), &entry};
}

const SafetensorsEntry* HfWeights::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second.second;
}

torch::Tensor HfWeights::read(const SafetensorsEntry& entry) const {
  return index_.at(entry.name).first->read(entry);
}

const fs::path& HfWeights::file_of(const SafetensorsEntry& entry) const {
  return index_.at(entry.name).first->path();
}

std::vector<std::string> HfWeights::names() const {
  std::vector<std::string> names;
  for (const auto& file : files_)
    for (const auto& entry : file->entries())
      if (index_.count(entry.name)) names.push_back(entry.name);
  return names;
}

std::string HfWeights::fingerprint() const {
  constexpr std::size_t kSample = 4096;
  Hash64 hash;
  for (const auto& name : names()) {
    const auto& [file, entry] = index_.at(name);
    hash.update(name).update(torch::toString(entry->dtype));
    for (int64_t d : entry->shape) hash.update_int(static_cast<uint64_t>(d));
    const std::string_view data = file->bytes(*entry);
    hash.update(data.substr(0, kSample));
    if (data.size() > kSample) hash.update(data.substr(data.size() - kSample));
  }
  return hash.hex();
}

void load_hf_weights(CausalLMImpl& model, const HfWeights& weights) {
  std::set<std::string> used;
  torch::NoGradGuard no_grad;
  for (auto& item : model.named_parameters()) {
    const std::string& name = item.key();
    if (is_adapter_parameter(name)) continue;  // loaded from an adapter file (model/lora.h)
    const std::vector<std::string> candidates = model.hf_names(name);
    const SafetensorsEntry* entry = nullptr;
    for (const auto& candidate : candidates)
      if (!entry) entry = weights.find(candidate);
    if (!entry)
      throw InputError(weights.source().string(), "missing tensor '" + candidates.front() + "'");
    const std::string& stored = entry->name;
    used.insert(stored);
    torch::Tensor raw = weights.read(*entry);
    torch::Tensor value = model.from_hf_layout(name, raw);
    if (value.sizes() != item.value().sizes()) {
      torch::Tensor expected = model.from_hf_layout(name, torch::empty(item.value().sizes()));
      // from_hf_layout is its own inverse for the transposes it makes.
      throw InputError(weights.file_of(*entry).string(),
                       "tensor '" + stored + "' has shape " + shape_string(raw.sizes()) +
                           ", expected " + shape_string(expected.sizes()));
    }
    item.value().copy_(value.to(item.value().dtype()));
  }
  for (const auto& name : weights.names()) {
    if (used.count(name) || model.ignorable_hf_tensor(name)) continue;
    throw InputError(
        weights.file_of(*weights.find(name)).string(),
        "unexpected tensor '" + name + "' (not part of a " + model.spec().model_type + " model)");
  }
}

void write_hf_weights(const fs::path& dir, NamedTensors tensors, int64_t max_shard_bytes) {
  fs::create_directories(dir);
  // Shards in order, each at most max_shard_bytes unless one tensor alone is larger.
  std::vector<NamedTensors> shards(1);
  int64_t shard_bytes = 0, total_bytes = 0;
  for (auto& named : tensors) {
    const int64_t bytes = tensor_bytes(named.second);
    if (!shards.back().empty() && shard_bytes + bytes > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shard_bytes += bytes;
    total_bytes += bytes;
    shards.back().push_back(std::move(named));
  }
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  // A directory written again (final/ of a resumed run) must not keep the other layout's files.
  if (shards.size() == 1) {
    fs::remove(dir / kIndexFile);
    write_safetensors(dir / kSingleFile, shards[0], metadata);
  } else {
    json weight_map = json::object();
    for (std::size_t i = 0; i < shards.size(); ++i) {
      char name[64];
      std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
      write_safetensors(dir / name, shards[i], metadata);
      for (const auto& named : shards[i]) weight_map[named.first] = name;
    }
    json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
    write_file_atomically(dir / kIndexFile, index.dump(2) + "\n");
    fs::remove(dir / kSingleFile);
  }
}

void save_hf_model(const CausalLMImpl& model, const fs::path& dir, const Tokenizer* tokenizer,
                   int64_t max_shard_bytes) {
  write_hf_weights(dir, model.hf_tensors(), max_shard_bytes);
  write_file_atomically(dir / "config.json", model.hf_config().dump(2) + "\n");
  if (tokenizer) tokenizer->save(dir);
}

}  // namespace lmtune
