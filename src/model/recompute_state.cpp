#include "recompute_state.h"

#include <mutex>

#include <ATen/autocast_mode.h>

namespace lmtune::detail {
namespace {

void apply(const AutocastState& state) {
  at::autocast::set_autocast_enabled(at::kCPU, state.cpu_enabled);
  at::autocast::set_autocast_dtype(at::kCPU, state.cpu_dtype);
  at::autocast::set_autocast_enabled(at::kCUDA, state.cuda_enabled);
  at::autocast::set_autocast_dtype(at::kCUDA, state.cuda_dtype);
}

at::Generator generator(const torch::Device& device) {
  return at::globalContext().defaultGenerator(device);
}

torch::Tensor generator_state(const torch::Device& device) {
  auto gen = generator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_generator_state(const torch::Device& device, const torch::Tensor& state) {
  auto gen = generator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

}  // namespace

AutocastState AutocastState::current() {
  return {at::autocast::is_autocast_enabled(at::kCPU), at::autocast::get_autocast_dtype(at::kCPU),
          at::autocast::is_autocast_enabled(at::kCUDA),
          at::autocast::get_autocast_dtype(at::kCUDA)};
}

RecomputeScope::RecomputeScope(const AutocastState& state)
    : previous_(AutocastState::current()),
      previous_cache_(at::autocast::is_autocast_cache_enabled()) {
  at::autocast::set_autocast_cache_enabled(false);
  apply(state);
}

RecomputeScope::~RecomputeScope() {
  apply(previous_);
  at::autocast::set_autocast_cache_enabled(previous_cache_);
}

AutocastCacheOff::AutocastCacheOff() : previous_(at::autocast::is_autocast_cache_enabled()) {
  at::autocast::set_autocast_cache_enabled(false);
}

AutocastCacheOff::~AutocastCacheOff() {
  at::autocast::set_autocast_cache_enabled(previous_);
}

RngState RngState::current(const torch::Device& device) {
  RngState state;
  state.cpu = generator_state(torch::kCPU);
  if (device.is_cuda()) {
    state.cuda_device = device.has_index() ? device : torch::Device(torch::kCUDA, 0);
    state.cuda = generator_state(*state.cuda_device);
  }
  return state;
}

void RngState::restore() const {
  set_generator_state(torch::kCPU, cpu);
  if (cuda_device) set_generator_state(*cuda_device, cuda);
}

}  // namespace lmtune::detail
