// What a recomputation in backward must restore to repeat the forward pass exactly: the autocast
// state and the random-number generators' states. Private to src/model.
#pragma once

#include <optional>

#include <torch/torch.h>

namespace lmtune::detail {

// Autocast settings of the CPU and CUDA device types, captured when the forward pass ran.
struct AutocastState {
  bool cpu_enabled = false;
  c10::ScalarType cpu_dtype = c10::kBFloat16;
  bool cuda_enabled = false;
  c10::ScalarType cuda_dtype = c10::kHalf;

  static AutocastState current();
};

// While alive: grad mode on and the captured autocast state in force, with autocast's weight
// cache off. The cache must stay off: a low-precision weight cached here would outlive the
// optimizer step that changes the weight, and one cached under no-grad carries no gradient.
class RecomputeScope {
 public:
  explicit RecomputeScope(const AutocastState& state);
  ~RecomputeScope();
  RecomputeScope(const RecomputeScope&) = delete;
  RecomputeScope& operator=(const RecomputeScope&) = delete;

 private:
  torch::AutoGradMode grad_mode_{true};
  AutocastState previous_;
  bool previous_cache_;
};

// Turns autocast's weight cache off while alive (see RecomputeScope for why).
class AutocastCacheOff {
 public:
  AutocastCacheOff();
  ~AutocastCacheOff();
  AutocastCacheOff(const AutocastCacheOff&) = delete;
  AutocastCacheOff& operator=(const AutocastCacheOff&) = delete;

 private:
  bool previous_;
};

// The states of the default CPU generator and, for a CUDA device, of that device's generator.
struct RngState {
  torch::Tensor cpu;
  std::optional<torch::Device> cuda_device;
  torch::Tensor cuda;

  static RngState current(const torch::Device& device);
  void restore() const;
};

}  // namespace lmtune::detail
