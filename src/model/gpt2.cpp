#include "lmtune/model/gpt2.h"

#include <cmath>
#include <fstream>
#include <set>

#include <ATen/CPUGeneratorImpl.h>

#include "lmtune/core/errors.h"
#include "lmtune/io/safetensors.h"
#include "lmtune/io/tokenizer.h"
#include "lmtune/model/activation_checkpoint.h"
#include "lmtune/model/bf16_emulation.h"

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

// HF's Conv1D layers store their weight as (in, out); torch::nn::Linear as (out, in).
bool is_conv1d_weight(const std::string& name) {
  for (const char* suffix :
       {"attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"}) {
    std::string s(suffix);
    if (name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0)
      return true;
  }
  return false;
}

// Buffers HF keeps in some GPT-2 checkpoints that carry no learned state.
bool is_ignored_hf_tensor(const std::string& name) {
  for (const char* suffix : {".attn.bias", ".attn.masked_bias"}) {
    std::string s(suffix);
    if (name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0)
      return true;
  }
  return false;
}

std::string shape_string(c10::IntArrayRef shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

torch::nn::Linear linear(int64_t in, int64_t out, bool bias = true) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
}

torch::nn::LayerNorm layer_norm(const GPT2Config& config) {
  return torch::nn::LayerNorm(
      torch::nn::LayerNormOptions({config.n_embd}).eps(config.layer_norm_epsilon));
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

CausalSelfAttentionImpl::CausalSelfAttentionImpl(const GPT2Config& config)
    : n_head_(config.n_head), attn_pdrop_(config.attn_pdrop) {
  c_attn = register_module("c_attn", linear(config.n_embd, 3 * config.n_embd));
  c_proj = register_module("c_proj", linear(config.n_embd, config.n_embd));
  resid_dropout_ = register_module("resid_dropout", torch::nn::Dropout(config.resid_pdrop));
}

torch::Tensor CausalSelfAttentionImpl::forward(const torch::Tensor& x, torch::Tensor* past_k,
                                               torch::Tensor* past_v) {
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), H = n_head_, D = C / H;
  auto qkv = autocast_linear(x, c_attn->weight, c_attn->bias).split(C, /*dim=*/2);  // 3 x (B, T, C)
  auto heads = [&](const torch::Tensor& t) { return t.view({B, T, H, D}).transpose(1, 2); };
  torch::Tensor q = heads(qkv[0]), k = heads(qkv[1]), v = heads(qkv[2]);  // (B, H, T, D)

  bool causal = true;
  c10::optional<torch::Tensor> mask;
  if (past_k) {
    if (past_k->defined()) {
      k = torch::cat({*past_k, k}, /*dim=*/2);  // (B, H, T_past + T, D)
      v = torch::cat({*past_v, v}, /*dim=*/2);
    }
    *past_k = k;
    *past_v = v;
    const int64_t past = k.size(2) - T;
    if (past > 0) {
      causal = false;
      // Query t sees every cached key and the new keys up to itself; one new token sees all.
      if (T > 1) mask = torch::ones({T, past + T}, x.options().dtype(torch::kBool)).tril(past);
    }
  }
  double dropout = is_training() ? attn_pdrop_ : 0.0;
  auto y = autocast_attention(q, k, v, mask, dropout, causal);  // (B, H, T, D)
  y = y.transpose(1, 2).contiguous().view({B, T, C});
  return resid_dropout_(autocast_linear(y, c_proj->weight, c_proj->bias));
}

MLPImpl::MLPImpl(const GPT2Config& config) : activation_(config.activation) {
  c_fc = register_module("c_fc", linear(config.n_embd, config.mlp_width()));
  c_proj = register_module("c_proj", linear(config.mlp_width(), config.n_embd));
  dropout_ = register_module("dropout", torch::nn::Dropout(config.resid_pdrop));
}

