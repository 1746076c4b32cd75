#include "lmtune/train/loss_scaler.h"

namespace lmtune {
namespace {

constexpr double kGrowthFactor = 2.0;

torch::TensorOptions fp32_on(torch::Device device) {
  return torch::TensorOptions().dtype(torch::kFloat32).device(device);
}

}  // namespace

LossScaler::LossScaler(double init_scale, int64_t growth_interval, double backoff,
                       torch::Device device)
    : growth_interval_(growth_interval),
      backoff_(backoff),
      scale_(torch::full({}, init_scale, fp32_on(device))),
      growth_tracker_(torch::zeros({}, torch::TensorOptions().dtype(torch::kInt32).device(device))),
      skipped_(torch::zeros({}, fp32_on(device))) {}

torch::Tensor LossScaler::scale(const torch::Tensor& loss) const {
  return loss * scale_;
}

void LossScaler::unscale(const std::vector<torch::Tensor>& params, torch::Tensor& found_inf) const {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty()) return;
  auto inv_scale = scale_.reciprocal();
  at::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale);
}

void LossScaler::update(const torch::Tensor& found_inf) {
  skipped_ += found_inf;
  at::_amp_update_scale_(scale_, growth_tracker_, found_inf, kGrowthFactor, backoff_,
                         growth_interval_);
}

int64_t LossScaler::take_skipped_steps() {
  auto skipped = static_cast<int64_t>(skipped_.item<float>());
  skipped_.zero_();
  return skipped;
}

LossScalerState LossScaler::state() const {
  return {scale_.item<double>(), growth_tracker_.item<int64_t>()};
}

void LossScaler::set_state(const LossScalerState& state) {
  scale_.fill_(state.scale);
  growth_tracker_.fill_(state.growth_tracker);
}

NonFiniteStreak::NonFiniteStreak(torch::Device device)
    : length_(torch::zeros({}, fp32_on(device))) {}

void NonFiniteStreak::record(const torch::Tensor& nonfinite) {
  // A finite step (0) resets the count; a non-finite one (1) extends it.
  length_.add_(nonfinite).mul_(nonfinite);
}

int64_t NonFiniteStreak::length() const {
  return static_cast<int64_t>(length_.item<float>());
}

torch::Tensor not_finite(const torch::Tensor& value) {
  return torch::isfinite(value).logical_not().to(torch::kFloat32);
}

}  // namespace lmtune
