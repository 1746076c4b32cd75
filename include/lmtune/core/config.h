// The training config: nested structs with their defaults, loaded from JSON or YAML with --set
// overrides.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lmtune/core/schema.h"

namespace lmtune {

enum class Device { kAuto, kCpu, kCuda };
template <>
struct EnumNames<Device> {
  static constexpr EnumTable<Device, 3> kTable{
      {{Device::kAuto, "auto"}, {Device::kCpu, "cpu"}, {Device::kCuda, "cuda"}}};
};

enum class ModelInit { kPretrained, kRandom };
template <>
struct EnumNames<ModelInit> {
  static constexpr EnumTable<ModelInit, 2> kTable{
      {{ModelInit::kPretrained, "pretrained"}, {ModelInit::kRandom, "random"}}};
};

// kAuto is resolved to one of the others when a run starts (train/precision.h).
enum class Precision { kFp32, kBf16, kFp16, kAuto };
template <>
struct EnumNames<Precision> {
  static constexpr EnumTable<Precision, 4> kTable{{{Precision::kFp32, "fp32"},
                                                   {Precision::kBf16, "bf16"},
                                                   {Precision::kFp16, "fp16"},
                                                   {Precision::kAuto, "auto"}}};
};

enum class Schedule { kConstant, kLinear, kCosine };
template <>
struct EnumNames<Schedule> {
  static constexpr EnumTable<Schedule, 3> kTable{{{Schedule::kConstant, "constant"},
                                                  {Schedule::kLinear, "linear"},
                                                  {Schedule::kCosine, "cosine"}}};
};

struct RunConfig {
  std::string output_dir;  // run directory; empty = runs/<config file name without extension>
  int64_t seed = 1234;     // seeds weight init, dropout and the data order
  int64_t threads = 0;     // LibTorch intra-op threads; 0 = every core
  Device device = Device::kAuto;
  int64_t dist_timeout_s = 600;  // data parallel: longest wait for another rank, seconds

  template <class V>
  void visit(V& v) {
    v(output_dir, Field("output_dir",
                        "Run directory: config.json, metrics.jsonl, train.log, "
                        "tensorboard/, checkpoints/ and final/. Empty means "
                        "runs/<config name> in the working directory.")
                      .path());
    v(seed, Field("seed", "Seed for weight initialisation, dropout and the data order.").min(0));
    v(threads, Field("threads", "LibTorch intra-op threads; 0 uses every core.").min(0).max(1024));
    v(device, Field("device", "Where to train: auto picks CUDA when a GPU is visible."));
    v(dist_timeout_s,
      Field("dist_timeout_s",
            "Data-parallel runs (torchrun): the longest one rank waits for the others in a "
            "collective, in seconds. A rank that dies or hangs stops the rest after this; it "
            "must exceed the time rank 0 takes to save a checkpoint.")
          .min(1)
          .max(86400));
  }
};

enum class Quantize { kNone, kInt8, kNf4 };
template <>
struct EnumNames<Quantize> {
  static constexpr EnumTable<Quantize, 3> kTable{
      {{Quantize::kNone, "none"}, {Quantize::kInt8, "int8"}, {Quantize::kNf4, "nf4"}}};
};

struct ModelConfig {
  std::string path;       // Hugging Face model directory: config.json, model.safetensors, tokenizer
  std::string tokenizer;  // tokenizer directory; empty = path
  ModelInit init = ModelInit::kPretrained;
  bool gradient_checkpointing = false;  // recompute each block in backward instead of storing it
  int64_t checkpoint_every = 1;  // with gradient_checkpointing: every Nth block is recomputed
  Quantize quantize = Quantize::kNone;  // the frozen base's linear weights held as int8 or nf4
  bool double_quant = false;            // nf4: the block absmaxes quantized too (QLoRA)
  // Shape of a model trained from scratch (init: random); GPT-2 124M by default.
  int64_t n_layer = 12;
  int64_t n_head = 12;
  int64_t n_embd = 768;
  int64_t n_positions = 1024;
  int64_t vocab_size = 50257;