torch::Tensor MLPImpl::forward(const torch::Tensor& x) {
  auto hidden = autocast_linear(x, c_fc->weight, c_fc->bias);  // (B, T, 4C)
  switch (activation_) {
    case Activation::kGeluTanh:
      hidden = torch::gelu(hidden, "tanh");
      break;
    case Activation::kGelu:
      hidden = torch::gelu(hidden);
      break;
    case Activation::kRelu:
      hidden = torch::relu(hidden);
      break;
  }
  return dropout_(autocast_linear(hidden, c_proj->weight, c_proj->bias));
}

BlockImpl::BlockImpl(const GPT2Config& config) {
  ln_1 = register_module("ln_1", layer_norm(config));
  attn = register_module("attn", CausalSelfAttention(config));
  ln_2 = register_module("ln_2", layer_norm(config));
  mlp = register_module("mlp", MLP(config));
}

torch::Tensor BlockImpl::forward(const torch::Tensor& x, torch::Tensor* past_k,
                                 torch::Tensor* past_v) {
  auto y = x + attn(ln_1(x), past_k, past_v);
  return y + mlp(ln_2(y));
}

GPT2Impl::GPT2Impl(const GPT2Config& config) : config_(config) {
  wte = register_module("wte", torch::nn::Embedding(config.vocab_size, config.n_embd));
  wpe = register_module("wpe", torch::nn::Embedding(config.n_positions, config.n_embd));
  drop_ = register_module("drop", torch::nn::Dropout(config.embd_pdrop));
  h = register_module("h", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.n_layer; ++i) h->push_back(Block(config));
  ln_f = register_module("ln_f", layer_norm(config));
  if (!config.tie_word_embeddings) {
    lm_head = register_module("lm_head", linear(config.n_embd, config.vocab_size, /*bias=*/false));
  }
  init_weights(/*seed=*/0);
}

torch::Tensor GPT2Impl::hidden_states(const torch::Tensor& idx, KVCache* cache) {
  const int64_t T = idx.size(1);
  const int64_t past = cache ? cache->length() : 0;
  TORCH_CHECK(past + T <= config_.n_positions, "sequence of ", past + T,
              " tokens exceeds the model's n_positions (", config_.n_positions, ")");
  if (cache && cache->keys.empty()) {
    cache->keys.resize(config_.n_layer);
    cache->values.resize(config_.n_layer);
  }
  auto positions = torch::arange(past, past + T, idx.options().dtype(torch::kLong));  // (T)
  auto x = drop_(wte(idx) + wpe(positions));                                          // (B, T, C)
  const bool checkpointing =
      checkpoint_every_ > 0 && is_training() && !cache && torch::GradMode::is_enabled();
  for (int64_t i = 0; i < config_.n_layer; ++i) {
    auto block = h->ptr<BlockImpl>(i);
    if (checkpointing && i % checkpoint_every_ == 0) {
      x = checkpoint_activation([block](const torch::Tensor& in) { return block->forward(in); }, x,
                                block->parameters());
    } else {
      x = block->forward(x, cache ? &cache->keys[i] : nullptr, cache ? &cache->values[i] : nullptr);
    }
  }
  return ln_f(x);
}

torch::Tensor GPT2Impl::output_weight() const {
  return config_.tie_word_embeddings ? wte->weight : lm_head->weight;
}

torch::Tensor GPT2Impl::forward(const torch::Tensor& idx, KVCache* cache) {
  return autocast_linear(hidden_states(idx, cache), output_weight());  // (B, T, V)
}

void GPT2Impl::init_weights(uint64_t seed) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  const double residual_std = 0.02 / std::sqrt(2.0 * static_cast<double>(config_.n_layer));
  torch::NoGradGuard no_grad;
  for (auto& item : named_parameters()) {
    const std::string& name = item.key();
    torch::Tensor& p = item.value();
    bool is_layer_norm = name.find("ln_") != std::string::npos;
    bool is_bias = name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    if (is_layer_norm) {
      is_bias ? p.zero_() : p.fill_(1.0);
    } else if (is_bias) {
      p.zero_();
    } else {
      bool residual = name.find("c_proj.weight") != std::string::npos;
      p.normal_(0.0, residual ? residual_std : 0.02, generator);
    }
  }
}

