// What `train`, `eval` and `prepare` share: the device, tokenizer, model and data a config names.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <torch/torch.h>

#include "lmtune/core/config.h"
#include "lmtune/data/dataset.h"
#include "lmtune/io/tokenizer.h"
#include "lmtune/model/causal_lm.h"
#include "lmtune/model/lora.h"

namespace lmtune {

// run.device resolved: auto is CUDA when a GPU is visible. UsageError for cuda without one.
torch::Device resolve_device(Device device, std::string_view source = "run.device");

// The tokenizer directory: model.tokenizer, else model.path.
std::filesystem::path tokenizer_dir(const Config& config);

// The token cache root: data.cache_dir, else the machine's cache (machine_cache_dir()/tokens).
std::filesystem::path cache_root(const Config& config);

// A run's adapter: how it was made and the base it belongs to, for checkpoints and final/.
struct AdapterSetup {
  LoraSpec spec;
  AdapterSummary summary;
  std::string base_model;  // model.path
};

// The model a config names, on `device`.
struct BuiltModel {
  CausalLM model;
  std::optional<AdapterSetup> adapter;  // with lora.enabled
  int64_t quantized_bytes = 0;          // with model.quantize: what the base's linear weights take
};

// The model a config names, in fp32 on `device`: loaded from model.path, or freshly initialised
// from the shape keys and run.seed with model.init: random. With lora.enabled the base is frozen
// and carries fresh adapters, or those of lora.adapter. Checks it fits the tokenizer and
// data.seq_len.
BuiltModel build_model(const Config& config, const Tokenizer& tokenizer, torch::Device device);

// distill.teacher in fp32 on `device`, frozen (no parameter requires gradients) and in eval mode.
// Throws InputError naming both directories when its tokenizer's vocabulary is not the student's
// (tokenizer_dir(config)) token for token, or its output vocabulary differs from `student`'s.
CausalLM build_teacher(const Config& config, const CausalLM& student, torch::Device device);

// data.order: curriculum, curriculum_score: loss: per training window, the mean loss per target
// token that `model`, the starting model, gives it. Read from the token cache when it holds them
// for exactly these weights (keyed by a hash of every parameter and buffer), else computed (logged)
// and stored there beside the tokens.
std::vector<double> curriculum_loss_scores(const CausalLM& model, const PreparedData& data,
                                           torch::Device device);

// model.quantize as the model layer names it.
QuantType quant_type(Quantize quantize);

// The LoRA settings of the config's lora section.
LoraSpec lora_spec(const LoraConfig& lora);

}  // namespace lmtune