  template <class V>
  void visit(V& v) {
    v(path, Field("path",
                  "Hugging Face model directory (config.json, model.safetensors and "
                  "tokenizer files). With init: random, only its tokenizer is used.")
                .path());
    v(tokenizer, Field("tokenizer",
                       "Directory with the tokenizer files (vocab.json + merges.txt, "
                       "tokenizer.json or tokenizer.model); empty means model.path.")
                     .path());
    v(init, Field("init",
                  "pretrained loads the weights in path; random trains from scratch "
                  "with the shape below."));
    v(gradient_checkpointing,
      Field("gradient_checkpointing",
            "Recompute each transformer block in backward instead of storing its activations."));
    v(checkpoint_every, Field("checkpoint_every",
                              "With gradient_checkpointing: recompute every Nth block (1 = all "
                              "blocks; 2 = every other one, trading memory for speed).")
                            .min(1));
    v(quantize, Field("quantize",
                      "Hold the frozen base's linear weights quantized in memory and dequantize "
                      "them per layer on the fly: int8 (per output row) or nf4 (4-bit NormalFloat "
                      "in blocks of 64, as bitsandbytes and QLoRA). Needs lora: only adapters "
                      "train over a quantized base."));
    v(double_quant, Field("double_quant",
                          "With quantize: nf4, quantize the per-block absmax values too (8-bit, "
                          "blocks of 256, as QLoRA and bitsandbytes' double quantization): about "
                          "0.37 fewer bits per weight."));
    v(n_layer, Field("n_layer", "Transformer blocks (init: random).").min(1));
    v(n_head, Field("n_head", "Attention heads per block (init: random).").min(1));
    v(n_embd, Field("n_embd", "Width of the residual stream (init: random).").min(1));
    v(n_positions,
      Field("n_positions", "Longest sequence the model accepts (init: random).").min(1));
    v(vocab_size, Field("vocab_size", "Vocabulary size (init: random).").min(1));
  }
};

enum class Packing { kPack, kPad };
template <>
struct EnumNames<Packing> {
  static constexpr EnumTable<Packing, 2> kTable{{{Packing::kPack, "pack"}, {Packing::kPad, "pad"}}};
};

enum class TxtDocuments { kBlankLines, kFile };
template <>
struct EnumNames<TxtDocuments> {
  static constexpr EnumTable<TxtDocuments, 2> kTable{
      {{TxtDocuments::kBlankLines, "blank_lines"}, {TxtDocuments::kFile, "file"}}};
};

enum class DataOrder { kShuffle, kSequential, kCurriculum };
template <>
struct EnumNames<DataOrder> {
  static constexpr EnumTable<DataOrder, 3> kTable{{{DataOrder::kShuffle, "shuffle"},
                                                   {DataOrder::kSequential, "sequential"},
                                                   {DataOrder::kCurriculum, "curriculum"}}};
};

enum class CurriculumScore { kLength, kLoss };
template <>
struct EnumNames<CurriculumScore> {
  static constexpr EnumTable<CurriculumScore, 2> kTable{
      {{CurriculumScore::kLength, "length"}, {CurriculumScore::kLoss, "loss"}}};
};

struct DataConfig {
  std::string train;            // training data: a .txt or .jsonl file, or a directory of them
  std::string validation;       // validation data; empty = split off validation_split of train
  double validation_split = 0;  // fraction of the training documents held out for validation
  int64_t seq_len = 0;          // tokens per training window; 0 = the model's context, capped
  Packing packing = Packing::kPack;
  TxtDocuments txt_documents = TxtDocuments::kBlankLines;
  std::string text_field = "text";      // .jsonl field of a plain document
  std::string prompt_field = "prompt";  // .jsonl fields of a prompt/completion pair
  std::string completion_field = "completion";
  bool loss_on_prompt = false;  // prompt tokens carry loss too
  bool strip_urls = false;
  bool strip_html = false;
  bool drop_control_chars = true;
  int64_t min_chars = 0;        // documents shorter than this (after cleaning) are dropped
  bool dedupe = true;           // drop exact duplicate documents
  bool skip_bad_lines = false;  // skip invalid .jsonl lines (counted) instead of failing
  std::string cache_dir;        // token cache; empty = the machine's cache (see default_cache_root)
  DataOrder order = DataOrder::kShuffle;  // the order training windows are drawn in
  CurriculumScore curriculum_score = CurriculumScore::kLength;  // order curriculum: easy to hard by
  double curriculum_start_fraction = 0.2;  // of the ranked windows available at step 0
  int64_t curriculum_pace_steps = 0;       // optimizer steps until all are; 0 = the whole run

