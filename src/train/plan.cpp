#include "lmtune/train/plan.h"

#include <algorithm>
#include <fstream>
#include <functional>
#include <set>

#include <ATen/DeviceAccelerator.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "lmtune/core/host_allocator.h"
#include "lmtune/model/bf16_emulation.h"
#include "lmtune/model/gpt2.h"
#include "lmtune/model/hf_model_files.h"
#include "lmtune/model/llama.h"
#include "lmtune/model/lora.h"
#include "lmtune/model/model_factory.h"
#include "lmtune/model/projection.h"
#include "lmtune/train/checkpoint.h"
#include "lmtune/train/evaluate.h"
#include "lmtune/train/freeze.h"
#include "lmtune/train/setup.h"

namespace lmtune {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr double kMiB = 1024.0 * 1024.0;

// ---------------------------------------------------------------------------------------------
// The model on the meta device: every tensor has a shape and no storage, so building a 70B model
// costs nothing, and PEFT's target rules and the freezing rules run on it unchanged.

// While alive, tensors are created on the meta device whatever device their options name: the
// Meta key joins every dispatch, and BackendSelect, which would route a factory function
// (empty, ones, arange) to the kernel of the device its options name, is skipped.
class MetaDeviceScope {
 public:
  MetaDeviceScope()
      : include_(c10::DispatchKey::Meta),
        exclude_(c10::DispatchKeySet(c10::DispatchKey::BackendSelect)) {}

 private:
  c10::impl::IncludeDispatchKeyGuard include_;
  c10::impl::ExcludeDispatchKeyGuard exclude_;
};

// A pretrained model's architecture from its config.json, built on the meta device.
CausalLM meta_model(const fs::path& dir) {
  const json hf = read_hf_config(dir);
  MetaDeviceScope meta;
  return make_causal_lm(hf, (dir / "config.json").string());
}

CausalLM meta_model(const Config& config) {
  if (config.model.init == ModelInit::kPretrained) return meta_model(fs::path(config.model.path));
  GPT2Config shape;  // model.init: random, the shape build_model (lmtune/train/setup.h) gives it
  shape.n_layer = config.model.n_layer;
  shape.n_head = config.model.n_head;
  shape.n_embd = config.model.n_embd;
  shape.n_positions = config.model.n_positions;
  shape.vocab_size = config.model.vocab_size;
  MetaDeviceScope meta;
  return GPT2(shape);
}

// The run's adapters (fresh, or those of lora.adapter) or its freezing, as build_model and the
// trainer apply them. Adapters are made on their weight's device, the meta device here; an
// adapter file's tensors are read on the CPU and copied to them, which on meta copies nothing.
void apply_training_setup(const Config& config, const CausalLM& model, ModelCensus& census) {
  if (!config.lora.enabled) {
    freeze_parameters(model, config.train);
    return;
  }
  const AdapterSummary summary = config.lora.adapter.empty()
                                     ? attach_lora(*model, lora_spec(config.lora))
                                     : load_adapter(*model, config.lora.adapter);
  census.adapted_layers = summary.adapted_layers;
  census.adapter_parameters = summary.adapter_parameters;
}

// Bytes of an (out, in) weight held quantized, as QuantizedWeight::bytes counts them: int8 codes
// and an fp32 absmax per row; nf4 two codes a byte and an fp32 absmax per 64 values, or, double
// quantized, one byte per absmax, an fp32 scale per 256 of them and one fp32 offset.
int64_t quantized_bytes(int64_t out, int64_t in, Quantize quantize, bool double_quant) {
  const int64_t n = out * in;
  if (quantize == Quantize::kInt8) return n + 4 * out;
  const int64_t blocks = (n + kNf4BlockSize - 1) / kNf4BlockSize;
  const int64_t absmax =
      double_quant ? blocks + 4 * ((blocks + kNf4StatsBlockSize - 1) / kNf4StatsBlockSize) + 4
                   : 4 * blocks;
  return (n + 1) / 2 + absmax;
}

// The weights of the projections quantize_base (lmtune/model/lora.h) quantizes: every one but the
// output head. Adds their bytes to the census and returns their parameter names.
std::set<std::string> count_quantized(const Config& config, const CausalLMImpl& model,
                                      ModelCensus& census) {
  std::set<std::string> names;
  for (const auto& item : model.named_modules()) {
    auto projection = std::dynamic_pointer_cast<ProjectionImpl>(item.value());
    if (!projection) continue;
    const int64_t n = projection->out_features() * projection->in_features();
    if (item.key() == "lm_head") continue;  // counted as the output weight
    if (config.model.quantize == Quantize::kNone) {
      census.dense_projection_weights += n;
      continue;
    }
    names.insert(item.key() + ".weight");
    census.quantized_weights += n;
    census.weight_bytes += quantized_bytes(projection->out_features(), projection->in_features(),
                                           config.model.quantize, config.model.double_quant);
  }
  return names;
}

void count_parameters(const Config& config, const CausalLMImpl& model, ModelCensus& census) {
  const std::set<std::string> quantized = count_quantized(config, model, census);
  for (const auto& item : model.named_parameters()) {
    const torch::Tensor& p = item.value();
    if (!is_adapter_parameter(item.key())) {
      census.parameters += p.numel();
      census.largest_parameter = std::max(census.largest_parameter, p.numel());
      if (!quantized.count(item.key())) census.weight_bytes += 4 * p.numel();  // fp32
    }
    if (p.requires_grad()) {
      census.trainable += p.numel();
      census.trainable_tensors += 1;
    }
  }
  const torch::Tensor output = model.output_weight();
  census.output_weights = output.numel();
  census.output_trainable = output.requires_grad();
  census.tied_embeddings = model.spec().tie_word_embeddings;
  for (const auto& p : model.embedding_parameters())
    census.embedding_trainable = census.embedding_trainable || p.requires_grad();
}

// Bytes of the safetensors files load_causal_lm maps: on the CPU their pages count in the
// process's resident set while the weights are read.
int64_t weight_file_bytes(const Config& config) {
  if (config.model.init != ModelInit::kPretrained) return 0;
  int64_t bytes = 0;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(config.model.path, error))
    if (entry.path().extension() == ".safetensors" && entry.is_regular_file())
      bytes += static_cast<int64_t>(entry.file_size());
  return bytes;
}

