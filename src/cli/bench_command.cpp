// `lmtune bench [--n-layer ... --threads N]`: synthetic training steps, one JSON line of speed.
#include <iostream>

#include "commands.h"
#include "lmtune/core/errors.h"
#include "lmtune/core/schema.h"
#include "lmtune/train/bench.h"
#include "options.h"

namespace lmtune::cli {
namespace {

struct BenchArgs {
  BenchOptions options;
  std::string precision = "bf16";
  std::string device = "auto";
  std::string chunked_loss = "auto";
  std::string quantize = "none";
  std::string attention_backend = "auto";
};

void add_shape_options(CLI::App& command, BenchOptions& o) {
  auto positive = [&](const char* name, int64_t& value, const char* help) {
    command.add_option(name, value, help)->check(at_least(1))->capture_default_str();
  };
  positive("--n-layer", o.n_layer, "Transformer blocks");
  positive("--n-head", o.n_head, "Attention heads");
  positive("--n-embd", o.n_embd, "Channels (a multiple of --n-head)");
  command.add_option("--n-kv-head", o.n_kv_head, "llama: key/value heads; 0 = --n-head")
      ->check(at_least(0))
      ->capture_default_str();
  command.add_option("--mlp-width", o.mlp_width, "MLP inner width; 0 = 4 x --n-embd")
      ->check(at_least(0))
      ->capture_default_str();
  positive("--vocab", o.vocab, "Vocabulary size");
  positive("--batch", o.batch, "Sequences per step");
  positive("--seq", o.seq, "Tokens per sequence");
  positive("--steps", o.steps, "Timed steps");
  positive("--loss-chunk-tokens", o.loss_chunk_tokens, "Tokens per chunk of the chunked loss");
  command.add_option("--warmup", o.warmup, "Untimed steps first")
      ->check(at_least(0))
      ->capture_default_str();
  command.add_option("--threads", o.threads, "LibTorch threads; 0 = every core")
      ->check(at_least(0))
      ->capture_default_str();
  command
      .add_option("--lora-r", o.lora_r,
                  "LoRA: adapters of this rank (alpha 2r) on every linear layer but the output "
                  "head, base frozen; 0 trains every weight")
      ->check(at_least(0))
      ->capture_default_str();
  command
      .add_option("--vocab-padding", o.vocab_padding,
                  "Pad the output head's vocabulary to a multiple of this (plain loss), as "
                  "train.vocab_padding: 0 = auto (64 on a GPU, none on the CPU), 1 = none")
      ->check(at_least(0))
      ->capture_default_str();
  command.add_option("--profile", o.profile_dir,
                     "Directory: profile --profile-steps more steps after the timed ones and "
                     "write their Chrome trace there (trace.json; scripts/profile_table.py "
                     "ranks its kernels)");
  positive("--profile-steps", o.profile_steps, "Steps under the profiler (with --profile)");
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto* command = app.add_subcommand("bench",
                                     "Time synthetic training steps of a random GPT-2 or "
                                     "Llama-family model; prints one JSON line");
  auto args = std::make_shared<BenchArgs>();
  add_shape_options(*command, args->options);
  set_help_footer(*command,
                  "one JSON line: tokens_per_sec, step_ms, flops_per_token, mfu, peak_memory_mb "
                  "and the settings used (docs/benchmarks.md).");
  command->add_option("--arch", args->options.arch, "Architecture of the random model")
      ->check(CLI::IsMember({"gpt2", "llama"}))
      ->capture_default_str();
  command->add_option("--precision", args->precision, "Training precision")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  command->add_option("--device", args->device, "auto (CUDA when present), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  command
      ->add_option("--quantize", args->quantize,
                   "With --lora-r: the frozen base's linear weights held as none, int8 or nf4")
      ->check(CLI::IsMember({"none", "int8", "nf4"}))
      ->capture_default_str();
  command
      ->add_option("--chunked-loss", args->chunked_loss,
                   "The loss in chunks of tokens: auto (the trainer's rule), on or off")
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->capture_default_str();
  command->add_flag("--fused-kernels", args->options.fused_kernels,
                    "Fused CUDA kernels for residual add + norm and bias + GELU, as "
                    "train.fused_kernels");
  command->add_flag("--fused-clipping", args->options.fused_clipping,
                    "Clipping inside the fused AdamW kernel, as train.fused_clipping");
  command->add_flag("--fused-loss", args->options.fused_loss,
                    "The loss and its gradient in one CUDA kernel, as train.fused_loss");
  command
      ->add_option("--attention-backend", args->attention_backend,
                   "The attention kernel tried first, as train.attention_backend")
      ->check(CLI::IsMember({"auto", "flash", "efficient", "cudnn", "math"}))
      ->capture_default_str();
  command->callback([args] {
    BenchOptions& o = args->options;
    if (o.n_embd % o.n_head != 0)
      throw UsageError("--n-embd (" + std::to_string(o.n_embd) +
                       ") must be a multiple of --n-head (" + std::to_string(o.n_head) + ")");
    if (o.n_kv_head > 0 && o.n_head % o.n_kv_head != 0)
      throw UsageError("--n-head (" + std::to_string(o.n_head) +
                       ") must be a multiple of --n-kv-head (" + std::to_string(o.n_kv_head) + ")");
    // CLI11 has checked each value against the names the enums are read from.
    o.precision = *enum_from_name<Precision>(args->precision);
    o.device = *enum_from_name<Device>(args->device);
    o.chunked_loss = *enum_from_name<ChunkedLoss>(args->chunked_loss);
    o.quantize = *enum_from_name<Quantize>(args->quantize);
    o.attention_backend = *enum_from_name<AttentionBackend>(args->attention_backend);
    if (o.quantize != Quantize::kNone && o.lora_r == 0)
      throw UsageError(std::string("--quantize ") + args->quantize +
                       " needs --lora-r: a quantized base is frozen and only adapters train");
    std::cout << bench_json(o, run_bench(o)).dump() << std::endl;
  });
}

}  // namespace lmtune::cli
