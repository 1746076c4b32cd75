#include "lmtune/model/gguf_export.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <optional>
#include <vector>

#include <nlohmann/json.hpp>

#include "lmtune/core/errors.h"
#include "lmtune/core/text.h"
#include "lmtune/io/gguf_writer.h"
#include "lmtune/io/json_file.h"
#include "lmtune/io/tokenizer_vocabulary.h"
#include "lmtune/model/causal_lm.h"
#include "lmtune/model/gpt2.h"
#include "lmtune/model/llama.h"
#include "lmtune/model/lora.h"

namespace lmtune {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// llama.cpp's token types (llama_token_type), as tokenizer.ggml.token_type stores them.
enum GgufTokenType : int32_t {
  kTokenNormal = 1,
  kTokenUnknown = 2,
  kTokenControl = 3,
  kTokenUserDefined = 4,
  kTokenUnused = 5,
  kTokenByte = 6,
};

// The ggml quantization version the converter writes (GGML_QNT_VERSION).
constexpr uint32_t kGgmlQuantizationVersion = 2;

struct FileTypeInfo {
  GgufFileType type;
  const char* name;      // --dtype
  uint32_t llama_ftype;  // general.file_type: llama.cpp's llama_ftype
  GgmlType tensor_type;  // of the weights it converts
};
constexpr FileTypeInfo kFileTypes[] = {
    {GgufFileType::kF32, "f32", 0, GgmlType::kF32},
    {GgufFileType::kF16, "f16", 1, GgmlType::kF16},
    {GgufFileType::kBF16, "bf16", 32, GgmlType::kBF16},
    {GgufFileType::kQ8_0, "q8_0", 7, GgmlType::kQ8_0},
};

const FileTypeInfo& file_type_info(GgufFileType type) {
  for (const auto& info : kFileTypes)
    if (info.type == type) return info;
  throw std::logic_error("unknown GGUF file type");
}

bool begins_with(const std::string& text, const std::string& prefix) {
  return text.compare(0, prefix.size(), prefix) == 0;
}

// ---------------------------------------------------------------------------------------------
// Architectures and tensor names

// How llama.cpp names a model_type and runs it.
struct GgufArchitecture {
  std::string name;         // general.architecture and the prefix of its keys
  bool permute_qk = false;  // llama.cpp's llama architecture rotates adjacent pairs (see below)
};

GgufArchitecture architecture_of(const std::string& model_type, const std::string& settings) {
  if (model_type == "gpt2") return {"gpt2"};
  // The converter writes Mistral as the llama architecture (its sliding window unwritten).
  if (model_type == "llama" || model_type == "mistral") return {"llama", /*permute_qk=*/true};
  if (model_type == "qwen2" || model_type == "qwen3") return {model_type};
  throw InputError(settings, "model_type '" + model_type +
                                 "' has no GGUF export (gpt2, llama, mistral, qwen2, qwen3)");
}

// A module's HF name -> llama.cpp's tensor name without the ".weight" / ".bias" suffix.
struct TensorNameMap {
  const char* hf;
  const char* gguf;
};

constexpr TensorNameMap kGpt2Globals[] = {{"transformer.wte", "token_embd"},
                                          {"transformer.wpe", "position_embd"},
                                          {"transformer.ln_f", "output_norm"},
                                          {"lm_head", "output"}};
constexpr TensorNameMap kGpt2Blocks[] = {
    {"ln_1", "attn_norm"}, {"attn.c_attn", "attn_qkv"}, {"attn.c_proj", "attn_output"},
    {"ln_2", "ffn_norm"},  {"mlp.c_fc", "ffn_up"},      {"mlp.c_proj", "ffn_down"}};
constexpr TensorNameMap kLlamaGlobals[] = {
    {"model.embed_tokens", "token_embd"}, {"model.norm", "output_norm"}, {"lm_head", "output"}};
constexpr TensorNameMap kLlamaBlocks[] = {
    {"input_layernorm", "attn_norm"},    {"self_attn.q_proj", "attn_q"},
    {"self_attn.k_proj", "attn_k"},      {"self_attn.v_proj", "attn_v"},
    {"self_attn.o_proj", "attn_output"}, {"self_attn.q_norm", "attn_q_norm"},
    {"self_attn.k_norm", "attn_k_norm"}, {"post_attention_layernorm", "ffn_norm"},
    {"mlp.gate_proj", "ffn_gate"},       {"mlp.up_proj", "ffn_up"},
    {"mlp.down_proj", "ffn_down"}};

template <std::size_t N>
const char* find_gguf_name(const TensorNameMap (&table)[N], const std::string& hf) {
  for (const auto& entry : table)
    if (hf == entry.hf) return entry.gguf;
  return nullptr;
}

// "transformer.h.3.attn.c_attn.weight" -> "blk.3.attn_qkv.weight".
std::string gguf_tensor_name(const std::string& hf_name, bool gpt2) {
  const auto dot = hf_name.rfind('.');
  const std::string module = hf_name.substr(0, dot);
  const std::string suffix = dot == std::string::npos ? "" : hf_name.substr(dot);  // ".weight"
  const std::string blocks = gpt2 ? "transformer.h." : "model.layers.";
  if (begins_with(module, blocks)) {
    const std::string rest = module.substr(blocks.size());  // "3.attn.c_attn"
    const auto index_end = rest.find('.');
    const std::string index = rest.substr(0, index_end);
    const char* name = index_end == std::string::npos
                           ? nullptr
                           : (gpt2 ? find_gguf_name(kGpt2Blocks, rest.substr(index_end + 1))
                                   : find_gguf_name(kLlamaBlocks, rest.substr(index_end + 1)));
    if (name && !index.empty() && index.find_first_not_of("0123456789") == std::string::npos)
      return "blk." + index + "." + name + suffix;
  } else if (const char* name = gpt2 ? find_gguf_name(kGpt2Globals, module)
                                     : find_gguf_name(kLlamaGlobals, module)) {
    return name + suffix;
  }
  throw Error("GGUF export: the tensor '" + hf_name + "' has no llama.cpp name");
}

// llama.cpp's llama architecture rotates adjacent pairs of each head's channels (x[2i], x[2i+1]);
// HF's Llama rotates the two halves (x[i], x[i + D/2]). Interleaving the halves of each head's
// rows of q and k makes the one compute what the other does: the row of head h, half s, index i
// moves to h's row 2i + s. The converter does the same (LlamaModel.permute).
torch::Tensor permute_for_llama_rope(const torch::Tensor& w, int64_t heads) {
  std::vector<int64_t> split = {heads, 2, w.size(0) / heads / 2};
  for (int64_t d = 1; d < w.dim(); ++d) split.push_back(w.size(d));
  return w.reshape(split).transpose(1, 2).reshape(w.sizes());  // (H * D, ...) -> same shape
}

// One tensor of the file, its values made on demand so that only one is held at a time.
struct ExportTensor {
  std::string name;                       // llama.cpp's: "blk.0.attn_q.weight"
  std::vector<int64_t> shape;             // outermost first, as torch holds it
  std::function<torch::Tensor()> values;  // fp32, in llama.cpp's layout
};

// The model's HF tensors under llama.cpp's names and layouts.
std::vector<ExportTensor> export_tensors(const CausalLMImpl& model, const GgufArchitecture& arch,
                                         int64_t heads, int64_t kv_heads) {
  const bool gpt2 = arch.name == "gpt2";
  std::vector<ExportTensor> tensors;
  for (auto& [hf_name, value] : model.hf_tensors()) {
    ExportTensor tensor{gguf_tensor_name(hf_name, gpt2), value.sizes().vec(), nullptr};
    torch::Tensor source = value;
    const std::string& name = tensor.name;
    if (gpt2 && (ends_with(name, ".attn_qkv.weight") || ends_with(name, ".attn_output.weight") ||
                 ends_with(name, ".ffn_up.weight") || ends_with(name, ".ffn_down.weight"))) {
      // HF stores GPT-2's Conv1D weights as (in, out); llama.cpp wants (out, in) as Linear's.
      tensor.shape = {source.size(1), source.size(0)};
      tensor.values = [source] { return source.t(); };
    } else if (arch.permute_qk && (name.find(".attn_q.") != std::string::npos ||
                                   name.find(".attn_k.") != std::string::npos)) {
      const int64_t n = name.find(".attn_q.") != std::string::npos ? heads : kv_heads;
      tensor.values = [source, n] { return permute_for_llama_rope(source, n); };
    } else {
      tensor.values = [source] { return source; };
    }
    tensors.push_back(std::move(tensor));
  }
  return tensors;
}

// rope_type llama3's scaling as llama.cpp reads it: rope_freqs.weight (D / 2), the divisor of
// each rotary frequency. 1 for short wavelengths, `factor` for long ones and a smooth blend
// between, as transformers' _compute_llama3_parameters scales the inverse frequencies. The
// original context is rope_parameters' original_max_position_embeddings, as transformers reads
// it (the converter reads a top-level key and falls back to 8192, the value of every Llama 3).
ExportTensor llama3_rope_factors(const LlamaConfig& c) {
  std::vector<float> factors;
  const double old_context = static_cast<double>(c.original_max_position_embeddings);
  const double low_wavelen = old_context / c.low_freq_factor;
  const double high_wavelen = old_context / c.high_freq_factor;
  for (int64_t i = 0; i < c.head_dim; i += 2) {
    const double freq = 1.0 / std::pow(c.rope_theta, static_cast<double>(i) / c.head_dim);
    const double wavelen = 2 * M_PI / freq;
    double factor = 1.0;
    if (wavelen > low_wavelen) {
      factor = c.rope_factor;
    } else if (wavelen >= high_wavelen) {
      const double smooth =
          (old_context / wavelen - c.low_freq_factor) / (c.high_freq_factor - c.low_freq_factor);
      factor = 1.0 / ((1 - smooth) / c.rope_factor + smooth);
    }
    factors.push_back(static_cast<float>(factor));
  }
  torch::Tensor values = torch::tensor(factors, torch::kFloat32);
  return {"rope_freqs.weight", {values.size(0)}, [values] { return values; }};
}

// The type a tensor is stored as: F32 for what the converter keeps F32 (1-D tensors, norms,
// biases, position embeddings), else the file type's, or F16 where a row is not whole Q8_0 blocks.
GgmlType storage_type(const ExportTensor& tensor, GgmlType wanted) {
  const std::string& name = tensor.name;
  if (tensor.shape.size() <= 1 || ends_with(name, "_norm.weight") || !ends_with(name, ".weight") ||
      name == "position_embd.weight")
    return GgmlType::kF32;
  if (tensor.shape.back() % ggml_block_size(wanted) != 0) {
    spdlog::warn(
        "{}: rows of {} values are not whole {} blocks; storing it as F16, as "
        "convert_hf_to_gguf.py does",
        name, tensor.shape.back(), ggml_type_name(wanted));
    return GgmlType::kF16;
  }
  return wanted;
}

// ---------------------------------------------------------------------------------------------
// Hyperparameters

std::string arch_key(const GgufArchitecture& arch, const std::string& key) {
  return arch.name + "." + key;
}

uint32_t as_u32(int64_t value) {
  return static_cast<uint32_t>(value);
}

void add_gpt2_hparams(GgufWriter& gguf, const GgufArchitecture& arch, const GPT2Config& c,
                      const std::string& settings) {
  if (c.activation == Activation::kRelu)
    throw InputError(settings, "activation_function 'relu': llama.cpp's gpt2 runs GELU only");
  // llama.cpp sizes position_embd (n_embd, n_ctx_train) by context_length: the wpe rows.
  gguf.add_uint32(arch_key(arch, "context_length"), as_u32(c.n_positions));
  gguf.add_uint32(arch_key(arch, "embedding_length"), as_u32(c.n_embd));
  gguf.add_uint32(arch_key(arch, "block_count"), as_u32(c.n_layer));
  gguf.add_uint32(arch_key(arch, "feed_forward_length"), as_u32(c.mlp_width()));
  gguf.add_uint32(arch_key(arch, "attention.head_count"), as_u32(c.n_head));
  gguf.add_float32(arch_key(arch, "attention.layer_norm_epsilon"),
                   static_cast<float>(c.layer_norm_epsilon));
  gguf.add_uint32(arch_key(arch, "vocab_size"), as_u32(c.vocab_size));
}

// What llama.cpp's qwen2 and qwen3 cannot load: the biases they have no tensors for, llama3
// rope factors outside the llama architecture.
void check_llama_family_settings(const GgufArchitecture& arch, const LlamaConfig& c,
                                 const std::string& settings) {
  auto refuse = [&](const std::string& what) {
    throw InputError(settings, what + ": llama.cpp's " + arch.name + " architecture has no " +
                                   "such tensors, so the model cannot be exported to GGUF");
  };
  if (arch.name == "qwen2" && c.mlp_bias) refuse("mlp_bias");
  if (arch.name == "qwen3" && (c.qkv_bias || c.o_bias)) refuse("attention_bias");
  if (arch.name == "qwen3" && c.mlp_bias) refuse("mlp_bias");
  if (c.rope_type == RopeType::kLlama3 && arch.name != "llama")
    throw InputError(settings,
                     "rope_type llama3: llama.cpp reads rope factors (rope_freqs) for "
                     "the llama architecture only, not " +
                         arch.name);
  if (c.sliding_window > 0 && c.sliding_window < c.max_position_embeddings)
    spdlog::warn(
        "{}: sliding_window {} is not written (convert_hf_to_gguf.py does not write it "
        "for {}): llama.cpp attends to the whole context, which matches the model up to "
        "{} tokens",
        settings, c.sliding_window, c.model_type, c.sliding_window);
}

void add_llama_family_hparams(GgufWriter& gguf, const GgufArchitecture& arch,
                              const LlamaConfig& c) {
  gguf.add_uint32(arch_key(arch, "context_length"), as_u32(c.max_position_embeddings));
  gguf.add_uint32(arch_key(arch, "embedding_length"), as_u32(c.hidden_size));
  gguf.add_uint32(arch_key(arch, "block_count"), as_u32(c.num_hidden_layers));
  gguf.add_uint32(arch_key(arch, "feed_forward_length"), as_u32(c.intermediate_size));
  gguf.add_uint32(arch_key(arch, "attention.head_count"), as_u32(c.num_attention_heads));
  gguf.add_uint32(arch_key(arch, "attention.head_count_kv"), as_u32(c.num_key_value_heads));
  // Explicit, as the converter writes them whenever the config has head_dim (Qwen3's is not
  // hidden_size / heads).
  gguf.add_uint32(arch_key(arch, "attention.key_length"), as_u32(c.head_dim));
  gguf.add_uint32(arch_key(arch, "attention.value_length"), as_u32(c.head_dim));
  gguf.add_float32(arch_key(arch, "attention.layer_norm_rms_epsilon"),
                   static_cast<float>(c.rms_norm_eps));
  gguf.add_float32(arch_key(arch, "rope.freq_base"), static_cast<float>(c.rope_theta));
  gguf.add_uint32(arch_key(arch, "rope.dimension_count"), as_u32(c.head_dim));
  if (c.rope_type == RopeType::kLinear) {
    gguf.add_string(arch_key(arch, "rope.scaling.type"), "linear");
    gguf.add_float32(arch_key(arch, "rope.scaling.factor"), static_cast<float>(c.rope_factor));
  }
  gguf.add_uint32(arch_key(arch, "vocab_size"), as_u32(c.vocab_size));
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

// The converter's guess at added tokens that should be control tokens though not marked special
// (does_token_look_special): <|...|>, <｜...｜>, <unused...>, <pad>, <mask>, <2mass>, [@BOS@].
bool looks_special(const std::string& text) {
  auto wrapped = [&](const std::string& open, const std::string& close) {
    return text.size() >= open.size() + close.size() && begins_with(text, open) &&
           ends_with(text, close);
  };
  return text == "<pad>" || text == "<mask>" || text == "<2mass>" || text == "[@BOS@]" ||
         wrapped("<|", "|>") || wrapped("<\xEF\xBD\x9C", "\xEF\xBD\x9C>") ||
         wrapped("<unused", ">");
}

// `text` with every `from` replaced by `to`.
std::string replace_every(const std::string& text, const std::string& from, const std::string& to) {
  std::string out;
  for (std::size_t at = 0; at < text.size();) {
    if (text.compare(at, from.size(), from) == 0) {
      out += to;
      at += from.size();
    } else {
      out += text[at++];
    }
  }
  return out;
}

// A user-defined token's "▁" (U+2581) written as the space it stands for.
std::string with_spaces(const std::string& text) {
  return replace_every(text, "\xE2\x96\x81", " ");
}

struct VocabularyArrays {
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  std::vector<float> scores;  // SentencePiece only
};

// The converter's pre-tokenizer names for the pipelines lmtune recognises (llama.cpp's regexes
// for them split text as the tokenizer.json's pre-tokenizers do).
const char* pre_tokenizer_name(const TokenizerVocabulary& vocabulary) {
  switch (vocabulary.pre_tokenizer) {
    case PreTokenizerShape::kGpt2:
      return "gpt-2";
    case PreTokenizerShape::kDigitsGpt2:
      return "smollm";
    case PreTokenizerShape::kLlama3:
      return "llama-bpe";
    case PreTokenizerShape::kQwen2:
      return "qwen2";
    case PreTokenizerShape::kOther:
      break;
  }
  spdlog::warn(
      "{}: the pre-tokenizer {} is none llama.cpp names; writing tokenizer.ggml.pre "
      "'default', so llama.cpp may split text differently from transformers",
      vocabulary.file.string(), vocabulary.pre_tokenizer_summary);
  return "default";
}

// Byte-level BPE as the converter lists it (get_vocab_base): every id below vocab_size, a gap as
// "[PAD<id>]" (unused), added tokens as control (special, or looking it) or user-defined.
VocabularyArrays bpe_arrays(const TokenizerVocabulary& vocabulary, int64_t vocab_size,
                            const std::string& settings) {
  if (static_cast<int64_t>(vocabulary.tokens.size()) > vocab_size)
    throw InputError(vocabulary.file.string(),
                     "holds token id " + std::to_string(vocabulary.tokens.size() - 1) +
                         ", past the vocab_size " + std::to_string(vocab_size) + " of " + settings);
  VocabularyArrays arrays;
  for (int64_t id = 0; id < vocab_size; ++id) {
    const VocabularyToken* token =
        id < static_cast<int64_t>(vocabulary.tokens.size()) ? &vocabulary.tokens[id] : nullptr;
    if (!token || !token->defined) {
      arrays.tokens.push_back("[PAD" + std::to_string(id) + "]");
      arrays.types.push_back(kTokenUnused);
    } else if (!token->added) {
      arrays.tokens.push_back(token->text);
      arrays.types.push_back(kTokenNormal);
    } else if (token->special || looks_special(token->text)) {
      arrays.tokens.push_back(token->text);
      arrays.types.push_back(kTokenControl);
    } else {
      arrays.tokens.push_back(with_spaces(token->text));
      arrays.types.push_back(kTokenUserDefined);
    }
  }
  return arrays;
}

int32_t token_type_of(PieceType type) {
  switch (type) {
    case PieceType::kUnknown:
      return kTokenUnknown;
    case PieceType::kControl:
      return kTokenControl;
    case PieceType::kUnused:
      return kTokenUnused;
    case PieceType::kByte:
      return kTokenByte;
    case PieceType::kNormal:
      break;
  }
  return kTokenNormal;
}

// SentencePiece as the converter lists it (_create_vocab_sentencepiece): pieces with their scores
// and types, ids below vocab_size without a piece as "[PAD<id>]" (unused, score -10000), and
// tokenizer_config.json's added tokens as control or user-defined with score -1000.
VocabularyArrays sentencepiece_arrays(const TokenizerVocabulary& vocabulary, int64_t vocab_size) {
  VocabularyArrays arrays;
  if (static_cast<int64_t>(vocabulary.tokens.size()) > vocab_size)
    spdlog::warn("{}: ids from {} on are past the model's vocab_size and are not exported",
                 vocabulary.file.string(), vocab_size);
  for (int64_t id = 0; id < vocab_size; ++id) {
    const VocabularyToken* token =
        id < static_cast<int64_t>(vocabulary.tokens.size()) ? &vocabulary.tokens[id] : nullptr;
    if (!token || !token->defined) {
      arrays.tokens.push_back("[PAD" + std::to_string(id) + "]");
      arrays.scores.push_back(-10000.0f);
      arrays.types.push_back(kTokenUnused);
    } else if (token->added) {
      const bool control = token->special || looks_special(token->text);
      arrays.tokens.push_back(control ? token->text : with_spaces(token->text));
      arrays.scores.push_back(-1000.0f);
      arrays.types.push_back(control ? kTokenControl : kTokenUserDefined);
    } else {
      arrays.tokens.push_back(token->text);
      arrays.scores.push_back(token->score);
      arrays.types.push_back(token_type_of(token->type));
    }
  }
  return arrays;
}

// The special tokens as the converter's SpecialVocab finds them: ids by type ("bos", "eos",
// ...), whether the tokenizer adds BOS/EOS/SEP, and the chat template.
struct SpecialTokens {
  std::vector<std::pair<std::string, int64_t>> ids;  // in the order found; the first of a type wins
  std::map<std::string, bool> add;
  std::optional<std::string> chat_template;
};

// The text of a special token as tokenizer_config.json writes it: "<s>" or {"content": "<s>"}.
std::optional<std::string> special_text(const json& config, const std::string& key) {
  auto it = config.find(key);
  if (it == config.end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    return (*it)["content"].get<std::string>();
  return std::nullopt;
}

std::optional<std::string> special_token_of_step(const json& step) {
  auto it = step.find("SpecialToken");
  if (it == step.end() || !it->is_object() || !it->contains("id") || !(*it)["id"].is_string())
    return std::nullopt;
  return (*it)["id"].get<std::string>();
}

std::optional<std::string> sequence_of_step(const json& step) {
  auto it = step.find("Sequence");
  if (it == step.end() || !it->is_object() || !it->contains("id") || !(*it)["id"].is_string())
    return std::nullopt;
  return (*it)["id"].get<std::string>();
}

// The special tokens as the converter reads them while it goes: tokenizer_config.json's texts by
// type ("bos" -> "<s>"), edited as the post-processor implies.
using SpecialTexts = std::map<std::string, std::string>;

// A TemplateProcessing's single-text template: the special token it starts with is BOS when it is
// the configured BOS (or CLS); the one it ends with becomes EOS, a different configured EOS
// becoming EOT. Returns the first and last special tokens, "" for none.
std::pair<std::string, std::string> read_single_template(const json& single, bool have_config,
                                                         SpecialTexts& text,
                                                         std::vector<std::string>& types,
                                                         SpecialTokens& special) {
  std::string first, last;
  if (!single.is_array() || single.size() < 2) return {first, last};
  first = special_token_of_step(single.front()).value_or("");
  if (!first.empty()) {
    if (!have_config) text["bos"] = first;
    special.add["bos"] = first == text["bos"] || first == text["cls"];
  }
  last = special_token_of_step(single.back()).value_or("");
  if (!last.empty()) {
    if (!have_config) {
      text["eos"] = last;
    } else if (last != text["eos"]) {
      if (std::find(types.begin(), types.end(), "eot") == types.end()) types.push_back("eot");
      text["eot"] = text["eos"];
      text["eos"] = last;
    }
    special.add["eos"] = true;
  }
  return {first, last};
}

// The pair template, once stripped of the single template's first and last tokens: "A [x] [y] B"
// adds SEP when x (with no last token) or y is SEP or EOS.
void read_pair_template(json pair, const std::string& first, const std::string& last,
                        bool have_config, SpecialTexts& text, SpecialTokens& special) {
  if (!pair.is_array() || pair.empty()) return;
  if (!first.empty() && special_token_of_step(pair.front()) == first) pair.erase(pair.begin());
  if (!last.empty() && !pair.empty() && special_token_of_step(pair.back()) == last)
    pair.erase(pair.end() - 1);
  if (pair.size() < 3 || sequence_of_step(pair.front()) != "A" ||
      sequence_of_step(pair.back()) != "B")
    return;
  auto separates = [&](const json& step) {
    auto token = special_token_of_step(step);
    return token && (*token == text["sep"] || *token == text["eos"]);
  };
  bool add_sep = separates(pair[1]) && last.empty();
  if (pair.size() == 4 && separates(pair[2])) add_sep = true;
  special.add["sep"] = add_sep;
  if (add_sep && text["sep"].empty() && have_config) text["sep"] = text["eos"];
}

// tokenizer.json's post-processor, parsed as the converter's SpecialVocab does: which special
// tokens the tokenizer adds around a text (RobertaProcessing adds BOS, EOS and SEP).
void read_post_processor_flags(const json& tokenizer, bool have_config, SpecialTexts& text,
                               std::vector<std::string>& types, SpecialTokens& special) {
  const json post = tokenizer.value("post_processor", json());
  if (!post.is_object()) return;
  const json processors = post.contains("processors") ? post["processors"] : json::array({post});
  for (const auto& processor : processors) {
    const std::string type = processor.value("type", "");
    if (type == "RobertaProcessing") {
      special.add["bos"] = special.add["eos"] = special.add["sep"] = true;
      auto named = [&](const char* key, const std::string& fallback) {
        auto it = processor.find(key);
        return it != processor.end() && it->is_array() && !it->empty() && (*it)[0].is_string()
                   ? (*it)[0].get<std::string>()
                   : fallback;
      };
      if (text["cls"].empty() && have_config) text["cls"] = named("cls", text["bos"]);
      if (text["sep"].empty() && have_config) text["sep"] = named("sep", text["eos"]);
    } else if (type == "TemplateProcessing") {
      const auto [first, last] = read_single_template(processor.value("single", json::array()),
                                                      have_config, text, types, special);
      read_pair_template(processor.value("pair", json::array()), first, last, have_config, text,
                         special);
    }
  }
}

SpecialTokens read_special_tokens(const fs::path& dir, const json& hf_config,
                                  std::optional<int64_t> vocab_limit) {
  SpecialTokens special;
  std::vector<std::string> types = {"bos", "eos", "unk", "sep", "pad", "cls", "mask"};
  auto set_id = [&](const std::string& type, const json& id) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0) return;
    if (vocab_limit && id.get<int64_t>() >= *vocab_limit) return;
    for (const auto& [known, _] : special.ids)
      if (known == type) return;
    special.ids.emplace_back(type, id.get<int64_t>());
  };
  const fs::path tokenizer_file = dir / "tokenizer.json";
  const fs::path config_file = dir / "tokenizer_config.json";
  const json tokenizer =
      fs::exists(tokenizer_file) ? read_json_file(tokenizer_file, "tokenizer.json") : json();
  json config = fs::exists(config_file) ? read_json_file(config_file, "tokenizer_config.json", true)
                                        : json::object();
  const bool have_config = !config.empty();
  SpecialTexts text;
  for (const auto& type : types)
    if (auto value = special_text(config, type + "_token")) text[type] = *value;
  if (tokenizer.is_object()) {
    if (text["bos"].empty() && !text["cls"].empty() && have_config) text["bos"] = text["cls"];
    if (text["eos"].empty() && !text["sep"].empty() && have_config) text["eos"] = text["sep"];
    read_post_processor_flags(tokenizer, have_config, text, types, special);
  }
  if (have_config) {
    const json added =
        tokenizer.is_object() ? tokenizer.value("added_tokens", json::array()) : json::array();
    for (const auto& type : types) {
      auto flag = config.find("add_" + type + "_token");
      if (flag != config.end() && flag->is_boolean()) special.add[type] = flag->get<bool>();
      if (text[type].empty()) continue;
      for (const auto& entry : added) {
        if (entry.value("content", "") == text[type]) {
          set_id(type, entry.value("id", json()));
          break;
        }
      }
    }
    if (auto it = config.find("chat_template"); it != config.end() && it->is_string())
      special.chat_template = it->get<std::string>();
  }
  if (!special.chat_template && fs::exists(dir / "chat_template.jinja")) {
    std::ifstream in(dir / "chat_template.jinja");
    special.chat_template = std::string(std::istreambuf_iterator<char>(in), {});
  }
  for (const auto& type : types) set_id(type, hf_config.value(type + "_token_id", json()));
  return special;
}

void add_special_tokens(GgufWriter& gguf, const SpecialTokens& special) {
  static const std::map<std::string, std::string> kIdKeys = {
      {"bos", "tokenizer.ggml.bos_token_id"},     {"eos", "tokenizer.ggml.eos_token_id"},
      {"unk", "tokenizer.ggml.unknown_token_id"}, {"sep", "tokenizer.ggml.seperator_token_id"},
      {"pad", "tokenizer.ggml.padding_token_id"}, {"mask", "tokenizer.ggml.mask_token_id"},
      {"eot", "tokenizer.ggml.eot_token_id"}};  // llama.cpp has no key for cls
  static const std::map<std::string, std::string> kAddKeys = {
      {"bos", "tokenizer.ggml.add_bos_token"},
      {"eos", "tokenizer.ggml.add_eos_token"},
      {"sep", "tokenizer.ggml.add_sep_token"}};
  for (const auto& [type, id] : special.ids)
    if (auto key = kIdKeys.find(type); key != kIdKeys.end())
      gguf.add_uint32(key->second, as_u32(id));
  for (const auto& [type, add] : special.add)
    if (auto key = kAddKeys.find(type); key != kAddKeys.end()) gguf.add_bool(key->second, add);
  if (special.chat_template) gguf.add_string("tokenizer.chat_template", *special.chat_template);
}

void add_tokenizer(GgufWriter& gguf, const fs::path& tokenizer_dir, const json& hf_config,
                   const ModelSpec& spec, const std::string& settings) {
  // As the converter: the Llama family reads tokenizer.model first; GPT-2 its BPE files.
  const bool llama_family = spec.model_type != "gpt2";
  const TokenizerVocabulary vocabulary = read_tokenizer_vocabulary(tokenizer_dir, llama_family);
  const bool sentencepiece = vocabulary.kind == VocabularyKind::kSentencePiece;
  const VocabularyArrays arrays = sentencepiece ? sentencepiece_arrays(vocabulary, spec.vocab_size)
                                                : bpe_arrays(vocabulary, spec.vocab_size, settings);
  gguf.add_string("tokenizer.ggml.model", sentencepiece ? "llama" : "gpt2");
  gguf.add_string("tokenizer.ggml.pre", sentencepiece ? "default" : pre_tokenizer_name(vocabulary));
  gguf.add_string_array("tokenizer.ggml.tokens", arrays.tokens);
  if (sentencepiece) gguf.add_float32_array("tokenizer.ggml.scores", arrays.scores);
  gguf.add_int32_array("tokenizer.ggml.token_type", arrays.types);
  if (!vocabulary.merges.empty()) {
    std::vector<std::string> merges;
    merges.reserve(vocabulary.merges.size());
    // A space inside a merge part would split it: the converter writes it as U+0120 ("Ġ").
    for (const auto& [left, right] : vocabulary.merges)
      merges.push_back(replace_every(left, " ", "\xC4\xA0") + " " +
                       replace_every(right, " ", "\xC4\xA0"));
    gguf.add_string_array("tokenizer.ggml.merges", merges);
  }
  const std::optional<int64_t> limit =
      sentencepiece ? std::optional<int64_t>(spec.vocab_size) : std::nullopt;
  SpecialTokens special = read_special_tokens(tokenizer_dir, hf_config, limit);
  const bool llama_arch = spec.model_type == "llama" || spec.model_type == "mistral";
  // LlamaModel.set_vocab: SmolLM's and Granite's 49,152-token vocabularies add no BOS.
  if (llama_arch && spec.vocab_size == 49152) special.add["bos"] = false;
  add_special_tokens(gguf, special);
  // LlamaModel.set_vocab: tokenizer_config.json's add_prefix_space, for llama and mistral.
  const fs::path config_file = tokenizer_dir / "tokenizer_config.json";
  if (llama_arch && fs::exists(config_file)) {
    const json config = read_json_file(config_file, "tokenizer_config.json", true);
    if (auto it = config.find("add_prefix_space"); it != config.end() && it->is_boolean())
      gguf.add_bool("tokenizer.ggml.add_space_prefix", it->get<bool>());
  }
}

}  // namespace

