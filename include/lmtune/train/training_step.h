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
#include "lmtune/model/distill_loss.h"
#include "lmtune/train/distributed.h"
#include "lmtune/train/loss_scaler.h"
#include "lmtune/train/optim.h"

namespace lmtune {

struct StepSettings {
  Precision precision = Precision::kBf16;
  torch::Device device = torch::kCPU;
  int64_t loss_chunk_tokens = 0;  // 0 = the plain loss (train/evaluate.h)
  double max_grad_norm = 1.0;     // 0 = no clipping
  // train.fused_clipping: clipping and fp16 unscaling applied by the fused AdamW kernel as it
  // reads the gradients (their norm is the only other pass over them).
  bool fused_clipping = false;
  // train.fused_loss: the loss and the logits' gradient in one CUDA kernel (summed_token_loss).
  bool fused_loss = false;
};

// Knowledge distillation: the step's loss becomes (1 - alpha) x CE + alpha x T^2 x KL against a
// frozen teacher (docs/distillation.md).
struct DistillSettings {
  CausalLM teacher;  // frozen, in eval mode, on the step's device
  double alpha = 0.5;
  DistillTermsOptions options;
  int64_t chunk_tokens = 512;  // positions per chunk of the distillation terms
};

class TrainingStep {
 public:
  struct Result {
    torch::Tensor loss;            // mean loss per target token of the step (device scalar)
    torch::Tensor grad_norm;       // before clipping (device scalar)
    torch::Tensor loss_nonfinite;  // 1 when the loss was inf or NaN (the step was skipped)
    torch::Tensor terms;  // with distillation: (2) mean CE and KL per target token; else undefined
  };

  // `optimizer` (and `scaler`, for fp16) must outlive the step.
  TrainingStep(CausalLM model, AdamW& optimizer, StepSettings settings,
               LossScaler* scaler = nullptr);

  // Data parallel: gradients are summed over the ranks as the last micro-batch's backward runs,
  // and the step's loss over the ranks after it. Every rank then clips, checks and steps the same.
  void distribute(Distributed& group);

  // Trains against a teacher from now on.
  void distill(DistillSettings settings) { distill_ = std::move(settings); }

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
  // A micro-batch's (2) summed CE and KL against the teacher.
  torch::Tensor distillation_terms(const Batch& batch) const;
  // The loss the step minimises from the (2) terms, already normalised per target token.
  torch::Tensor distill_loss(const torch::Tensor& terms) const;

  CausalLM model_;
  AdamW& optimizer_;
  StepSettings settings_;
  LossScaler* scaler_;
  std::vector<torch::Tensor> params_;  // what the optimizer updates
  Distributed* group_ = nullptr;
  std::unique_ptr<GradientSync> sync_;
  std::optional<DistillSettings> distill_;
};

}  // namespace lmtune