  template <class V>
  void visit(V& v) {
    v(train, Field("train",
                   "Training data: a .txt or .jsonl file, or a directory of them (read in name "
                   "order). Required.")
                 .path());
    v(validation, Field("validation",
                        "Validation data (file or directory); empty means none, or a split of "
                        "train when validation_split is set.")
                      .path());
    v(validation_split,
      Field("validation_split", "Fraction of the training documents held out for validation.")
          .min(0)
          .max(0.5));
    v(seq_len, Field("seq_len",
                     "Tokens per training sequence; at most the model's context (n_positions). 0 "
                     "means the model's context, at most 1024.")
                   .min(0));
    v(packing, Field("packing",
                     "pack joins documents with end-of-text into full windows; pad gives each "
                     "document its own windows, padded (padding carries no loss)."));
    v(txt_documents, Field("txt_documents",
                           "How a .txt file splits into documents: at blank lines, or one "
                           "document per file."));
    v(text_field, Field("text_field", "Field of a .jsonl line holding a plain document."));
    v(prompt_field, Field("prompt_field", "Field of a .jsonl line holding a prompt."));
    v(completion_field,
      Field("completion_field", "Field of a .jsonl line holding the prompt's completion."));
    v(loss_on_prompt, Field("loss_on_prompt",
                            "Prompt tokens carry loss too (by default only completion tokens "
                            "do)."));
    v(strip_urls, Field("strip_urls", "Remove http(s):// and www. URLs from documents."));
    v(strip_html, Field("strip_html", "Remove HTML tags from documents."));
    v(drop_control_chars,
      Field("drop_control_chars", "Remove control characters other than newline and tab."));
    v(min_chars, Field("min_chars",
                       "Drop documents shorter than this many characters after "
                       "cleaning; 0 keeps all but empty ones.")
                     .min(0));
    v(dedupe, Field("dedupe", "Drop exact duplicate documents (by hash of their cleaned text)."));
    v(skip_bad_lines, Field("skip_bad_lines",
                            "Skip (and count) invalid .jsonl lines and lines missing their "
                            "field, instead of stopping with an error."));
    v(cache_dir, Field("cache_dir",
                       "Token cache directory; empty means the machine's cache, shared by every "
                       "run: $LMTUNE_CACHE_DIR/tokens, else $XDG_CACHE_HOME/lmtune/tokens, else "
                       "~/.cache/lmtune/tokens. A cache is reused while the data files, tokenizer "
                       "and these options are unchanged.")
                     .path());
    v(order, Field("order",
                   "Order of the training windows: shuffle draws each epoch in a new random order "
                   "(from run.seed); sequential takes them in file order every epoch; curriculum "
                   "ranks them easy to hard by curriculum_score and opens the ranked list "
                   "gradually (docs/data.md)."));
    v(curriculum_score, Field("curriculum_score",
                              "order: curriculum: how windows are ranked. length puts windows of "
                              "the shortest documents first; loss, the windows the starting "
                              "model predicts best (scored once, kept in the token cache)."));
    v(curriculum_start_fraction,
      Field("curriculum_start_fraction",
            "order: curriculum: the easiest fraction of the windows that batches are drawn from "
            "at step 0; it grows linearly to all of them over curriculum_pace_steps.")
          .above(0)
          .max(1));
    v(curriculum_pace_steps,
      Field("curriculum_pace_steps",
            "order: curriculum: optimizer steps until every window is available; after them "
            "batches are shuffled epochs as with shuffle. 0 means the whole run.")
          .min(0));
  }
};

enum class ChunkedLoss { kAuto, kOn, kOff };
template <>
struct EnumNames<ChunkedLoss> {
  static constexpr EnumTable<ChunkedLoss, 3> kTable{
      {{ChunkedLoss::kAuto, "auto"}, {ChunkedLoss::kOn, "on"}, {ChunkedLoss::kOff, "off"}}};
};

// train.micro_batch_size: auto, as the config holds it. A step then trains grad_accum_steps x
// kAutoMicroBatchUnit sequences, what the default micro-batch of 8 would, split as the plan says.
inline constexpr int64_t kAutoMicroBatch = 0;
inline constexpr int64_t kAutoMicroBatchUnit = 8;

// Which scaled-dot-product attention kernel LibTorch tries first (train.attention_backend).
enum class AttentionBackend { kAuto, kFlash, kEfficient, kCudnn, kMath };
template <>
struct EnumNames<AttentionBackend> {
  static constexpr EnumTable<AttentionBackend, 5> kTable{
      {{AttentionBackend::kAuto, "auto"},
       {AttentionBackend::kFlash, "flash"},
       {AttentionBackend::kEfficient, "efficient"},
       {AttentionBackend::kCudnn, "cudnn"},
       {AttentionBackend::kMath, "math"}}};
};

// train.vocab_padding: auto (held as 0): 64 on a GPU, none on the CPU.
inline constexpr int64_t kAutoVocabPadding = 0;
inline constexpr int64_t kGpuVocabPadding = 64;

struct TrainConfig {
  int64_t max_steps = 1000;      // optimizer steps
  int64_t epochs = 0;            // passes over the training data; > 0 replaces max_steps
  int64_t micro_batch_size = 8;  // sequences per forward/backward pass; kAutoMicroBatch = auto
  int64_t grad_accum_steps = 1;  // micro-batches per optimizer step
  Precision precision = Precision::kAuto;
  double lr = 3.0e-4;         // peak learning rate, reached after warmup
  double min_lr = 0.0;        // floor of the schedule
  double weight_decay = 0.1;  // AdamW decoupled decay; never applied to biases or LayerNorm
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1.0e-8;
  Schedule schedule = Schedule::kCosine;
  int64_t warmup_steps = 0;    // linear warmup from 0 to lr
  double max_grad_norm = 1.0;  // clip the global gradient norm; 0 disables clipping
  ChunkedLoss chunked_loss = ChunkedLoss::kAuto;  // vocabulary projection + loss in chunks
  int64_t loss_chunk_tokens = 512;                // tokens per chunk of the chunked loss
  int64_t vocab_padding = kAutoVocabPadding;      // plain loss: V padded to a multiple of this
  bool fused_kernels = false;   // CUDA kernels for residual add + norm and bias + GELU
  bool fused_clipping = false;  // clipping and fp16 unscaling inside the fused AdamW kernel
  bool fused_loss = false;      // the loss and the logits' gradient in one CUDA kernel
  AttentionBackend attention_backend = AttentionBackend::kAuto;
  bool freeze_embeddings = false;             // wte and wpe get no gradient and no optimizer state
  int64_t freeze_layers = 0;                  // the first N blocks are frozen
  double loss_scale_init = 65536.0;           // fp16: initial dynamic loss scale
  int64_t loss_scale_growth_interval = 2000;  // fp16: steps without overflow before doubling
  double loss_scale_backoff = 0.5;            // fp16: factor applied on an overflow
  int64_t max_nonfinite_steps = 5;            // stop after this many consecutive non-finite losses