// The largest file a checkpoint writes: model.safetensors (fp32; with LoRA the adapter and
// modules_to_save) or optimizer.safetensors (two fp32 moments and a step per trainable tensor).
int64_t checkpoint_file_bytes(const Config& config, const ModelCensus& census) {
  const int64_t model = config.lora.enabled ? 4 * census.trainable : 4 * census.parameters;
  const int64_t optimizer = 8 * census.trainable + 4 * census.trainable_tensors;
  return std::max(model, optimizer);
}

// ---------------------------------------------------------------------------------------------
// Activations: the bytes per token each block saves for backward. Counted tensor by tensor from
// what LibTorch's autograd keeps for the ops the models run (src/model/gpt2.cpp, llama.cpp,
// projection.cpp), and checked against live bytes measured after a forward pass
// (docs/memory.md): a linear layer keeps its input only when its weight trains, a frozen one
// only its weight; an adapter keeps its input, or its dropout mask and dropped input.

// Element sizes of what a step saves.
struct ElementBytes {
  double fp32 = 4;  // the residual stream and the norms' statistics: fp32 in every precision
  double low = 4;   // autocast's tensors (projection inputs and outputs, attention): 2 in 16 bits
  double mask = 4;  // a dropout mask: a bool on a GPU, a tensor of the input's dtype on the CPU
  bool copy_per_reader = false;  // autocast casts a shared input once per projection reading it
};

ElementBytes element_bytes(Precision precision, const DeviceMemory& memory) {
  ElementBytes e;
  // CPU bf16 without native kernels keeps fp32 tensors of bf16 values (lmtune/model/
  // bf16_emulation.h): measured within 7% of fp32's activations.
  const bool sixteen_bits =
      precision != Precision::kFp32 && (memory.device.is_cuda() || memory.native_bf16);
  if (sixteen_bits) e.low = 2;
  e.copy_per_reader = sixteen_bits;
  e.mask = memory.device.is_cuda() ? 1 : e.low;
  return e;
}

// One projection of a block as the run holds it.
struct Linear {
  bool trainable = false;  // its weight gets a gradient
  int64_t rank = 0;        // of its adapter; 0 = none
};

Linear linear_of(torch::nn::Module& block, const std::string& name) {
  for (const auto& item : block.named_modules()) {
    if (item.key() != name) continue;
    auto projection = std::dynamic_pointer_cast<ProjectionImpl>(item.value());
    if (!projection) break;
    Linear linear;
    linear.trainable = projection->weight.defined() && projection->weight.requires_grad();
    if (projection->has_lora()) linear.rank = projection->lora_A.size(0);
    return linear;
  }
  return {};
}

bool trains(torch::nn::Module& module, const std::string& parameter) {
  for (const auto& item : module.named_parameters())
    if (item.key() == parameter) return item.value().requires_grad();
  return false;
}

// What the projections reading one input of `width` values save per token: the input once (or,
// under 16-bit autocast, the cast copy each of them makes) when a weight trains or an adapter
// without dropout reads it; for each adapter with dropout its mask and dropped input; for each
// adapter its rank-r intermediate.
double input_bytes(const std::vector<Linear>& readers, int64_t width, double lora_dropout,
                   const ElementBytes& e, bool already_saved = false) {
  double bytes = 0;
  int64_t keeping = 0;
  for (const auto& linear : readers) {
    if (linear.trainable || (linear.rank > 0 && lora_dropout == 0)) ++keeping;
    if (linear.rank > 0)
      bytes += e.low * static_cast<double>(linear.rank) +
               (lora_dropout > 0 ? (e.mask + e.low) * static_cast<double>(width) : 0.0);
  }
  if (keeping > 0 && !already_saved)
    bytes += e.low * static_cast<double>(width) * (e.copy_per_reader ? keeping : 1);
  return bytes;
}

struct ActivationContext {
  ElementBytes e;
  double lora_dropout = 0;
  int64_t seq_len = 0;
  bool cpu = true;
};

// GPT-2's block: C channels, F the MLP's width, H heads. Attention with dropout runs LibTorch's
// math kernel on the CPU, which keeps the (H, T, T) probabilities, the dropout mask and the
// dropped probabilities; without dropout (and on a GPU) the fused kernels keep only q, k, v and
// the output.
double gpt2_block_bytes(torch::nn::Module& block, const GPT2Config& c, const ActivationContext& a) {
  const ElementBytes& e = a.e;
  const double C = static_cast<double>(c.n_embd), F = static_cast<double>(c.mlp_width());
  const double H = static_cast<double>(c.n_head), T = static_cast<double>(a.seq_len);
  const bool math_attention = a.cpu && c.attn_pdrop > 0;
  const double resid_mask = c.resid_pdrop > 0 ? e.mask * C : 0.0;
  double bytes = e.fp32 * C;  // the block's input (ln_1's)
  bytes += input_bytes({linear_of(block, "attn.c_attn")}, c.n_embd, a.lora_dropout, e);
  bytes += e.low * 3 * C;  // q, k, v: views of c_attn's output
  if (math_attention) {
    bytes += 3 * e.low * H * T;
    bytes += input_bytes({linear_of(block, "attn.c_proj")}, c.n_embd, a.lora_dropout, e);
  } else {
    bytes += e.low * C;  // the attention's output, which is c_proj's input too
    bytes += input_bytes({linear_of(block, "attn.c_proj")}, c.n_embd, a.lora_dropout, e,
                         /*already_saved=*/true);
  }
  bytes += resid_mask;
  bytes += e.fp32 * C;  // ln_2's input
  bytes += input_bytes({linear_of(block, "mlp.c_fc")}, c.n_embd, a.lora_dropout, e);
  bytes += e.low * F;  // c_fc's output, the activation's input
  bytes += input_bytes({linear_of(block, "mlp.c_proj")}, c.mlp_width(), a.lora_dropout, e);
  return bytes + resid_mask;
}

