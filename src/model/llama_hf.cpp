// The Llama family's Hugging Face files: config.json in transformers 4.x's layout (rope_theta,
// rope_scaling, torch_dtype) and 5.x's (rope_parameters, dtype), the settings each model_type
// implies, and the tensor names (a "model." prefix except on lm_head).
#include <map>

#include "lmtune/core/errors.h"
#include "lmtune/model/llama.h"

namespace lmtune {
using nlohmann::json;

namespace {

// Typed reads of config.json keys: a wrong type is an InputError naming the file and key.
class HfConfigReader {
 public:
  HfConfigReader(const json& hf, const std::string& file) : hf_(hf), file_(file) {}

  bool has(const char* key) const { return hf_.contains(key) && !hf_[key].is_null(); }
  int64_t positive(const char* key, std::optional<int64_t> fallback = std::nullopt) const {
    if (!has(key)) {
      if (fallback) return *fallback;
      throw InputError(file_, std::string("missing required key '") + key + "'");
    }
    if (!hf_[key].is_number_integer() || hf_[key].get<int64_t>() <= 0)
      throw InputError(file_, std::string("'") + key + "' must be a positive integer");
    return hf_[key].get<int64_t>();
  }
  double number(const json& node, const char* key, double fallback) const {
    if (!node.contains(key) || node[key].is_null()) return fallback;
    if (!node[key].is_number())
      throw InputError(file_, std::string("'") + key + "' must be a number");
    return node[key].get<double>();
  }
  double number(const char* key, double fallback) const { return number(hf_, key, fallback); }
  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!hf_[key].is_boolean())
      throw InputError(file_, std::string("'") + key + "' must be true or false");
    return hf_[key].get<bool>();
  }
  const std::string& file() const { return file_; }

 private:
  const json& hf_;
  const std::string& file_;
};

// The rotary settings: 5.x's rope_parameters, else 4.x's rope_theta and rope_scaling.
void read_rope(const json& hf, const HfConfigReader& read, LlamaConfig& c) {
  const bool v5 = hf.contains("rope_parameters") && hf["rope_parameters"].is_object();
  const char* key = v5 ? "rope_parameters" : "rope_scaling";
  const json none = json::object();
  const json& rope =
      v5 ? hf["rope_parameters"]
         : (hf.contains("rope_scaling") && hf["rope_scaling"].is_object() ? hf["rope_scaling"]
                                                                          : none);
  c.rope_theta = read.number(v5 ? rope : hf, "rope_theta", 10000.0);
  std::string type = "default";
  for (const char* type_key : {"type", "rope_type"})  // rope_type wins where both are set
    if (rope.contains(type_key) && rope[type_key].is_string()) type = rope[type_key];
  if (read.number(rope, "partial_rotary_factor", 1.0) != 1.0)
    throw InputError(read.file(), std::string(key) +
                                      ".partial_rotary_factor: only full rotation (1.0) is "
                                      "supported");
  if (type == "default") {
    c.rope_type = RopeType::kDefault;
  } else if (type == "linear") {
    c.rope_type = RopeType::kLinear;
    c.rope_factor = read.number(rope, "factor", 1.0);
  } else if (type == "llama3") {
    c.rope_type = RopeType::kLlama3;
    c.rope_factor = read.number(rope, "factor", 8.0);
    c.low_freq_factor = read.number(rope, "low_freq_factor", 1.0);
    c.high_freq_factor = read.number(rope, "high_freq_factor", 4.0);
    c.original_max_position_embeddings =
        static_cast<int64_t>(read.number(rope, "original_max_position_embeddings", 8192.0));
  } else {
    throw InputError(read.file(), std::string(key) + ".rope_type: '" + type +
                                      "' is not supported (default, linear, llama3)");
  }
}

std::vector<int64_t> token_ids(const json& hf, const char* key, const std::string& file) {
  if (!hf.contains(key) || hf[key].is_null()) return {};
  const json& value = hf[key];
  if (value.is_number_integer()) return {value.get<int64_t>()};
  if (value.is_array()) {
    std::vector<int64_t> ids;
    for (const auto& id : value) {
      if (!id.is_number_integer())
        throw InputError(file, std::string("'") + key + "' must hold integer token ids");
      ids.push_back(id.get<int64_t>());
    }
    return ids;
  }
  throw InputError(file, std::string("'") + key + "' must be a token id or a list of them");
}

// The attention window in effect, or 0: Mistral uses sliding_window whenever it is set; Qwen2 and
// Qwen3 only with use_sliding_window.
int64_t window_in_effect(const json& hf, const HfConfigReader& read, const std::string& type) {
  // transformers' MistralConfig defaults the window to 4096 when config.json does not set it;
  // null means none.
  if (type == "mistral" && !hf.contains("sliding_window")) return 4096;
  if (!read.has("sliding_window")) return 0;
  const bool used = type == "mistral" || read.boolean("use_sliding_window", false);
  return used ? read.positive("sliding_window") : 0;
}

}  // namespace

