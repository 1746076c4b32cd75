// The memory planner: the predicted peak memory of a training run by part, from the config and the
// model's config.json alone (the model is built on the meta device, so no weight is read or
// allocated), whether it fits the device, which settings would make it fit, and the micro-batch
// train.micro_batch_size: auto resolves to. Never loads weights or data.
//
// Figures are MiB (2^20 bytes), as peak_memory_mb (train/memory.h) reports them. The arithmetic
// and its validation against measured peaks are in docs/memory.md ("What fits: lmtune plan").
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "lmtune/core/config.h"
#include "lmtune/core/errors.h"

namespace lmtune {

// Where a run would train, and what that device has to give.
struct DeviceMemory {
  torch::Device device = torch::kCPU;
  // What the process needs before any tensor of the run: on the CPU the resident set of an idle
  // lmtune (LibTorch's libraries and the CPU runtime), measured on this process; on a GPU 0, as
  // free memory is read after this process's own CUDA context exists.
  double runtime_mb = 0;
  double available_mb = 0;  // CPU: MemAvailable of /proc/meminfo; CUDA: free memory of the GPU
  bool native_bf16 = true;  // false: CPU bf16 runs as fp32 kernels on bf16 values (emulated)
  // The share of the tensors' bytes the allocator may hold idle on top of them: a tenth with
  // lmtune's host cache on the CPU (lmtune/core/host_allocator.h), else 0.
  double allocator_slack = 0;
};

// The device's memory measured now: the resident set of this process, MemAvailable, or the GPU's
// free memory.
DeviceMemory measure_device_memory(torch::Device device);

// The parameters of a config's model as a run holds them, counted on a model built on the meta
// device with the run's adapters, quantization and freezing applied.
struct ModelCensus {
  std::string model_type;
  int64_t parameters = 0;          // every parameter of the base, adapters excluded
  int64_t largest_parameter = 0;   // elements of the base's largest tensor
  int64_t weight_bytes = 0;        // the base as held: fp32, quantized projections as quantized
  int64_t quantized_weights = 0;   // parameters held quantized (0 without model.quantize)
  int64_t adapter_parameters = 0;  // LoRA A and B, fp32
  int64_t adapted_layers = 0;
  int64_t trainable = 0;                 // parameters with gradients and AdamW moments
  int64_t trainable_tensors = 0;         // each has an fp32 AdamW step count
  int64_t dense_projection_weights = 0;  // projection weights not quantized (autocast copies)
  int64_t output_weights = 0;            // the vocabulary projection (V x C), tied or not
  bool output_trainable = false;
  bool tied_embeddings = false;
  bool embedding_trainable = false;
  int64_t file_bytes = 0;             // the safetensors files read at load (0 for init: random)
  int64_t checkpoint_file_bytes = 0;  // the largest file a checkpoint writes
  // Activation bytes per token of each block, without and with activation checkpointing (its
  // input only), and outside the blocks; for the precision of the census's config.
  std::vector<double> block_bytes_per_token;
  std::vector<double> checkpointed_bytes_per_token;
  double outer_bytes_per_token = 0;
  int64_t hidden_size = 0;
  int64_t vocab_size = 0;
  // With distill.teacher: the frozen teacher's parameters (held in fp32) and the width of its
  // final hidden states (kept for the micro-batch).
  int64_t teacher_parameters = 0;
  int64_t teacher_hidden_size = 0;
};

// The census of `config`'s model on `memory`'s device. Reads model.path/config.json (and an
// adapter's adapter_config.json and weights with lora.adapter); InputError for a bad file,
// ConfigError for a LoRA target that matches nothing.
ModelCensus census_of(const Config& config, const DeviceMemory& memory);

// One row of the breakdown.
struct PlanPart {
  std::string key;     // JSON name: "weights", "gradients", ...
  std::string label;   // for the table: "weights (fp32, 124.4 M parameters)"
  double size_mb = 0;  // the part's own size, whenever it exists
  double peak_mb = 0;  // what it holds at the predicted peak
};

struct MemoryPlan {
  std::vector<PlanPart> parts;
  double total_mb = 0;      // the predicted peak: the parts' peak_mb summed
  std::string peak_moment;  // "at the end of backward", "while saving a checkpoint", ...
  int64_t micro_batch_size = 0;
  int64_t grad_accum_steps = 0;
  int64_t seq_len = 0;
  int64_t loss_chunk_tokens = 0;  // 0 = the plain loss
};

// The predicted peak of `config` (a number in train.micro_batch_size) on `memory`'s device.
MemoryPlan plan_memory(const Config& config, const ModelCensus& census, const DeviceMemory& memory);

// Whether a plan fits: its peak within `share` of the available memory.
bool plan_fits(const MemoryPlan& plan, const DeviceMemory& memory, double share = 1.0);

// train.micro_batch_size: auto leaves this share of the available memory to the plan, the rest
// as headroom for what a plan does not see (other processes, allocator slack).
inline constexpr double kAutoMemoryShare = 0.9;

// The micro-batch auto picks: the largest divisor of the step's sequences (grad_accum_steps x
// kAutoMicroBatchUnit) whose plan fits in kAutoMemoryShare of the available memory, and the
// accumulation that keeps the step's sequences; micro-batch 1 when none fits (fits false).
struct MicroBatchChoice {
  int64_t micro_batch_size = 1;
  int64_t grad_accum_steps = 1;
  MemoryPlan plan;
  bool fits = false;
};
MicroBatchChoice choose_micro_batch(const Config& config, const ModelCensus& census,
                                    const DeviceMemory& memory);

// A change of settings that lowers the peak, and the peak it predicts.
struct Lever {
  std::string what;                 // "gradient checkpointing"
  std::vector<Override> overrides;  // the --set flags that make it
  double total_mb = 0;
  bool fits = false;
};

// The levers not yet in force that lower the predicted peak, each alone on top of `config`, then
// all of them together: a smaller micro-batch with more accumulation, gradient checkpointing, the
// chunked loss, LoRA, a quantized base. A lever that does not fit at the config's micro-batch
// comes with the largest micro-batch that does, when there is one.
std::vector<Lever> plan_levers(const Config& config, const ModelCensus& census,
                               const DeviceMemory& memory);

// A lever as the command line spells it: "--set model.gradient_checkpointing=true ...".
std::string lever_flags(const Lever& lever);

// The plan as the JSON line `lmtune plan` ends with: parts (MiB at the peak, by key), total_mb,
// fits, available_mb, device, micro_batch_size, grad_accum_steps, peak.
nlohmann::json plan_json(const MemoryPlan& plan, const DeviceMemory& memory);

// Resolves train.micro_batch_size: auto in `config` for a run on `device`: the micro-batch and
// accumulation of the checkpoint being resumed from, else choose_micro_batch's. Returns the line
// to log, empty when the config names a number.
std::string resolve_auto_micro_batch(Config& config, torch::Device device,
                                     const std::optional<std::filesystem::path>& resume_from = {});

// What a training step that ran out of GPU memory reports: one line with the plan's peak and the
// levers that would fit (exit 1; no checkpoint is written).
Error out_of_memory_error(const Config& config, torch::Device device, int64_t step);

}  // namespace lmtune