torch::Tensor lm_loss(const torch::Tensor& logits, const torch::Tensor& targets) {
  return torch::nn::functional::cross_entropy(
      logits.reshape({-1, logits.size(-1)}).to(torch::kFloat32), targets.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
}

GPT2Config load_gpt2_config(const fs::path& dir) {
  fs::path file = dir / "config.json";
  if (!fs::is_directory(dir)) throw InputError(dir.string(), "model directory does not exist");
  std::ifstream in(file);
  if (!in) throw InputError(file.string(), "cannot read the model's config.json");
  json hf = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (hf.is_discarded()) throw InputError(file.string(), "is not valid JSON");
  return GPT2Config::from_hf_json(hf, file.string());
}

void load_gpt2_weights(GPT2& model, const fs::path& file) {
  SafetensorsFile weights(file);
  std::set<std::string> used;
  torch::NoGradGuard no_grad;
  for (auto& item : model->named_parameters()) {
    const std::string& name = item.key();
    const SafetensorsEntry* entry = weights.find(name);
    if (!entry) entry = weights.find("transformer." + name);
    if (!entry) throw InputError(file.string(), "missing tensor '" + name + "'");
    used.insert(entry->name);
    torch::Tensor value = weights.read(*entry).to(torch::kFloat32);
    if (is_conv1d_weight(name)) value = value.t();  // HF Conv1D (in, out) -> Linear (out, in)
    if (value.sizes() != item.value().sizes()) {
      auto expected = item.value().sizes().vec();
      if (is_conv1d_weight(name)) std::swap(expected[0], expected[1]);
      throw InputError(file.string(), "tensor '" + entry->name + "' has shape " +
                                          shape_string(weights.read(*entry).sizes()) +
                                          ", expected " + shape_string(expected));
    }
    item.value().copy_(value);
  }
  for (const auto& entry : weights.entries()) {
    bool tied_head = entry.name == "lm_head.weight" && model->config().tie_word_embeddings;
    if (used.count(entry.name) || is_ignored_hf_tensor(entry.name) || tied_head) continue;
    throw InputError(file.string(),
                     "unexpected tensor '" + entry.name + "' (not part of a GPT-2 model)");
  }
}

GPT2 load_gpt2(const fs::path& dir, torch::Device device) {
  GPT2 model(load_gpt2_config(dir));
  fs::path file = dir / "model.safetensors";
  if (!fs::exists(file)) {
    std::string hint = fs::exists(dir / "pytorch_model.bin")
                           ? "; only safetensors weights are read: convert pytorch_model.bin with "
                             "transformers (save_pretrained(safe_serialization=True))"
                           : "";
    throw InputError(file.string(), "model weights not found" + hint);
  }
  load_gpt2_weights(model, file);
  model->to(device);
  return model;
}

void save_gpt2(const GPT2& model, const fs::path& dir, const Tokenizer* tokenizer) {
  fs::create_directories(dir);
  NamedTensors tensors;
  for (const auto& item : model->named_parameters()) {
    std::string name =
        item.key().rfind("lm_head", 0) == 0 ? item.key() : "transformer." + item.key();
    torch::Tensor value = item.value().detach().to(torch::kCPU, torch::kFloat32);
    tensors.emplace_back(name, is_conv1d_weight(item.key()) ? value.t().contiguous() : value);
  }
  write_safetensors(dir / "model.safetensors", tensors, {{"format", "pt"}});
  write_file_atomically(dir / "config.json", model->config().to_hf_json().dump(2) + "\n");
  if (tokenizer) tokenizer->save(dir);
}

}  // namespace lmtune