LlamaConfig LlamaConfig::from_hf_json(const json& hf, const std::string& file) {
  if (!hf.is_object())
    throw InputError(file, "expected a JSON object (a Hugging Face config.json)");
  HfConfigReader read(hf, file);
  LlamaConfig c;
  c.model_type = hf.value("model_type", std::string("llama"));
  if (!is_llama_family(c.model_type))
    throw InputError(file, "model_type '" + c.model_type + "' is not of the Llama family");
  c.vocab_size = read.positive("vocab_size");
  c.hidden_size = read.positive("hidden_size");
  c.intermediate_size = read.positive("intermediate_size");
  c.num_hidden_layers = read.positive("num_hidden_layers");
  c.num_attention_heads = read.positive("num_attention_heads");
  c.num_key_value_heads = read.positive("num_key_value_heads", c.num_attention_heads);
  c.head_dim = read.positive("head_dim", c.hidden_size / c.num_attention_heads);
  c.max_position_embeddings = read.positive("max_position_embeddings");
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    throw InputError(file, "num_attention_heads (" + std::to_string(c.num_attention_heads) +
                               ") is not a multiple of num_key_value_heads (" +
                               std::to_string(c.num_key_value_heads) + ")");
  if (c.head_dim % 2 != 0) throw InputError(file, "head_dim must be even for rotary embeddings");
  c.rms_norm_eps = read.number("rms_norm_eps", 1e-6);
  c.attention_dropout = read.number("attention_dropout", 0.0);
  c.initializer_range = read.number("initializer_range", 0.02);
  const std::string act = hf.value("hidden_act", std::string("silu"));
  if (act != "silu") throw InputError(file, "hidden_act '" + act + "' is not supported (silu)");
  read_rope(hf, read, c);
  const bool attention_bias = read.boolean("attention_bias", false);
  c.qkv_bias = c.model_type == "qwen2" || attention_bias;
  c.o_bias = c.model_type != "qwen2" && attention_bias;
  c.mlp_bias = read.boolean("mlp_bias", false);
  c.qk_norm = c.model_type == "qwen3";
  c.tie_word_embeddings = read.boolean("tie_word_embeddings", false);
  c.sliding_window = window_in_effect(hf, read, c.model_type);
  if (auto bos = token_ids(hf, "bos_token_id", file); !bos.empty()) c.bos_token_id = bos.front();
  c.eos_token_ids = token_ids(hf, "eos_token_id", file);
  c.source = hf;
  return c;
}

json LlamaConfig::to_hf_json() const {
  static const std::map<std::string, const char*> kArchitectures = {
      {"llama", "LlamaForCausalLM"},
      {"mistral", "MistralForCausalLM"},
      {"qwen2", "Qwen2ForCausalLM"},
      {"qwen3", "Qwen3ForCausalLM"}};
  json hf = source.is_object() ? source : json::object();
  hf["model_type"] = model_type;
  if (!hf.contains("architectures")) hf["architectures"] = {kArchitectures.at(model_type)};
  hf["vocab_size"] = vocab_size;
  hf["hidden_size"] = hidden_size;
  hf["intermediate_size"] = intermediate_size;
  hf["num_hidden_layers"] = num_hidden_layers;
  hf["num_attention_heads"] = num_attention_heads;
  hf["num_key_value_heads"] = num_key_value_heads;
  hf["head_dim"] = head_dim;
  hf["max_position_embeddings"] = max_position_embeddings;
  hf["rms_norm_eps"] = rms_norm_eps;
  hf["hidden_act"] = "silu";
  hf["tie_word_embeddings"] = tie_word_embeddings;
  if (!hf.contains("rope_parameters") && !hf.contains("rope_theta")) {
    static const char* kRopeNames[] = {"default", "linear", "llama3"};
    json rope = {{"rope_type", kRopeNames[static_cast<int>(rope_type)]},
                 {"rope_theta", rope_theta}};
    if (rope_type != RopeType::kDefault) rope["factor"] = rope_factor;
    if (rope_type == RopeType::kLlama3) {
      rope["low_freq_factor"] = low_freq_factor;
      rope["high_freq_factor"] = high_freq_factor;
      rope["original_max_position_embeddings"] = original_max_position_embeddings;
    }
    hf["rope_parameters"] = rope;
  }
  if (bos_token_id) hf["bos_token_id"] = *bos_token_id;
  if (!eos_token_ids.empty())
    hf["eos_token_id"] = eos_token_ids.size() == 1 ? json(eos_token_ids[0]) : json(eos_token_ids);
  // lmtune writes fp32 weights, under the key the source used.
  hf[hf.contains("torch_dtype") ? "torch_dtype" : "dtype"] = "float32";
  return hf;
}

std::vector<std::string> LlamaImpl::hf_names(const std::string& parameter) const {
  if (parameter.rfind("lm_head.", 0) == 0) return {parameter};
  return {"model." + parameter};
}

bool LlamaImpl::ignorable_hf_tensor(const std::string& name) const {
  const std::string inv_freq = "rotary_emb.inv_freq";  // a buffer in older checkpoints
  if (name.size() >= inv_freq.size() &&
      name.compare(name.size() - inv_freq.size(), inv_freq.size(), inv_freq) == 0)
    return true;
  return name == "lm_head.weight" && config_.tie_word_embeddings;
}

NamedTensors LlamaImpl::hf_tensors() const {
  NamedTensors tensors;
  for (const auto& item : named_parameters()) {
    if (is_adapter_parameter(item.key())) continue;  // adapters are saved apart (model/lora.h)
    tensors.emplace_back(hf_names(item.key()).front(),
                         item.value().detach().to(torch::kCPU, torch::kFloat32));
  }
  return tensors;
}

}  // namespace lmtune
