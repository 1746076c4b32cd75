#include "lmtune/train/optim.h"

#include <cmath>

namespace lmtune {

std::vector<ParamGroup> decay_groups(const torch::nn::Module& model, double weight_decay) {
  ParamGroup decayed, undecayed;
  decayed.weight_decay = weight_decay;
  for (const auto& item : model.named_parameters()) {
    if (!item.value().requires_grad()) continue;
    ParamGroup& group = item.value().dim() >= 2 ? decayed : undecayed;
    group.names.push_back(item.key());
    group.params.push_back(item.value());
  }
  return {decayed, undecayed};
}

AdamW::AdamW(std::vector<ParamGroup> groups, AdamWOptions options)
    : groups_(std::move(groups)), options_(options) {
  for (const auto& group : groups_) {
    for (std::size_t i = 0; i < group.params.size(); ++i) {
      const auto& p = group.params[i];
      auto fp32 = p.options().dtype(torch::kFloat32);
      state_.push_back({group.names[i], torch::zeros_like(p, fp32), torch::zeros_like(p, fp32),
                        torch::zeros({}, fp32)});
    }
  }
}

void AdamW::step(double lr, const torch::Tensor& found_inf, const torch::Tensor& grad_divisor) {
  torch::NoGradGuard no_grad;
  std::size_t offset = 0;
  for (const auto& group : groups_) {
    std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs, steps;
    for (std::size_t i = 0; i < group.params.size(); ++i) {
      const auto& p = group.params[i];
      State& s = state_[offset + i];
      if (!p.grad().defined()) continue;
      params.push_back(p);
      grads.push_back(p.grad());
      exp_avgs.push_back(s.exp_avg);
      exp_avg_sqs.push_back(s.exp_avg_sq);
      steps.push_back(s.step);
    }
    offset += group.params.size();
    if (params.empty()) continue;
    // The fused kernel reads the step counts for bias correction but leaves counting to the
    // caller; it applies the update and the decoupled decay p -= lr * weight_decay * p.
    at::_foreach_add_(steps, 1);
    std::optional<torch::Tensor> skip, divisor;
    if (grad_divisor.defined()) divisor = grad_divisor;
    if (found_inf.defined()) {
      skip = found_inf;
      at::_foreach_sub_(steps, std::vector<torch::Tensor>(steps.size(), found_inf));
    }
    at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, /*max_exp_avg_sqs=*/{}, steps, lr,
                      options_.beta1, options_.beta2, group.weight_decay, options_.eps,
                      /*amsgrad=*/false, /*maximize=*/false, divisor, skip);
  }
}

void AdamW::zero_grad() {
  for (const auto& group : groups_)
    for (const auto& p : group.params) p.mutable_grad() = torch::Tensor();
}

double learning_rate(const TrainConfig& train, int64_t step) {
  if (step < train.warmup_steps)
    return train.lr * static_cast<double>(step + 1) / static_cast<double>(train.warmup_steps + 1);
  if (train.schedule == Schedule::kConstant) return train.lr;
  const int64_t decay_steps = std::max<int64_t>(1, train.max_steps - train.warmup_steps);
  double progress = std::min(1.0, static_cast<double>(step - train.warmup_steps) / decay_steps);
  double factor = train.schedule == Schedule::kLinear ? 1.0 - progress
                                                      : 0.5 * (1.0 + std::cos(M_PI * progress));
  return train.min_lr + (train.lr - train.min_lr) * factor;
}

torch::Tensor grad_norm(const std::vector<torch::Tensor>& params) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty()) return torch::zeros({});
  auto norms = at::_foreach_norm(grads, 2);
  return torch::stack(norms).to(torch::kFloat32).norm();  // scalar
}

torch::Tensor clip_coefficient(const torch::Tensor& total, double max_norm) {
  return (max_norm / (total + 1e-6)).clamp_max(1.0);
}

torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  torch::NoGradGuard no_grad;
  auto total = grad_norm(params);
  if (max_norm > 0) {
    // Scale by the coefficient without reading the norm on the host.
    std::vector<torch::Tensor> grads;
    for (const auto& p : params)
      if (p.grad().defined()) grads.push_back(p.grad());
    if (!grads.empty())
      at::_foreach_mul_(grads, clip_coefficient(total, max_norm).to(grads[0].dtype()));
  }
  return total;
}

}  // namespace lmtune