// A Llama-family block: RMSNorms in fp32, grouped-query attention (k and v repeated to the H
// query heads before the kernel), a SwiGLU MLP of width F.
double llama_block_bytes(torch::nn::Module& block, const LlamaConfig& c,
                         const ActivationContext& a) {
  const ElementBytes& e = a.e;
  const double C = static_cast<double>(c.hidden_size), F = static_cast<double>(c.intermediate_size);
  const double H = static_cast<double>(c.num_attention_heads), T = static_cast<double>(a.seq_len);
  const double HD = H * static_cast<double>(c.head_dim);
  const double KD = static_cast<double>(c.num_key_value_heads * c.head_dim);
  const double kv = c.num_key_value_heads < c.num_attention_heads ? HD : KD;
  double bytes = e.fp32 * C;  // the block's input (the first norm's)
  if (trains(block, "input_layernorm.weight")) bytes += e.fp32 * C;  // the normalised input
  bytes += input_bytes({linear_of(block, "self_attn.q_proj"), linear_of(block, "self_attn.k_proj"),
                        linear_of(block, "self_attn.v_proj")},
                       c.hidden_size, a.lora_dropout, e);
  if (c.qk_norm)
    bytes +=
        e.low * (HD + KD) + (trains(block, "self_attn.q_norm.weight") ? e.fp32 * (HD + KD) : 0.0);
  bytes += e.low * (HD + 2 * kv);  // rotated q, and k and v as the kernel reads them
  const Linear o_proj = linear_of(block, "self_attn.o_proj");
  const int64_t heads_width = c.num_attention_heads * c.head_dim;
  if (a.cpu && c.attention_dropout > 0) {
    bytes += 3 * e.low * H * T;
    bytes += input_bytes({o_proj}, heads_width, a.lora_dropout, e);
  } else {
    bytes += e.low * HD;  // the attention's output, o_proj's input
    bytes += input_bytes({o_proj}, heads_width, a.lora_dropout, e, /*already_saved=*/true);
  }
  bytes += e.fp32 * C;  // the second norm's input
  if (trains(block, "post_attention_layernorm.weight")) bytes += e.fp32 * C;
  bytes += input_bytes({linear_of(block, "mlp.gate_proj"), linear_of(block, "mlp.up_proj")},
                       c.hidden_size, a.lora_dropout, e);
  bytes += 3 * e.low * F;  // gate's output (SiLU's input), SiLU's output, up's output
  bytes += input_bytes({linear_of(block, "mlp.down_proj")}, c.intermediate_size, a.lora_dropout, e);
  return bytes;
}

bool has_trainable(torch::nn::Module& module) {
  for (const auto& p : module.parameters())
    if (p.requires_grad()) return true;
  return false;
}

// Per-block and outer activation bytes per token for the census.
void count_activations(const Config& config, const DeviceMemory& memory, CausalLM& model,
                       ModelCensus& census) {
  ActivationContext a;
  a.e = element_bytes(config.train.precision, memory);
  a.lora_dropout = config.lora.enabled ? config.lora.dropout : 0.0;
  if (config.lora.enabled && !config.lora.adapter.empty())
    a.lora_dropout = read_adapter_config(config.lora.adapter).spec.dropout;
  a.seq_len = config.data.seq_len;
  a.cpu = !memory.device.is_cuda();
  const ModelSpec& spec = model->spec();
  const double C = static_cast<double>(spec.hidden_size);
  const auto gpt2 = std::dynamic_pointer_cast<GPT2Impl>(model.ptr());
  std::optional<LlamaConfig> llama;
  if (!gpt2) llama = LlamaConfig::from_hf_json(model->hf_config(), config.model.path);
  // A block saves nothing when no gradient reaches or starts in it (frozen embeddings and blocks
  // before it, as train.freeze_layers leaves them).
  bool gradient_flows = census.embedding_trainable;
  for (int64_t i = 0; i < spec.n_layer; ++i) {
    torch::nn::Module& block = *model->block(i);
    gradient_flows = gradient_flows || has_trainable(block);
    const double full = !gradient_flows ? 0.0
                        : gpt2          ? gpt2_block_bytes(block, gpt2->config(), a)
                                        : llama_block_bytes(block, *llama, a);
    census.block_bytes_per_token.push_back(full);
    census.checkpointed_bytes_per_token.push_back(gradient_flows ? a.e.fp32 * C : 0.0);
  }
  // The last block's output (the final norm's input), the final norm's saved tensors, GPT-2's
  // embedding dropout mask; the head's input is counted with the loss.
  double outer = a.e.fp32 * C;
  if (gpt2 && gpt2->config().embd_pdrop > 0 && census.embedding_trainable) outer += a.e.mask * C;
  if (llama && trains(*model, "norm.weight")) outer += a.e.fp32 * C;
  census.outer_bytes_per_token = outer;
}

// ---------------------------------------------------------------------------------------------
// The peak: the largest of the moments of a run (the end of forward, the start and the end of
// backward; on the CPU also loading the weights and saving a checkpoint).

std::string fmt_millions(int64_t count) {
  return fmt::format("{:.1f} M", static_cast<double>(count) / 1e6);
}

