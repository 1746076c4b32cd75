// One optimizer step, as the trainer and `lmtune bench` both run it: forward and backward of each
// micro-batch (the loss averaged over the target tokens of them all), fp16 loss scaling, gradient
// clipping, and an AdamW step that is skipped on the device when anything is inf or NaN.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include <torch/torch.h>

#include "lmtune/core/config.h"
#include "lmtune/data/dataset.h"
#include "lmtune/model/causal_lm.h"
#include "lmtune/train/distributed.h"
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

  // Data parallel: gradients are summed over the ranks as the last micro-batch's backward runs,
  // and the step's loss over the ranks after it. Every rank then clips, checks and steps the same.
  void distribute(Distributed& group);

  // One optimizer step at learning rate `lr` over `micro_batches`, the loss averaged over
  // `step_targets` target tokens: those of all the micro-batches of the step on every rank (by
  // default, of `micro_batches`). Nothing here reads a value back to the host.
  Result run(const std::vector<Batch>& micro_batches, double lr,
             std::optional<int64_t> step_targets = std::nullopt);

  // The gradient all-reduce of data-parallel runs (nullptr otherwise).
  const GradientSync* gradient_sync() const { return sync_.get(); }

  const std::vector<torch::Tensor>& parameters() const { return params_; }
  const StepSettings& settings() const { return settings_; }

 private:
  CausalLM model_;
  AdamW& optimizer_;
  StepSettings settings_;
  LossScaler* scaler_;
  std::vector<torch::Tensor> params_;  // what the optimizer updates
  Distributed* group_ = nullptr;
  std::unique_ptr<GradientSync> sync_;
};

}  // namespace lmtune
