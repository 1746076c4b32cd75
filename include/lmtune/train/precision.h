// Mixed precision: train.precision: auto resolved for the device, and an autocast scope for the
// training precision on the model's device.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include <torch/torch.h>

#include "lmtune/core/config.h"

namespace lmtune {

// What the CPU probe measured: one linear layer's forward and backward, (tokens x in) -> out, as
// training runs it in each precision (autocast and the bf16 emulation included); the fastest of a
// few repeats of each, interleaved.
struct CpuPrecisionProbe {
  int64_t tokens = 0, in = 0, out = 0;
  double fp32_ms = 0, bf16_ms = 0;
};
CpuPrecisionProbe probe_cpu_precision(int64_t tokens, int64_t in, int64_t out);

// On the CPU, auto takes bf16 only when the probe finds it at least this much faster than fp32,
// the more exact of the two.
inline constexpr double kAutoBf16MinSpeedup = 1.1;

// Resolves train.precision: auto in `config` for `device`: on a GPU bf16 where it has bf16 tensor
// cores (compute capability 8.0 and later), else fp16 with loss scaling; on the CPU the faster of
// fp32 and bf16 by probe_cpu_precision, shaped like the model's MLP. Resuming (`resume_from`), the
// precision of the run being resumed. Returns the log line saying what was chosen and why, or ""
// when the precision was not auto.
std::string resolve_auto_precision(
    Config& config, torch::Device device,
    const std::optional<std::filesystem::path>& resume_from = std::nullopt);

// While alive, ops on `device` run under autocast to bf16 or fp16 (nothing for fp32). Matmuls run
// in the low precision; LibTorch keeps reductions such as the loss in fp32.
class AutocastScope {
 public:
  AutocastScope(Precision precision, torch::Device device);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  std::optional<c10::DeviceType> device_type_;
  bool previous_enabled_ = false;
  c10::ScalarType previous_dtype_ = c10::kFloat;
};

}  // namespace lmtune
