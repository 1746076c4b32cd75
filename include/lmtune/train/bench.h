// Synthetic training-speed benchmark: full training steps (forward, loss, backward, clip, AdamW)
// of a random GPT-2 through the trainer's own functions, against this machine's matmul peak.
#pragma once

#include <cstdint>
#include <string>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "lmtune/core/config.h"
#include "lmtune/model/causal_lm.h"

namespace lmtune {

// The shape and settings of `lmtune bench`; the defaults are those of the plain-PyTorch reference
// that scripts/bench-vs-reference.sh times against it (docs/benchmarks.md).
struct BenchOptions {
  std::string arch = "gpt2";  // gpt2, or llama (RMSNorm, SwiGLU, rotary, grouped-query attention)
  int64_t n_layer = 6;
  int64_t n_head = 6;
  int64_t n_embd = 384;
  int64_t n_kv_head = 0;  // llama: key/value heads; 0 = n_head
  int64_t mlp_width = 0;  // MLP inner width; 0 = 4 x n_embd
  int64_t vocab = 50257;
  int64_t batch = 8;  // sequences per step
  int64_t seq = 256;  // tokens per sequence (also n_positions)
  Precision precision = Precision::kBf16;
  int64_t steps = 10;   // timed steps
  int64_t warmup = 3;   // untimed steps before them
  int64_t threads = 0;  // LibTorch intra-op threads; 0 = every core
  Device device = Device::kAuto;
  ChunkedLoss chunked_loss = ChunkedLoss::kAuto;                 // as train.chunked_loss
  int64_t loss_chunk_tokens = TrainConfig{}.loss_chunk_tokens;   // as train.loss_chunk_tokens
  int64_t vocab_padding = TrainConfig{}.vocab_padding;           // as train.vocab_padding
  bool fused_kernels = false;                                    // as train.fused_kernels
  bool fused_clipping = false;                                   // as train.fused_clipping
  bool fused_loss = false;                                       // as train.fused_loss
  AttentionBackend attention_backend = AttentionBackend::kAuto;  // as train.attention_backend
  int64_t lora_r = 0;  // > 0: LoRA of this rank (alpha 2r) on every linear layer, base frozen
  Quantize quantize = Quantize::kNone;  // the frozen base's linear weights (with lora_r > 0)
  // Non-empty: after the timed steps, `profile_steps` more run under LibTorch's profiler (CPU
  // operators, and CUDA kernels on a GPU), written as a Chrome trace to profile_dir/trace.json.
  std::string profile_dir;
  int64_t profile_steps = 3;
};

struct BenchResult {
  std::string device;
  int64_t threads = 0;
  int64_t parameters = 0;
  double step_ms = 0;
  double tokens_per_sec = 0;
  double flops_per_token = 0;         // training FLOPs: 6N plus the attention term
  double achieved_tflops = 0;         // flops_per_token x tokens_per_sec
  double peak_tflops = 0;             // the best matmul of the step's precision on this device
  double libtorch_matmul_tflops = 0;  // LibTorch's own kernel for that dtype (no emulation)
  double mfu = 0;                     // achieved / peak
  double peak_memory_mb = 0;          // of the training steps (warmup included), not of the setup
  bool host_cache = false;            // whether lmtune's caching CPU allocator was in place
  double host_cache_hit_rate = 0;     // share of the timed steps' large CPU allocations it served
  double final_loss = 0;              // mean loss of the last step (nats per token)
  int64_t loss_chunk_tokens = 0;      // 0 = plain loss, as the trainer resolves it by default
  int64_t vocab_padding = 0;          // the output head's padding multiple, resolved (0: none)
};

// Training FLOPs per token of `model` at `seq` tokens per sequence, as nanoGPT and PaLM count
// them: 6N for the N parameters other than embeddings (2 forward + 4 backward per weight; a token
// embedding tied to the output head counts once, as the head), plus attention's QK^T and
// AV over the full T x T square: 2 matmuls x 2 FLOPs x T x (H x D) per token and layer forward,
// x3 with backward = 12 L H D T. A frozen weight (under LoRA) counts 4: forward, and the backward
// product that carries the gradient to the layers below, but no gradient of its own.
double training_flops_per_token(const CausalLMImpl& model, int64_t seq);

// Measured TFLOP/s of an n x n x n matmul in `precision` on `device`, as the model runs it
// (autocast included); best of repeats over about `seconds`.
double matmul_tflops(Precision precision, torch::Device device, int64_t n, double seconds,
                     bool through_autocast);

BenchResult run_bench(const BenchOptions& options);

nlohmann::json bench_json(const BenchOptions& options, const BenchResult& result);

}  // namespace lmtune