// What the loss costs at the end of forward and at the start of backward, and what stays from
// forward to backward, in bytes.
struct LossBytes {
  double head_input = 0;  // the final hidden states, saved by a trainable output projection
  double forward = 0;     // at its largest during forward (on top of the activations)
  double backward = 0;    // at the start of backward
};

// `chunk_logit_bytes`: what a chunk of the chunked loss holds per logit at once.
LossBytes loss_bytes(const ModelCensus& census, const ElementBytes& e, Precision precision,
                     int64_t tokens, int64_t chunk_tokens, double chunk_logit_bytes) {
  const double N = static_cast<double>(tokens), V = static_cast<double>(census.vocab_size);
  const double C = static_cast<double>(census.hidden_size);
  const double head_gradient = census.output_trainable ? 4.0 * V * C : 0.0;
  LossBytes loss;
  if (census.teacher_parameters > 0) {
    // Distillation (lmtune/model/distill_loss.h) replaces the loss, always chunked: the student's
    // final hidden states are saved; a chunk's forward holds both models' fp32 logits and their
    // log-softmaxes and the teacher's probabilities (20 bytes per logit); backward recomputes a
    // chunk with gradients: those, the difference of the log-softmaxes and the gradient flowing
    // back (28 bytes per logit; 2487 MB predicted against 2410 measured, docs/memory.md), and
    // fills the hidden states' fp32 gradient.
    const double chunk = V * static_cast<double>(std::min(chunk_tokens, tokens));
    loss.head_input = e.low * C * N;
    loss.forward = loss.head_input + 20.0 * chunk;
    loss.backward = loss.head_input + 4.0 * C * N + head_gradient + 28.0 * chunk;
    return loss;
  }
  if (chunk_tokens == 0) {
    // Logits (B, T, V) in the compute dtype, their fp32 copy and the log-softmax: 8 bytes per
    // logit in fp32, 10 under autocast; backward adds the log-softmax's gradient and the
    // logits' (12 bytes per logit), then the output weight's gradient.
    loss.head_input = census.output_trainable ? e.low * C * N : 0.0;
    loss.forward = loss.head_input + (precision == Precision::kFp32 ? 8.0 : 10.0) * V * N;
    loss.backward = loss.head_input + std::max(12.0 * V * N, 4.0 * V * N + head_gradient);
    return loss;
  }
  // Chunked (lmtune/model/chunked_loss.h): the gradients for the hidden states (fp32) and the
  // output weight are computed in forward and held until backward, which scales a copy of them;
  // a chunk's logits and their gradient exist one chunk at a time.
  const double held = 4.0 * C * N + head_gradient;
  const double chunk = chunk_logit_bytes * V * static_cast<double>(std::min(chunk_tokens, tokens));
  loss.forward = held + chunk;
  loss.backward = 2.0 * held;
  return loss;
}

std::string loss_label(const Config& config, const MemoryPlan& plan) {
  const std::string fused = config.train.fused_loss ? "fused, " : "";
  if (plan.loss_chunk_tokens > 0) {
    return fmt::format("logits and loss ({}chunked, {} tokens a chunk)", fused,
                       plan.loss_chunk_tokens);
  }
  return config.train.fused_loss ? "logits and loss (fused, the micro-batch at once)"
                                 : "logits and loss (plain)";
}

struct Moment {
  std::string name;
  std::vector<double> bytes;  // per part, in the order of PartKey
};

enum PartKey {
  kRuntime,
  kWeights,
  kAdapters,
  kGradients,
  kOptimizer,
  kActivations,
  kAutocastCopies,
  kLoss,
  kBackwardTransients,
  kAllocatorSlack,
  kLoading,
  kCheckpointFile,
  kTeacher,
  kPartCount
};

constexpr const char* kPartKeys[kPartCount] = {
    "runtime",     "weights",         "adapters", "gradients",           "optimizer",
    "activations", "autocast_copies", "loss",     "backward_transients", "allocator_slack",
    "loading",     "checkpoint_file", "teacher"};

// lmtune's host cache (lmtune/core/host_allocator.h) holds at most a tenth more than the peak of
// the bytes in use: freed blocks stay mapped for reuse. Measured, 1.4% to 10% over the live peak.
constexpr double kHostCacheSlack = 0.1;

double sum(const std::vector<double>& bytes) {
  double total = 0;
  for (double b : bytes) total += b;
  return total;
}

// The tensor parts of a moment grown by the host cache's slack.
void add_slack(Moment& moment, double slack) {
  double tensors = 0;
  for (int key = kWeights; key <= kBackwardTransients; ++key) tensors += moment.bytes[key];
  tensors += moment.bytes[kTeacher];
  moment.bytes[kAllocatorSlack] = slack * tensors;
}

// Loading (load_causal_lm) holds the whole model in fp32, before any quantization, with the
// files mapped, and reads one tensor at a time: a copy in its stored dtype, and an fp32 one when
// that is not fp32 (the stored dtype guessed from the files' bytes per parameter).
double loading_bytes(const ModelCensus& census) {
  if (census.file_bytes == 0 || census.parameters == 0) return 0;
  const double stored = static_cast<double>(census.file_bytes) /
                        static_cast<double>(census.parameters);  // 4 (fp32) or 2 (bf16, fp16)
  const double copy =
      (stored > 3 ? 4.0 : stored + 4.0) * static_cast<double>(census.largest_parameter);
  return static_cast<double>(census.file_bytes) + copy;
}