  template <class V>
  void visit(V& v) {
    v(max_steps, Field("max_steps", "Optimizer steps to train (unless epochs is set).").min(1));
    v(epochs, Field("epochs",
                    "Passes over the training data; when > 0 it sets the number of steps "
                    "instead of max_steps.")
                  .min(0));
    v(micro_batch_size, Field("micro_batch_size",
                              "Sequences per forward/backward pass, or auto: the largest that "
                              "lmtune plan predicts fits in 90% of the device's available memory, "
                              "with grad_accum_steps raised so that a step still trains "
                              "grad_accum_steps x 8 sequences (docs/memory.md).")
                            .min(1)
                            .or_auto());
    v(grad_accum_steps,
      Field("grad_accum_steps", "Micro-batches accumulated into one optimizer step.").min(1));
    v(precision, Field("precision",
                       "Compute precision: fp32, bf16 autocast, fp16 autocast with loss "
                       "scaling (CUDA only), or auto: bf16 on GPUs that have it, else fp16; on "
                       "the CPU the faster of fp32 and bf16 by a probe at start-up (the choice "
                       "and its reason are logged; config.json records the choice)."));
    v(lr, Field("lr", "Peak learning rate, reached at the end of warmup.").above(0));
    v(min_lr, Field("min_lr", "Learning-rate floor of the schedule.").min(0));
    v(weight_decay, Field("weight_decay",
                          "AdamW decoupled weight decay (not applied to biases "
                          "and LayerNorm weights).")
                        .min(0));
    v(beta1, Field("beta1", "AdamW first-moment decay.").min(0).max(1));
    v(beta2, Field("beta2", "AdamW second-moment decay.").min(0).max(1));
    v(eps, Field("eps", "AdamW denominator epsilon.").above(0));
    v(schedule, Field("schedule", "Learning-rate schedule after warmup."));
    v(warmup_steps, Field("warmup_steps", "Steps of linear warmup from 0 to lr.").min(0));
    v(max_grad_norm,
      Field("max_grad_norm", "Clip the global gradient norm to this; 0 disables clipping.").min(0));
    v(chunked_loss, Field("chunked_loss",
                          "auto, on or off: compute the vocabulary projection, the loss and its "
                          "gradients in chunks of loss_chunk_tokens tokens, so the full logits "
                          "never exist. auto chunks when a micro-batch's fp32 logits "
                          "(micro_batch_size x seq_len x V x 4 bytes) exceed 64 MiB on a CPU, or "
                          "an eighth of the GPU's memory on a GPU (docs/memory.md)."));
    v(loss_chunk_tokens,
      Field("loss_chunk_tokens", "Tokens per chunk of the chunked loss.").min(1));
    v(vocab_padding,
      Field("vocab_padding",
            "With the plain loss, project onto the vocabulary padded with zero rows to a "
            "multiple of this and drop the padded logits: the same values from matrix products "
            "of sizes GPU libraries run fast (GPT-2's odd 50,257 gets slow kernels; padded to "
            "64, GPT-2 124M trained 1.45x faster on an H200: docs/benchmarks.md). auto: 64 on a "
            "GPU, none on the CPU (0 reads as auto); 1 = none.")
          .min(0)
          .or_auto());
    v(fused_kernels,
      Field("fused_kernels",
            "On a GPU, run each residual add with the LayerNorm/RMSNorm after it, and GPT-2's "
            "bias + GELU, as one CUDA kernel each (forward and backward) instead of several; on "
            "the CPU the same maths in plain operations. Off by default: on an H200 they were "
            "2.4% slower than LibTorch's separate kernels for GPT-2 124M (docs/benchmarks.md)."));
    v(fused_clipping,
      Field("fused_clipping",
            "Apply gradient clipping (and fp16's unscaling) inside the fused AdamW kernel as it "
            "reads the gradients, instead of in passes over them of their own. Off by default: "
            "no measurable change for GPT-2 124M on an H200."));
    v(fused_loss,
      Field("fused_loss",
            "On a GPU, compute the loss and the gradient of the logits in one CUDA kernel that "
            "reads the bf16/fp16 logits twice and writes the gradient over them, instead of "
            "LibTorch's fp32 copy, log-softmax and its backward; the output head's matrix "
            "products stay cuBLAS's. On the CPU the same maths in plain operations. Off by "
            "default until measured on a GPU (docs/benchmarks.md)."));
    v(attention_backend,
      Field("attention_backend",
            "The attention kernel LibTorch tries first: auto (its own order), flash, efficient, "
            "cudnn (GPU), or math (the unfused reference, everywhere). One that cannot run an "
            "input falls back to the next."));
    v(freeze_embeddings, Field("freeze_embeddings",
                               "Freeze the token and position embeddings (wte, wpe); a tied "
                               "lm_head is frozen with them."));
    v(freeze_layers, Field("freeze_layers",
                           "Freeze the first N transformer blocks; more than the model's layers "
                           "is an error.")
                         .min(0));
    v(loss_scale_init, Field("loss_scale_init", "fp16: initial dynamic loss scale.").above(0));
    v(loss_scale_growth_interval,
      Field("loss_scale_growth_interval",
            "fp16: steps without inf/NaN gradients before the loss scale doubles.")
          .min(1));
    v(loss_scale_backoff, Field("loss_scale_backoff",
                                "fp16: factor the loss scale is multiplied by when a step's "
                                "gradients overflow (the step is skipped).")
                              .above(0)
                              .max(0.99));
    v(max_nonfinite_steps, Field("max_nonfinite_steps",
                                 "Stop after this many consecutive steps with a non-finite loss "
                                 "(bf16/fp32), naming the step.")
                               .min(1));
  }
};

struct EvalConfig {
  int64_t every_steps = 100;  // 0 = only at the end
  int64_t max_batches = 0;    // 0 = the whole validation set
  int64_t patience = 0;       // stop after this many evaluations without improvement; 0 = never
  std::vector<std::string> sample_prompts;  // greedy continuations written to TensorBoard
  int64_t sample_new_tokens = 32;           // tokens generated per sample prompt at most

