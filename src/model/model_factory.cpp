#include "lmtune/model/model_factory.h"

#include "lmtune/core/errors.h"
#include "lmtune/model/gpt2.h"
#include "lmtune/model/hf_model_files.h"
#include "lmtune/model/llama.h"

namespace lmtune {
namespace fs = std::filesystem;

const char* supported_model_types() {
  return "gpt2, llama, mistral, qwen2, qwen3";
}

CausalLM make_causal_lm(const nlohmann::json& hf_config, const std::string& file) {
  if (!hf_config.is_object())
    throw InputError(file, "expected a JSON object (a Hugging Face config.json)");
  // GPT-2 configs written by hand or by old tools may lack model_type.
  const auto type = hf_config.value("model_type", std::string("gpt2"));
  if (type == "gpt2") return GPT2(GPT2Config::from_hf_json(hf_config, file));
  if (is_llama_family(type)) return Llama(LlamaConfig::from_hf_json(hf_config, file));
  throw InputError(file,
                   "model_type '" + type + "' is not supported (" + supported_model_types() + ")");
}

ModelSpec read_model_spec(const fs::path& dir) {
  // Building the modules of a large model only to read its shape would cost its memory: the
  // config readers alone give the spec.
  const nlohmann::json hf = read_hf_config(dir);
  const std::string file = (dir / "config.json").string();
  const auto type = hf.is_object() ? hf.value("model_type", std::string("gpt2")) : "gpt2";
  if (type == "gpt2") return GPT2Impl::spec_of(GPT2Config::from_hf_json(hf, file));
  if (is_llama_family(type)) return LlamaImpl::spec_of(LlamaConfig::from_hf_json(hf, file));
  throw InputError(file,
                   "model_type '" + type + "' is not supported (" + supported_model_types() + ")");
}

CausalLM load_causal_lm(const fs::path& dir, torch::Device device) {
  CausalLM model = make_causal_lm(read_hf_config(dir), (dir / "config.json").string());
  load_hf_weights(*model, HfWeights(dir));
  model->to(device);
  return model;
}

}  // namespace lmtune
