// Mixed precision: an autocast scope for the training precision on the model's device.
#pragma once

#include <optional>

#include <torch/torch.h>

#include "lmtune/core/config.h"

namespace lmtune {

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