// What a step of `config` holds besides the weights and the optimizer, in bytes.
struct StepBytes {
  double activations = 0;    // saved for backward at the end of forward
  double backward_tail = 0;  // what is left of them, and a block's recomputation, near the end
  double copies = 0;         // autocast's weight copies kept for backward
  double cast_cache = 0;     // and its bf16 cast cache, during forward (CPU emulation)
  double gradients = 0;
  double embedding_sum = 0;   // the tied embedding's second gradient and their sum
  double teacher_hidden = 0;  // the teacher's final hidden states, kept for the micro-step
  LossBytes loss;
};

StepBytes step_bytes(const Config& config, const ModelCensus& census, const DeviceMemory& memory,
                     int64_t loss_chunk_tokens) {
  const TrainConfig& train = config.train;
  const ElementBytes e = element_bytes(train.precision, memory);
  const int64_t tokens = train.micro_batch_size * config.data.seq_len;
  const double N = static_cast<double>(tokens);
  StepBytes step;
  // Activations: every block's, or only the input of each recomputed one.
  const int64_t every = config.model.gradient_checkpointing ? config.model.checkpoint_every : 0;
  double largest_block = 0;
  step.activations = census.outer_bytes_per_token * N;
  for (std::size_t i = 0; i < census.block_bytes_per_token.size(); ++i) {
    const bool recomputed = every > 0 && static_cast<int64_t>(i) % every == 0;
    step.activations +=
        (recomputed ? census.checkpointed_bytes_per_token[i] : census.block_bytes_per_token[i]) * N;
    largest_block = std::max(largest_block, census.block_bytes_per_token[i] * N);
  }
  // Near the end of backward a recomputed block's activations and its gradients coexist.
  step.backward_tail = (every > 0 ? 2.0 : 1.0) * largest_block;
  // Autocast's copies of the dense weights every linear layer reads (the output head's too):
  // bf16 values in fp32 under CPU emulation, kept for backward, plus the bf16 cast cache during
  // forward; 16-bit copies under native autocast.
  const double dense = static_cast<double>(census.dense_projection_weights + census.output_weights);
  if (train.precision != Precision::kFp32) {
    step.copies = (e.low == 2 ? 2.0 : 4.0) * dense;
    if (e.low != 2) step.cast_cache = 2.0 * dense;
  }
  // The chunked loss's gradient is computed over each chunk's fp32 logits in place: 4 bytes per
  // logit, 8 under autocast (the logits and their fp32 copy), 12 for padding's copies and the
  // cast back. train.fused_loss takes that path with one chunk of the whole micro-batch unless
  // chunking says otherwise; its kernel (a GPU, 16-bit logits) writes the gradient over the
  // logits themselves.
  // Distillation always chunks, at train.loss_chunk_tokens when the rule did not.
  int64_t chunk_tokens = loss_chunk_tokens;
  double chunk_logit_bytes = train.precision == Precision::kFp32 ? 4.0 : 12.0;
  if (census.teacher_parameters > 0) {
    if (chunk_tokens == 0) chunk_tokens = train.loss_chunk_tokens;
  } else if (train.fused_loss) {
    if (chunk_tokens == 0) chunk_tokens = tokens;
    if (memory.device.is_cuda()) chunk_logit_bytes = e.low;
  }
  step.loss = loss_bytes(census, e, train.precision, tokens, chunk_tokens, chunk_logit_bytes);
  step.teacher_hidden = e.low * static_cast<double>(census.teacher_hidden_size) * N;
  step.gradients = 4.0 * static_cast<double>(census.trainable);
  // The tied embedding's gradient arrives twice, from the output head and the embedding, and the
  // two are summed into a third tensor (the chunked loss hands over the first in place; counted
  // as summed under distillation unless the rule itself chunks).
  const bool handed_over = census.teacher_parameters > 0 ? loss_chunk_tokens > 0 : chunk_tokens > 0;
  if (census.embedding_trainable && census.tied_embeddings)
    step.embedding_sum =
        (handed_over ? 1.0 : 2.0) * 4.0 * static_cast<double>(census.output_weights);
  return step;
}

// The parts every moment holds: the runtime, the weights, the adapters, AdamW's state.
std::vector<double> resident_bytes(const ModelCensus& census, const DeviceMemory& memory) {
  std::vector<double> held(kPartCount, 0.0);
  held[kRuntime] = memory.runtime_mb * kMiB;
  held[kWeights] = static_cast<double>(census.weight_bytes);
  held[kAdapters] = 4.0 * static_cast<double>(census.adapter_parameters);
  held[kOptimizer] = 8.0 * static_cast<double>(census.trainable) +
                     4.0 * static_cast<double>(census.trainable_tensors);
  held[kTeacher] = 4.0 * static_cast<double>(census.teacher_parameters);
  return held;
}

bool by_total(const Moment& a, const Moment& b) {
  return sum(a.bytes) < sum(b.bytes);
}

std::vector<Moment> moments_of(const StepBytes& step, const ModelCensus& census,
                               const DeviceMemory& memory) {
  std::vector<Moment> moments;
  auto moment = [&](std::string name, std::initializer_list<std::pair<PartKey, double>> parts) {
    Moment m{std::move(name), resident_bytes(census, memory)};
    for (const auto& [key, bytes] : parts) m.bytes[key] = bytes;
    add_slack(m, memory.allocator_slack);
    moments.push_back(std::move(m));
  };
  const double teacher = 4.0 * static_cast<double>(census.teacher_parameters);
  moment("at the end of forward", {{kActivations, step.activations},
                                   {kAutocastCopies, step.copies + step.cast_cache},
                                   {kLoss, step.loss.forward},
                                   {kTeacher, teacher + step.teacher_hidden}});
  moment("at the start of backward", {{kActivations, step.activations},
                                      {kAutocastCopies, step.copies},
                                      {kLoss, step.loss.backward},
                                      {kTeacher, teacher + step.teacher_hidden}});
  moment("at the end of backward", {{kGradients, step.gradients},
                                    {kActivations, step.backward_tail},
                                    {kBackwardTransients, step.embedding_sum}});
  if (memory.device.is_cuda()) return moments;
  const Moment busiest = *std::max_element(moments.begin(), moments.end(), by_total);
  moment("while loading the weights", {{kWeights, 4.0 * static_cast<double>(census.parameters)},
                                       {kAdapters, 0.0},
                                       {kOptimizer, 0.0},
                                       {kLoading, loading_bytes(census)}});
  // A checkpoint's checksum maps each file it wrote, whole, while the host cache still holds the
  // step's memory: the largest file comes on top of the step's peak.
  Moment saving{"while saving a checkpoint", busiest.bytes};
  saving.bytes[kCheckpointFile] = static_cast<double>(census.checkpoint_file_bytes);
  moments.push_back(std::move(saving));
  return moments;
}

