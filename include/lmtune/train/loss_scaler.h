// fp16 dynamic loss scaling, and the count of consecutive non-finite steps; both kept on the
// device so that a step needs no host synchronisation.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/torch.h>

namespace lmtune {

// What a checkpoint saves of the scaler.
struct LossScalerState {
  double scale = 65536.0;      // the current loss scale
  int64_t growth_tracker = 0;  // steps without inf/NaN gradients since the scale last changed
};

// Scales the loss before backward so fp16 gradients do not underflow, unscales the gradients
// before clipping, and adapts the scale: an overflowing step (inf/NaN gradient) is skipped and
// the scale multiplied by `backoff`; after `growth_interval` clean steps it doubles.
class LossScaler {
 public:
  LossScaler(double init_scale, int64_t growth_interval, double backoff, torch::Device device);

  torch::Tensor scale(const torch::Tensor& loss) const;  // loss * scale, for backward
  // Divides the gradients of `params` by the scale in place and sets found_inf (an fp32 device
  // scalar) to 1 when any of them is inf or NaN.
  void unscale(const std::vector<torch::Tensor>& params, torch::Tensor& found_inf) const;
  // The scale the loss is multiplied by now (fp32 device scalar).
  const torch::Tensor& current_scale() const { return scale_; }
  // After the optimizer step (skipped when found_inf is 1): backs off or grows the scale.
  void update(const torch::Tensor& found_inf);

  // Steps skipped since the last call, and the scale now; reading them synchronises.
  int64_t take_skipped_steps();
  LossScalerState state() const;
  void set_state(const LossScalerState& state);

 private:
  int64_t growth_interval_;
  double backoff_;
  torch::Tensor scale_;           // fp32 device scalar
  torch::Tensor growth_tracker_;  // int32 device scalar, as the update kernel keeps it
  torch::Tensor skipped_;         // fp32 device scalar: skipped steps since take_skipped_steps
};

// Consecutive steps whose loss was inf or NaN, counted on the device.
class NonFiniteStreak {
 public:
  explicit NonFiniteStreak(torch::Device device);
  // nonfinite: an fp32 device scalar, 1 for a step with a non-finite loss, 0 otherwise.
  void record(const torch::Tensor& nonfinite);
  int64_t length() const;  // synchronises

 private:
  torch::Tensor length_;  // fp32 device scalar
};

// 1 (fp32 device scalar) when `value` is inf or NaN.
torch::Tensor not_finite(const torch::Tensor& value);

}  // namespace lmtune
