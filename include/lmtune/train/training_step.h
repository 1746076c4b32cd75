// One optimizer step, as the trainer and `lmtune bench` both run it: forward and backward of each
// micro-batch (the loss averaged over the target tokens of them all), fp16 loss scaling, gradient
// clipping, and an AdamW step that is skipped on the device when anything is inf or NaN.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/torch.h>

#include "lmtune/core/config.h"
#include "lmtune/data/dataset.h"
#include "lmtune/model/causal_lm.h"
#include "lmtune/train/loss_scaler.h"
#include "lmtune/train/optim.h"

namespace lmtune {

struct StepSettings {
  Precision precision = Precision::kBf16;
  torch::Device device = torch::kCPU;
  int64_t loss_chunk_tokens = 0;  // 0 = the plain loss (train/evaluate.h)
  double max_grad_norm = 1.0;     // 0 = no clipping
};

class TrainingStep {
 public:
  struct Result {
    torch::Tensor loss;            // mean loss per target token of the step (device scalar)
    torch::Tensor grad_norm;       // before clipping (device scalar)
    torch::Tensor loss_nonfinite;  // 1 when the loss was inf or NaN (the step was skipped)
  };

  // `optimizer` (and `scaler`, for fp16) must outlive the step.
  TrainingStep(CausalLM model, AdamW& optimizer, StepSettings settings,
               LossScaler* scaler = nullptr);

  // One optimizer step at learning rate `lr` over `micro_batches`. Nothing here reads a value back
  // to the host.
  Result run(const std::vector<Batch>& micro_batches, double lr);

  const std::vector<torch::Tensor>& parameters() const { return params_; }
  const StepSettings& settings() const { return settings_; }

 private:
  CausalLM model_;
  AdamW& optimizer_;
  StepSettings settings_;
  LossScaler* scaler_;
  std::vector<torch::Tensor> params_;  // what the optimizer updates
};

}  // namespace lmtune