  template <class V>
  void visit(V& v) {
    v(every_steps, Field("every_steps",
                         "Evaluate every N optimizer steps; 0 evaluates only at "
                         "the end.")
                       .min(0));
    v(max_batches,
      Field("max_batches", "Validation batches per evaluation; 0 uses the whole set.").min(0));
    v(patience, Field("patience",
                      "Early stopping: stop when the validation loss has not improved for this "
                      "many evaluations; 0 never stops early.")
                    .min(0));
    v(sample_prompts, Field("sample_prompts",
                            "Prompts continued greedily by the model at each evaluation; the "
                            "continuations are written to TensorBoard as text (with "
                            "logging.tensorboard)."));
    v(sample_new_tokens,
      Field("sample_new_tokens", "Tokens generated at most for each of sample_prompts.")
          .min(1)
          .max(4096));
  }
};

struct CheckpointConfig {
  int64_t every_steps = 100;  // 0 = only at the end and on a signal
  int64_t keep_last = 3;      // newest checkpoints kept, besides the best one
  double every_minutes = 0;   // also save when this many minutes passed since the last save

  template <class V>
  void visit(V& v) {
    v(every_steps, Field("every_steps",
                         "Save a checkpoint every N optimizer steps; 0 saves only "
                         "at the end and on SIGINT/SIGTERM.")
                       .min(0));
    v(every_minutes, Field("every_minutes",
                           "Also save a checkpoint when this many minutes have passed since "
                           "the last one; 0 turns the timer off.")
                         .min(0));
    v(keep_last, Field("keep_last",
                       "Newest checkpoints kept, besides the best by validation "
                       "loss.")
                     .min(1));
  }
};

struct LoggingConfig {
  int64_t every_steps = 10;
  bool tensorboard = true;  // event files in RUN/tensorboard/