std::vector<std::string> part_labels(const Config& config, const ModelCensus& census,
                                     const DeviceMemory& memory, const MemoryPlan& plan) {
  const int64_t every = config.model.gradient_checkpointing ? config.model.checkpoint_every : 0;
  return {
      memory.device.is_cuda() ? "runtime (CUDA context: outside the free memory)"
                              : "runtime (an idle lmtune: LibTorch, this process)",
      census.quantized_weights > 0
          ? fmt::format("weights ({} {}, the rest fp32)", fmt_millions(census.quantized_weights),
                        enum_name(config.model.quantize))
          : fmt::format("weights (fp32, {} parameters)", fmt_millions(census.parameters)),
      fmt::format("LoRA adapters ({} layers, {} parameters)", census.adapted_layers,
                  fmt_millions(census.adapter_parameters)),
      fmt::format("gradients (fp32, {} trainable)", fmt_millions(census.trainable)),
      "AdamW state (2 fp32 moments per trainable parameter)",
      fmt::format("activations ({} x {} tokens, {}{})", plan.micro_batch_size, plan.seq_len,
                  enum_name(config.train.precision),
                  every > 0 ? fmt::format(", checkpointing every {}", every) : std::string()),
      "autocast weight copies",
      loss_label(config, plan),
      "backward transients (the tied embedding's gradient)",
      fmt::format("allocator slack (host cache, up to {:.0f}%)", 100 * memory.allocator_slack),
      "weight files mapped while loading (and a tensor read)",
      "checkpoint file mapped for its checksum",
      fmt::format("distillation teacher (fp32, {} parameters, and its final hidden states)",
                  fmt_millions(census.teacher_parameters))};
}

// Each part's own size, whenever it exists (the slack: at the step's busiest moment).
std::vector<double> part_sizes(const StepBytes& step, const ModelCensus& census,
                               const DeviceMemory& memory) {
  std::vector<double> sizes = resident_bytes(census, memory);
  sizes[kGradients] = step.gradients;
  sizes[kActivations] = step.activations;
  sizes[kAutocastCopies] = step.copies + step.cast_cache;
  sizes[kLoss] = std::max(step.loss.forward, step.loss.backward);
  sizes[kBackwardTransients] = step.embedding_sum;
  sizes[kLoading] = loading_bytes(census);
  sizes[kCheckpointFile] = static_cast<double>(census.checkpoint_file_bytes);
  sizes[kTeacher] += step.teacher_hidden;
  const std::vector<Moment> moments = moments_of(step, census, memory);
  sizes[kAllocatorSlack] =
      std::max_element(moments.begin(), moments.begin() + 3, by_total)->bytes[kAllocatorSlack];
  return sizes;
}

}  // namespace

DeviceMemory measure_device_memory(torch::Device device) {
  DeviceMemory memory;
  memory.device = device;
  if (device.is_cuda()) {
    const std::size_t free_bytes =
        at::accelerator::getMemoryInfo(device.has_index() ? device.index() : 0).first;
    memory.available_mb = static_cast<double>(free_bytes) / kMiB;
    return memory;
  }
  memory.native_bf16 = cpu_bf16_kernels() == CpuBf16Kernels::kNative;
  memory.allocator_slack = host_cache_installed() ? kHostCacheSlack : 0.0;
  // An idle lmtune's cost is this process's resident set (VmRSS): its libraries and runtime are
  // loaded, nothing of a run is. A run in this process has MemAvailable on top of it.
  auto read_kib = [](const char* file, const std::string& key) {
    std::ifstream in(file);
    std::string line;
    while (std::getline(in, line))
      if (line.rfind(key, 0) == 0) return std::stod(line.substr(key.size()));
    return 0.0;
  };
  memory.runtime_mb = read_kib("/proc/self/status", "VmRSS:") / 1024.0;
  memory.available_mb = read_kib("/proc/meminfo", "MemAvailable:") / 1024.0 + memory.runtime_mb;
  return memory;
}

ModelCensus census_of(const Config& config, const DeviceMemory& memory) {
  ModelCensus census;
  CausalLM model = meta_model(config);
  census.model_type = model->spec().model_type;
  census.hidden_size = model->spec().hidden_size;
  census.vocab_size = model->spec().vocab_size;
  apply_training_setup(config, model, census);
  count_parameters(config, *model, census);
  census.file_bytes = weight_file_bytes(config);
  census.checkpoint_file_bytes = checkpoint_file_bytes(config, census);
  count_activations(config, memory, model, census);
  if (!config.distill.teacher.empty()) {
    CausalLM teacher = meta_model(fs::path(config.distill.teacher));
    for (const auto& p : teacher->parameters()) census.teacher_parameters += p.numel();
    census.teacher_hidden_size = teacher->spec().hidden_size;
  }
  return census;
}

