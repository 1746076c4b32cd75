// Picks a model's architecture from its config.json's model_type (gpt2, or llama, mistral, qwen2,
// qwen3), and loads it.
#pragma once

#include <filesystem>
#include <string>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "lmtune/model/causal_lm.h"

namespace lmtune {

// The model_type values lmtune implements, for messages: "gpt2, llama, mistral, qwen2, qwen3".
const char* supported_model_types();

// The architecture an HF config names, freshly initialised (fp32, on the CPU). Unknown or
// unsupported settings are InputError naming `file` and the key (exit 3).
CausalLM make_causal_lm(const nlohmann::json& hf_config, const std::string& file);

// The spec of the model in `dir`, reading only its config.json.
ModelSpec read_model_spec(const std::filesystem::path& dir);

// The model in `dir` (config.json and its safetensors weights, single or sharded, any of F32, F16
// or BF16) in fp32 on `device`.
CausalLM load_causal_lm(const std::filesystem::path& dir, torch::Device device = torch::kCPU);

}  // namespace lmtune
