// LoRA adapters on a model's projections: choosing the targets by PEFT's module names, attaching
// and merging them, quantizing the frozen base under them, and adapter directories in PEFT's format
// (adapter_config.json and adapter_model.safetensors, which peft.PeftModel.from_pretrained loads).
// Errors in files are InputError naming the file (exit 3); a target that matches nothing is
// ConfigError (exit 2).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lmtune/io/safetensors.h"
#include "lmtune/model/causal_lm.h"
#include "lmtune/model/quantize.h"

namespace lmtune {

class Tokenizer;

// File names of an adapter directory, as PEFT writes them.
inline constexpr const char* kAdapterConfigFile = "adapter_config.json";
inline constexpr const char* kAdapterWeightsFile = "adapter_model.safetensors";

// What an adapter is: its rank and scale, where it attaches and what else it trains.
struct LoraSpec {
  int64_t r = 16;
  double alpha = 32;
  double dropout = 0;
  bool use_rslora = false;
  // PEFT's module names (a name matches every module whose name it ends), or {"all-linear"}:
  // every projection but the output head. Empty means PEFT's default for the architecture.
  std::vector<std::string> target_modules;
  std::vector<std::string> modules_to_save;  // trained in full, saved in the adapter

  // The factor on the adapter's output: alpha / r, or alpha / sqrt(r) with rsLoRA.
  double scaling(int64_t rank) const;
};

// PEFT's default targets: c_attn for GPT-2, q_proj and v_proj for the Llama family.
std::vector<std::string> default_lora_targets(const std::string& model_type);

// What attaching did, for the log.
struct AdapterSummary {
  std::vector<std::string> target_names;  // PEFT's names written to adapter_config.json
  int64_t adapted_layers = 0;
  int64_t adapter_parameters = 0;
  int64_t saved_module_parameters = 0;  // of modules_to_save
};

// Freezes every base parameter, adds a fresh adapter (PEFT's initialisation, drawn from the
// default generator) to each targeted projection, and unfreezes modules_to_save. A name that
// matches nothing is ConfigError naming `key` ("lora.target_modules") and the candidates.
AdapterSummary attach_lora(CausalLMImpl& model, const LoraSpec& spec,
                           const std::string& key_prefix = "lora");

// Whether any projection of the model carries an adapter.
bool has_lora(const CausalLMImpl& model);

// The adapter in PEFT's naming: base_model.model.<HF module>.lora_A.weight (r, in) and
// .lora_B.weight (out, r) for each adapted projection, and the HF tensors of modules_to_save.
NamedTensors adapter_tensors(const CausalLMImpl& model, const LoraSpec& spec);

// Writes an adapter directory: adapter_config.json (base_model_name_or_path = `base_model`),
// adapter_model.safetensors and, when given, the tokenizer's files.
void save_adapter(const CausalLMImpl& model, const LoraSpec& spec, const AdapterSummary& summary,
                  const std::filesystem::path& dir, const std::string& base_model,
                  const Tokenizer* tokenizer = nullptr);

// An adapter directory's adapter_config.json: the spec (targets as written) and the base it names
// (base_model_name_or_path; may be empty). InputError for what lmtune cannot run (another PEFT
// method, DoRA, per-module alpha patterns, adapter biases).
struct AdapterConfig {
  LoraSpec spec;
  std::string base_model;
};
AdapterConfig read_adapter_config(const std::filesystem::path& dir);

// Attaches the adapter of `dir` (lmtune's or PEFT's) to `model` and loads its weights: the
// adapted layers are those the file holds, each with the rank its tensors have. Shapes, names and
// the architecture are checked against the model (InputError naming the file and tensor).
AdapterSummary load_adapter(CausalLMImpl& model, const std::filesystem::path& dir);

// Copies an adapter file's tensors into a model that already carries the same adapters (resuming
// a checkpoint): every adapter and saved-module tensor must be there with its shape.
void load_adapter_weights(CausalLMImpl& model, const LoraSpec& spec,
                          const std::filesystem::path& file);

// Quantizes the weight of every projection but the output head (as QLoRA and bitsandbytes leave
// lm_head dense); returns the bytes the quantized weights take.
int64_t quantize_base(CausalLMImpl& model, QuantType type, bool double_quant);

// Folds every adapter into its base weight (W += scaling * B A) and removes the adapters.
void merge_lora(CausalLMImpl& model);

// The base model of `base_dir` (fp32, on the CPU) with the adapter of `adapter_dir` folded in.
CausalLM load_merged_model(const std::filesystem::path& base_dir,
                           const std::filesystem::path& adapter_dir);

// Writes load_merged_model's model as a plain HF model directory (config.json, model.safetensors
// or shards, and the tokenizer when given).
void write_merged_model(const std::filesystem::path& base_dir,
                        const std::filesystem::path& adapter_dir,
                        const std::filesystem::path& out_dir, const Tokenizer* tokenizer);

// Whether `dir` is an adapter directory rather than a model: adapter_config.json, no config.json.
bool is_adapter_dir(const std::filesystem::path& dir);

// A model to load: a base directory and, optionally, an adapter over it.
struct ModelSource {
  std::filesystem::path base;
  std::filesystem::path adapter;  // empty: none
};
// What `--model DIR [--adapter DIR]` names: as given, except that a --model that is an adapter
// directory (a LoRA run's final/) is that adapter over the base its adapter_config.json names
// (InputError when that is not a local directory).
ModelSource resolve_model_source(const std::filesystem::path& model,
                                 const std::filesystem::path& adapter);

}  // namespace lmtune