MemoryPlan plan_memory(const Config& config, const ModelCensus& census,
                       const DeviceMemory& memory) {
  TORCH_CHECK(config.train.micro_batch_size > 0, "plan_memory: resolve micro_batch_size first");
  MemoryPlan plan;
  plan.micro_batch_size = config.train.micro_batch_size;
  plan.grad_accum_steps = config.train.grad_accum_steps;
  plan.seq_len = config.data.seq_len;
  plan.loss_chunk_tokens = resolve_loss_chunk_tokens(config.train, config.data.seq_len,
                                                     census.vocab_size, memory.device);
  const StepBytes step = step_bytes(config, census, memory, plan.loss_chunk_tokens);
  const std::vector<Moment> moments = moments_of(step, census, memory);
  const Moment& peak = *std::max_element(moments.begin(), moments.end(), by_total);
  plan.peak_moment = peak.name;
  plan.total_mb = sum(peak.bytes) / kMiB;
  const std::vector<std::string> labels = part_labels(config, census, memory, plan);
  const std::vector<double> sizes = part_sizes(step, census, memory);
  for (int key = 0; key < kPartCount; ++key)
    plan.parts.push_back({kPartKeys[key], labels[key], sizes[key] / kMiB, peak.bytes[key] / kMiB});
  return plan;
}

bool plan_fits(const MemoryPlan& plan, const DeviceMemory& memory, double share) {
  return plan.total_mb <= share * memory.available_mb;
}

namespace {

// Sequences an optimizer step trains: micro-batch x accumulation, or accumulation x
// kAutoMicroBatchUnit with micro-batch auto.
int64_t step_sequences(const TrainConfig& train) {
  return train.micro_batch_size == kAutoMicroBatch
             ? train.grad_accum_steps * kAutoMicroBatchUnit
             : train.micro_batch_size * train.grad_accum_steps;
}

// The largest micro-batch up to `largest` that divides the step's sequences and whose plan fits
// in `share` of the available memory; micro-batch 1 (fits false) when none does.
MicroBatchChoice largest_fitting_micro_batch(const Config& config, const ModelCensus& census,
                                             const DeviceMemory& memory, int64_t largest,
                                             double share) {
  const int64_t sequences = step_sequences(config.train);
  for (int64_t micro = std::min(largest, sequences); micro >= 1; --micro) {
    if (sequences % micro != 0) continue;
    Config candidate = config;
    candidate.train.micro_batch_size = micro;
    candidate.train.grad_accum_steps = sequences / micro;
    MemoryPlan plan = plan_memory(candidate, census, memory);
    const bool fits = plan_fits(plan, memory, share);
    if (fits || micro == 1) return {micro, sequences / micro, std::move(plan), fits};
  }
  return {};  // not reached: 1 divides every count
}

std::vector<Override> micro_batch_overrides(const MicroBatchChoice& choice) {
  return {{"train.micro_batch_size", std::to_string(choice.micro_batch_size)},
          {"train.grad_accum_steps", std::to_string(choice.grad_accum_steps)}};
}

// A change of settings a lever makes.
struct Change {
  std::string what;
  std::vector<Override> overrides;
  std::function<void(Config&)> apply;
};

// The model-side levers not in force yet: checkpointing, the chunked loss, LoRA, QLoRA.
std::vector<Change> model_changes(const Config& config, const ModelCensus& census,
                                  const DeviceMemory& memory) {
  std::vector<Change> changes;
  const bool pretrained = config.model.init == ModelInit::kPretrained;
  if (!config.model.gradient_checkpointing || config.model.checkpoint_every > 1)
    changes.push_back({"gradient checkpointing",
                       {{"model.gradient_checkpointing", "true"}, {"model.checkpoint_every", "1"}},
                       [](Config& c) {
                         c.model.gradient_checkpointing = true;
                         c.model.checkpoint_every = 1;
                       }});
  if (resolve_loss_chunk_tokens(config.train, config.data.seq_len, census.vocab_size,
                                memory.device) == 0)
    changes.push_back({"chunked loss", {{"train.chunked_loss", "on"}}, [](Config& c) {
                         c.train.chunked_loss = ChunkedLoss::kOn;
                       }});
  if (!config.lora.enabled && pretrained)
    changes.push_back({"LoRA adapters over the frozen base",
                       {{"lora.enabled", "true"}},
                       [](Config& c) { c.lora.enabled = true; }});
  if (config.model.quantize == Quantize::kNone && pretrained) {
    std::vector<Override> overrides{{"model.quantize", "nf4"}};
    if (!config.lora.enabled) overrides.insert(overrides.begin(), {"lora.enabled", "true"});
    changes.push_back({"LoRA over an nf4 base (QLoRA)", overrides, [](Config& c) {
                         c.lora.enabled = true;
                         c.model.quantize = Quantize::kNf4;
                       }});
  }
  return changes;
}

}  // namespace

MicroBatchChoice choose_micro_batch(const Config& config, const ModelCensus& census,
                                    const DeviceMemory& memory) {
  return largest_fitting_micro_batch(config, census, memory, step_sequences(config.train),
                                     kAutoMemoryShare);
}

