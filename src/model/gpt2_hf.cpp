// GPT-2's Hugging Face files: config.json both ways, the tensor names ("transformer." prefix, a
// tied lm_head stored once) and HF's Conv1D layout, (in, out), of the four projection weights.
#include <fstream>

#include "lmtune/core/errors.h"
#include "lmtune/core/text.h"
#include "lmtune/model/gpt2.h"
#include "lmtune/model/hf_model_files.h"

namespace lmtune {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct ActivationSpelling {
  const char* name;
  Activation activation;
};
// "gelu_new", "gelu_fast" and "gelu_pytorch_tanh" are all the tanh approximation of GELU.
constexpr ActivationSpelling kActivations[] = {{"gelu_new", Activation::kGeluTanh},
                                               {"gelu_pytorch_tanh", Activation::kGeluTanh},
                                               {"gelu_fast", Activation::kGeluTanh},
                                               {"gelu", Activation::kGelu},
                                               {"relu", Activation::kRelu}};

// HF's Conv1D layers store their weight as (in, out); a Projection as (out, in).
bool is_conv1d_weight(const std::string& name) {
  for (const char* suffix :
       {"attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"})
    if (ends_with(name, suffix)) return true;
  return false;
}

}  // namespace

GPT2Config GPT2Config::from_hf_json(const json& hf, const std::string& file) {
  if (!hf.is_object())
    throw InputError(file, "expected a JSON object (a Hugging Face config.json)");
  GPT2Config c;
  auto integer = [&](std::initializer_list<const char*> keys, int64_t& out) {
    for (const char* key : keys) {
      if (!hf.contains(key)) continue;
      if (!hf[key].is_number_integer() || hf[key].get<int64_t>() <= 0)
        throw InputError(file, std::string("'") + key + "' must be a positive integer");
      out = hf[key].get<int64_t>();
      return;
    }
    throw InputError(file, std::string("missing required key '") + *keys.begin() + "'");
  };
  integer({"n_layer"}, c.n_layer);
  integer({"n_head"}, c.n_head);
  integer({"n_embd"}, c.n_embd);
  integer({"n_positions", "n_ctx"}, c.n_positions);
  integer({"vocab_size"}, c.vocab_size);
  if (c.n_embd % c.n_head != 0)
    throw InputError(file, "n_embd (" + std::to_string(c.n_embd) +
                               ") is not divisible by n_head (" + std::to_string(c.n_head) + ")");
  if (hf.contains("n_inner") && !hf["n_inner"].is_null()) integer({"n_inner"}, c.n_inner);
  auto number = [&](const char* key, double& out) {
    if (!hf.contains(key)) return;
    if (!hf[key].is_number()) throw InputError(file, std::string("'") + key + "' must be a number");
    out = hf[key].get<double>();
  };
  number("layer_norm_epsilon", c.layer_norm_epsilon);
  number("embd_pdrop", c.embd_pdrop);
  number("attn_pdrop", c.attn_pdrop);
  number("resid_pdrop", c.resid_pdrop);
  if (hf.contains("activation_function")) {
    std::string name =
        hf["activation_function"].is_string() ? hf["activation_function"].get<std::string>() : "";
    bool known = false;
    for (const auto& a : kActivations)
      if (name == a.name) c.activation = a.activation, known = true;
    if (!known)
      throw InputError(
          file, "activation_function '" + name +
                    "' is not supported (gelu_new, gelu_pytorch_tanh, gelu_fast, gelu, relu)");
  }
  if (hf.contains("tie_word_embeddings") && hf["tie_word_embeddings"].is_boolean())
    c.tie_word_embeddings = hf["tie_word_embeddings"].get<bool>();
  for (const char* key : {"bos_token_id", "eos_token_id"}) {
    if (hf.contains(key) && hf[key].is_number_integer())
      (std::string(key) == "bos_token_id" ? c.bos_token_id : c.eos_token_id) =
          hf[key].get<int64_t>();
  }
  // Variants of GPT-2 attention that change its maths and that lmtune does not implement.
  if (hf.value("scale_attn_by_inverse_layer_idx", false) == true)
    throw InputError(file, "scale_attn_by_inverse_layer_idx: true is not supported");
  if (hf.value("scale_attn_weights", true) == false)
    throw InputError(file, "scale_attn_weights: false is not supported");
  return c;
}

json GPT2Config::to_hf_json() const {
  const char* activation_name = "gelu_new";
  for (const auto& a : kActivations)
    if (a.activation == activation) {
      activation_name = a.name;
      break;
    }
  return {{"model_type", "gpt2"},
          {"architectures", {"GPT2LMHeadModel"}},
          {"n_layer", n_layer},
          {"n_head", n_head},
          {"n_embd", n_embd},
          {"n_positions", n_positions},
          {"n_ctx", n_positions},
          {"vocab_size", vocab_size},
          {"n_inner", n_inner > 0 ? json(n_inner) : json(nullptr)},
          {"activation_function", activation_name},
          {"layer_norm_epsilon", layer_norm_epsilon},
          {"embd_pdrop", embd_pdrop},
          {"attn_pdrop", attn_pdrop},
          {"resid_pdrop", resid_pdrop},
          {"initializer_range", 0.02},
          {"scale_attn_weights", true},
          {"use_cache", true},
          {"tie_word_embeddings", tie_word_embeddings},
          {"bos_token_id", bos_token_id},
          {"eos_token_id", eos_token_id},
          {"torch_dtype", "float32"}};
}

std::vector<std::string> GPT2Impl::hf_names(const std::string& parameter) const {
  if (parameter.rfind("lm_head.", 0) == 0) return {parameter};
  // The original GPT-2 checkpoints store the transformer's tensors without the prefix.
  return {"transformer." + parameter, parameter};
}

torch::Tensor GPT2Impl::from_hf_layout(const std::string& parameter, torch::Tensor value) const {
  return is_conv1d_weight(parameter) ? value.t() : value;
}

bool GPT2Impl::ignorable_hf_tensor(const std::string& name) const {
  // Buffers HF keeps in some GPT-2 checkpoints that carry no learned state, and a tied head.
  if (ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias")) return true;
  return name == "lm_head.weight" && config_.tie_word_embeddings;
}

NamedTensors GPT2Impl::hf_tensors() const {
  NamedTensors tensors;
  for (const auto& item : named_parameters()) {
    if (is_adapter_parameter(item.key())) continue;  // adapters are saved apart (model/lora.h)
    torch::Tensor value = item.value().detach().to(torch::kCPU, torch::kFloat32);
    tensors.emplace_back(hf_names(item.key()).front(),
                         is_conv1d_weight(item.key()) ? value.t().contiguous() : value);
  }
  return tensors;
}

GPT2Config load_gpt2_config(const fs::path& dir) {
  return GPT2Config::from_hf_json(read_hf_config(dir), (dir / "config.json").string());
}

GPT2 load_gpt2(const fs::path& dir, torch::Device device) {
  GPT2 model(load_gpt2_config(dir));
  load_hf_weights(*model, HfWeights(dir));
  model->to(device);
  return model;
}

void save_gpt2(const GPT2& model, const fs::path& dir, const Tokenizer* tokenizer) {
  save_hf_model(*model, dir, tokenizer);
}

}  // namespace lmtune
