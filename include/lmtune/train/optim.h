// AdamW with parameter groups (fused kernel), learning-rate schedules, and global-norm clipping.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "lmtune/core/config.h"

namespace lmtune {

struct ParamGroup {
  std::vector<std::string> names;
  std::vector<torch::Tensor> params;
  double weight_decay = 0;
};

// Splits trainable parameters into the decayed group (matrices and embeddings) and the undecayed
// one (biases and LayerNorm weights: every parameter with fewer than 2 dimensions).
std::vector<ParamGroup> decay_groups(const torch::nn::Module& model, double weight_decay);

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
};

// AdamW (decoupled weight decay) over parameter groups. Moments are fp32 on the parameters'
// device; each group takes one fused kernel call per step instead of a per-parameter loop.
class AdamW {
 public:
  AdamW(std::vector<ParamGroup> groups, AdamWOptions options);

  // One update at learning rate lr. A defined found_inf (fp32 device scalar) equal to 1 skips it
  // on the device, step counts included, without a host synchronisation. A defined
  // grad_divisor (fp32 device scalar) divides every gradient inside the fused kernel, as it
  // reads them: clipping and the fp16 loss scale's unscaling without passes of their own.
  void step(double lr, const torch::Tensor& found_inf = {}, const torch::Tensor& grad_divisor = {});
  void zero_grad();

  // Per parameter, in group order: first and second moments, and the step count.
  struct State {
    std::string name;
    torch::Tensor exp_avg;
    torch::Tensor exp_avg_sq;
    torch::Tensor step;  // fp32 scalar, as the fused kernel keeps it
  };
  std::vector<State>& state() { return state_; }
  const std::vector<State>& state() const { return state_; }
  const std::vector<ParamGroup>& groups() const { return groups_; }

 private:
  std::vector<ParamGroup> groups_;
  AdamWOptions options_;
  std::vector<State> state_;
};

// The learning rate at optimizer step `step` (0-based): linear warmup to lr, then the schedule's
// decay towards min_lr at max_steps.
double learning_rate(const TrainConfig& train, int64_t step);

// Global L2 norm of the gradients of `params` (an fp32 scalar tensor, not synchronised with the
// host).
torch::Tensor grad_norm(const std::vector<torch::Tensor>& params);

// What clipping multiplies the gradients by so that their norm `total` does not exceed max_norm
// (> 0): min(1, max_norm / (total + 1e-6)), as a device scalar.
torch::Tensor clip_coefficient(const torch::Tensor& total, double max_norm);

// Global L2 norm of the gradients of `params` (a scalar tensor, not synchronised with the host),
// scaling them so it does not exceed max_norm when max_norm > 0.
torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm);

}  // namespace lmtune