  template <class V>
  void visit(V& v) {
    v(every_steps, Field("every_steps",
                         "Log a progress line and a metrics.jsonl record every N "
                         "optimizer steps.")
                       .min(1));
    v(tensorboard, Field("tensorboard",
                         "Write TensorBoard event files in tensorboard/ of the run directory: "
                         "the metrics.jsonl values as scalars, the resolved config and "
                         "eval.sample_prompts' continuations as text."));
  }
};

struct LoraConfig {
  bool enabled = false;  // a lora section in the config file turns it on
  int64_t r = 16;        // rank of each adapter
  double alpha = 32;     // the adapter's output is scaled by alpha / r (alpha / sqrt(r) rsLoRA)
  double dropout = 0.05;
  std::vector<std::string> target_modules;  // PEFT's names; empty = PEFT's default for the model
  bool use_rslora = false;
  std::vector<std::string> modules_to_save;  // modules trained in full and saved with the adapter
  std::string adapter;                       // an adapter directory to continue; empty = fresh
  bool save_merged = false;                  // also write final/merged: base + adapter, plain HF

  template <class V>
  void visit(V& v) {
    v(enabled, Field("enabled",
                     "Train low-rank adapters (LoRA) over a frozen base instead of every weight. "
                     "A lora section in the config file turns this on unless it says false."));
    v(r, Field("r", "Rank of each adapter.").min(1));
    v(alpha, Field("alpha", "Adapter scale numerator: outputs are scaled by alpha / r.").above(0));
    v(dropout, Field("dropout", "Dropout on the adapter's input while training.").min(0).max(0.99));
    v(target_modules,
      Field("target_modules",
            "Linear layers that get adapters, by PEFT's module names (a name matches every module "
            "it ends, e.g. c_attn, q_proj), or all-linear for every one but the output head. "
            "Empty means PEFT's default: c_attn for GPT-2, q_proj and v_proj for the Llama "
            "family."));
    v(use_rslora,
      Field("use_rslora", "Rank-stabilised LoRA: scale by alpha / sqrt(r) instead of alpha / r."));
    v(modules_to_save,
      Field("modules_to_save",
            "Modules trained in full and saved in the adapter (PEFT's modules_to_save), e.g. "
            "lm_head, embed_tokens, wte, ln_f."));
    v(adapter, Field("adapter",
                     "An adapter directory (lmtune's or PEFT's) to continue training; its rank, "
                     "alpha and targets replace the keys above. Empty starts fresh adapters.")
                   .path());
    v(save_merged, Field("save_merged",
                         "Also write final/merged: the base with the adapter folded in, as a "
                         "plain Hugging Face model."));
  }
};

enum class DistillLoss { kKl, kReverseKl };
template <>
struct EnumNames<DistillLoss> {
  static constexpr EnumTable<DistillLoss, 2> kTable{
      {{DistillLoss::kKl, "kl"}, {DistillLoss::kReverseKl, "reverse_kl"}}};
};

struct DistillConfig {
  std::string teacher;       // teacher model directory; empty = no distillation
  double alpha = 0.5;        // weight of the distillation term; the cross-entropy gets 1 - alpha
  double temperature = 2.0;  // both distributions softened by it; the term is scaled by T^2
  DistillLoss loss = DistillLoss::kKl;