std::vector<Lever> plan_levers(const Config& config, const ModelCensus& census,
                               const DeviceMemory& memory) {
  const double base_mb = plan_memory(config, census, memory).total_mb;
  std::vector<Lever> levers;  // only those that lower the peak
  // A lever at the config's micro-batch; when that does not fit, with the largest that does.
  auto add = [&](const std::string& what, std::vector<Override> overrides, const Config& changed) {
    const bool same_model = changed.lora.enabled == config.lora.enabled &&
                            changed.model.quantize == config.model.quantize;
    const ModelCensus own = same_model ? census : census_of(changed, memory);
    const MemoryPlan plan = plan_memory(changed, own, memory);
    Lever lever{what, std::move(overrides), plan.total_mb, plan_fits(plan, memory)};
    if (!lever.fits) {
      const MicroBatchChoice smaller = largest_fitting_micro_batch(
          changed, own, memory, changed.train.micro_batch_size - 1, /*share=*/1.0);
      if (smaller.fits) {
        lever.what += fmt::format(", micro-batch {} x {} accumulated", smaller.micro_batch_size,
                                  smaller.grad_accum_steps);
        for (auto& o : micro_batch_overrides(smaller)) lever.overrides.push_back(o);
        lever.total_mb = smaller.plan.total_mb;
        lever.fits = true;
      }
    }
    if (lever.total_mb < base_mb) levers.push_back(std::move(lever));
  };

  if (config.train.micro_batch_size > 1) {
    // The step's sequences in smaller micro-batches: the largest that fits, at least halved.
    const MicroBatchChoice smaller = largest_fitting_micro_batch(
        config, census, memory, config.train.micro_batch_size / 2, /*share=*/1.0);
    if (smaller.plan.total_mb < base_mb)
      levers.push_back({fmt::format("micro-batch {} x {} accumulated", smaller.micro_batch_size,
                                    smaller.grad_accum_steps),
                        micro_batch_overrides(smaller), smaller.plan.total_mb, smaller.fits});
  }
  const std::vector<Change> changes = model_changes(config, census, memory);
  Config all = config;
  std::vector<Override> all_overrides;
  for (const auto& change : changes) {
    Config changed = config;
    change.apply(changed);
    change.apply(all);
    for (const auto& o : change.overrides)
      if (std::none_of(all_overrides.begin(), all_overrides.end(),
                       [&](const Override& seen) { return seen.key == o.key; }))
        all_overrides.push_back(o);
    add(change.what, change.overrides, changed);
  }
  if (changes.size() > 1) add("all of the above", all_overrides, all);
  return levers;
}

std::string lever_flags(const Lever& lever) {
  std::string flags;
  for (const auto& o : lever.overrides)
    flags += (flags.empty() ? "--set " : " --set ") + o.key + "=" + o.value;
  return flags;
}

json plan_json(const MemoryPlan& plan, const DeviceMemory& memory) {
  json parts = json::object();
  for (const auto& part : plan.parts) parts[part.key] = std::round(part.peak_mb * 10) / 10;
  return {{"parts", parts},
          {"total_mb", std::round(plan.total_mb * 10) / 10},
          {"available_mb", std::round(memory.available_mb * 10) / 10},
          {"fits", plan_fits(plan, memory)},
          {"device", memory.device.str()},
          {"micro_batch_size", plan.micro_batch_size},
          {"grad_accum_steps", plan.grad_accum_steps},
          {"seq_len", plan.seq_len},
          {"peak", plan.peak_moment}};
}

std::string resolve_auto_micro_batch(Config& config, torch::Device device,
                                     const std::optional<fs::path>& resume_from) {
  TrainConfig& train = config.train;
  if (train.micro_batch_size != kAutoMicroBatch) return "";
  const int64_t sequences = train.grad_accum_steps * kAutoMicroBatchUnit;
  if (resume_from) {
    // The checkpoint's split: resuming with another would change the data order.
    const TrainerState state = read_checkpoint(find_resume_checkpoint(*resume_from));
    const json saved = state.config.value("train", json::object());
    train.micro_batch_size = saved.value("micro_batch_size", int64_t{1});
    train.grad_accum_steps = saved.value("grad_accum_steps", sequences);
    return fmt::format(
        "train.micro_batch_size: auto: {} x {} accumulated, as the run being resumed chose",
        train.micro_batch_size, train.grad_accum_steps);
  }
  const DeviceMemory memory = measure_device_memory(device);
  const MicroBatchChoice choice = choose_micro_batch(config, census_of(config, memory), memory);
  train.micro_batch_size = choice.micro_batch_size;
  train.grad_accum_steps = choice.grad_accum_steps;
  return fmt::format(
      "train.micro_batch_size: auto: {} x {} accumulated ({} sequences a step): the plan "
      "predicts {:.0f} MB{} {:.0f}% of the {:.0f} MB available on {}",
      choice.micro_batch_size, choice.grad_accum_steps, sequences, choice.plan.total_mb,
      choice.fits ? ", within" : " even at micro-batch 1, more than", 100 * kAutoMemoryShare,
      memory.available_mb, device.str());
}

Error out_of_memory_error(const Config& config, torch::Device device, int64_t step) {
  std::string advice;
  try {
    DeviceMemory memory = measure_device_memory(device);
    if (device.is_cuda())  // the run's own tensors fill the GPU now: plan against all of it
      memory.available_mb =
          static_cast<double>(
              at::accelerator::getMemoryInfo(device.has_index() ? device.index() : 0).second) /
          kMiB;
    const ModelCensus census = census_of(config, memory);
    const MemoryPlan plan = plan_memory(config, census, memory);
    advice = fmt::format("; lmtune plan predicts {:.0f} MB against the {:.0f} MB of {}",
                         plan.total_mb, memory.available_mb, device.str());
    std::vector<std::string> fitting;
    for (const auto& lever : plan_levers(config, census, memory))
      if (lever.fits)
        fitting.push_back(
            fmt::format("{} ({:.0f} MB: {})", lever.what, lever.total_mb, lever_flags(lever)));
    if (!fitting.empty()) advice += "; would fit: " + fmt::format("{}", fmt::join(fitting, "; "));
  } catch (const std::exception&) {
    advice.clear();  // the error itself is what matters; the plan is advice
  }
  return Error(fmt::format(
      "step {}: out of memory on {} (micro-batch {} x {} tokens){}. No checkpoint was written "
      "for this step; the last one is untouched. See lmtune plan CONFIG",
      step, device.str(), config.train.micro_batch_size, config.data.seq_len, advice));
}

}  // namespace lmtune