const char* gguf_file_type_names() {
  return "f32, f16, bf16, q8_0";
}

GgufFileType parse_gguf_file_type(const std::string& name) {
  for (const auto& info : kFileTypes)
    if (name == info.name) return info.type;
  throw UsageError("--dtype '" + name + "' is not a GGUF file type (" + gguf_file_type_names() +
                   ")");
}

GgufExportSummary export_gguf(const CausalLMImpl& model, const fs::path& tokenizer_dir,
                              const fs::path& out, const GgufExportOptions& options) {
  TORCH_CHECK(!has_lora(model), "export_gguf: merge the adapters first (merge_lora)");
  const ModelSpec& spec = model.spec();
  const std::string settings = options.settings.string();
  const GgufArchitecture arch = architecture_of(spec.model_type, settings);
  const FileTypeInfo& file_type = file_type_info(options.file_type);
  const json hf_config = model.hf_config();

  GgufWriter gguf;
  gguf.add_string("general.architecture", arch.name);
  gguf.add_string("general.type", "model");
  gguf.add_string("general.name", options.name);
  std::vector<ExportTensor> tensors;
  if (arch.name == "gpt2") {
    add_gpt2_hparams(gguf, arch, GPT2Config::from_hf_json(hf_config, settings), settings);
    tensors = export_tensors(model, arch, spec.n_head, spec.n_head);
  } else {
    const LlamaConfig config = LlamaConfig::from_hf_json(hf_config, settings);
    check_llama_family_settings(arch, config, settings);
    add_llama_family_hparams(gguf, arch, config);
    // As the converter, the rope factors come before the model's own tensors.
    if (config.rope_type == RopeType::kLlama3) tensors.push_back(llama3_rope_factors(config));
    for (auto& tensor :
         export_tensors(model, arch, config.num_attention_heads, config.num_key_value_heads))
      tensors.push_back(std::move(tensor));
  }
  gguf.add_uint32("general.file_type", file_type.llama_ftype);
  gguf.add_uint32("general.quantization_version", kGgmlQuantizationVersion);
  // The special-token ids of config.json as the file holds them, as the converter reads them.
  const json source_config = fs::is_regular_file(options.settings)
                                 ? read_json_file(options.settings, "config.json", true)
                                 : hf_config;
  add_tokenizer(gguf, tokenizer_dir, source_config, spec, settings);

  for (auto& tensor : tensors) {
    const GgmlType type = storage_type(tensor, file_type.tensor_type);
    gguf.add_tensor(tensor.name, tensor.shape, type, [values = std::move(tensor.values), type] {
      return encode_ggml(values(), type);
    });
  }
  GgufExportSummary summary;
  summary.tensors = gguf.tensor_count();
  summary.bytes = gguf.write(out);
  return summary;
}

}  // namespace lmtune