  template <class V>
  void visit(V& v) {
    v(teacher, Field("teacher",
                     "Teacher model directory (any supported family) for knowledge distillation; "
                     "it must have the student's tokenizer. Empty trains without a teacher.")
                   .path());
    v(alpha, Field("alpha",
                   "Weight of the distillation term: loss = (1 - alpha) x cross-entropy + alpha x "
                   "T^2 x KL (docs/distillation.md).")
                 .min(0)
                 .max(1));
    v(temperature, Field("temperature",
                         "Softmax temperature T of both the teacher's and the student's logits "
                         "in the distillation term.")
                       .above(0));
    v(loss, Field("loss",
                  "kl: forward KL(teacher || student), mass-covering; reverse_kl: KL(student || "
                  "teacher), mode-seeking."));
  }
};

// The whole config. Sections and keys are listed once, in the visit() functions above.
struct Config {
  RunConfig run;
  ModelConfig model;
  DataConfig data;
  TrainConfig train;
  EvalConfig eval;
  CheckpointConfig checkpoint;
  LoggingConfig logging;
  LoraConfig lora;
  DistillConfig distill;

  template <class V>
  void visit(V& v) {
    v.section("run", run);
    v.section("model", model);
    v.section("data", data);
    v.section("train", train);
    v.section("eval", eval);
    v.section("checkpoint", checkpoint);
    v.section("logging", logging);
    v.section("lora", lora);
    v.section("distill", distill);
  }
};

// data.seq_len: 0 becomes the model's context, but never more than this many tokens, so that the
// default fits in memory for models with long contexts (8 sequences x 1024 tokens per micro-batch).
inline constexpr int64_t kMaxDefaultSeqLen = 1024;

// One key of the schema, for documentation and for typing --set values.
struct KeyInfo {
  std::string path;  // dotted, e.g. "train.lr"
  std::string type;  // integer, number, boolean, string, path, list, or "a|b|c" for an enum
  nlohmann::json default_value;
  std::string help;
  std::string range;  // the allowed values of a bounded number ("[0, 0.5]", "> 0"); empty if none
};

// Every key of the schema in declaration order.
std::vector<KeyInfo> config_keys();

// The key reference of docs/config.md: per section a Markdown table of key, type, default, range
// and meaning (`lmtune config --keys` prints it; a test keeps the docs equal to it).
std::string config_keys_markdown();

// One `--set key.path=value` override.
struct Override {
  std::string key;
  std::string value;
};

// Parses "a.b=c"; throws UsageError when there is no '=' or no key.
Override parse_override(const std::string& text);

// Reads a .json, .yaml or .yml file into a JSON tree. Throws ConfigError naming the file, line and
// column of a syntax error, or a top level that is not a mapping (`expected` says of what),
// InputError when the file cannot be read.
nlohmann::json read_config_tree(
    const std::filesystem::path& file,
    const char* expected = "a mapping of sections (run, model, data, ...)");

// Loads, overrides and validates a config. Relative paths in the file are resolved against the
// file's directory, relative paths given with --set against the working directory. Throws a
// ConfigError listing every problem found.
Config load_config(const std::filesystem::path& file, const std::vector<Override>& overrides = {});

// As load_config, for a config tree already read (a sweep's base and its trials): relative paths
// resolve against `base_dir`, and messages name `source`.
Config load_config_tree(nlohmann::json tree, const std::filesystem::path& base_dir,
                        const std::string& source, const std::vector<Override>& overrides = {});

// For readers of other user files (the sweep file) that report problems as the config does: a
// value as messages describe it ("number 3", "a list"), and the closest of `candidates` to a
// misspelt `name`, if it is close enough to be a plausible typo.
std::string describe_value(const nlohmann::json& value);
std::optional<std::string> closest_name(const std::string& name,
                                        const std::vector<std::string>& candidates);
// "unknown key; did you mean 'train.lr'?" for a dotted name that is no config key, as the config
// itself reports one (typos, names from other trainers, a key of another section).
std::string unknown_config_key_message(const std::string& dotted_name);

// The resolved config with every default filled in.
nlohmann::json config_to_json(const Config& config);

// A resolved config as an earlier lmtune recorded it (a checkpoint's), read through today's
// schema: keys added since take their defaults, and values whose spelling changed are written
// as today's (train.vocab_padding 0 as auto). Returned as it is if it no longer validates.
nlohmann::json with_current_defaults(const nlohmann::json& recorded);

}  // namespace lmtune
