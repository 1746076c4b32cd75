#include "lmtune/model/bf16_emulation.h"

#include <atomic>
#include <cstdlib>
#include <string_view>

#include <ATen/autocast_mode.h>

namespace lmtune {
namespace {

// bf16 values held in fp32, the dtype the fast kernels take. Leaf weights go through autocast's
// own cast cache, so a weight is rounded once per autocast scope, as in a native bf16 run.
torch::Tensor bf16_values(const torch::Tensor& t) {
  if (!t.defined()) return t;
  return at::autocast::cached_cast(at::kBFloat16, t, c10::DeviceType::CPU).to(torch::kFloat32);
}

}  // namespace

bool cpu_has_native_bf16() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool native = __builtin_cpu_supports("avx512bw") &&
                             __builtin_cpu_supports("avx512vl") &&
                             __builtin_cpu_supports("avx512dq");
  return native;
#else
  return true;  // elsewhere LibTorch picks its own bf16 kernels
#endif
}

namespace {

// LMTUNE_CPU_BF16, read once: "native" or "emulated" forces that path, anything else is ignored.
std::optional<CpuBf16Kernels> kernels_from_environment() {
  const char* value = std::getenv("LMTUNE_CPU_BF16");
  if (!value) return std::nullopt;
  const std::string_view name(value);
  if (name == "native") return CpuBf16Kernels::kNative;
  if (name == "emulated") return CpuBf16Kernels::kEmulated;
  return std::nullopt;
}

std::atomic<int> forced_kernels{-1};  // -1: none, else a CpuBf16Kernels

}  // namespace

CpuBf16Kernels cpu_bf16_kernels() {
  if (const int forced = forced_kernels.load(); forced >= 0)
    return static_cast<CpuBf16Kernels>(forced);
  static const std::optional<CpuBf16Kernels> from_environment = kernels_from_environment();
  if (from_environment) return *from_environment;
  return cpu_has_native_bf16() ? CpuBf16Kernels::kNative : CpuBf16Kernels::kEmulated;
}

void force_cpu_bf16_kernels(std::optional<CpuBf16Kernels> kernels) {
  forced_kernels.store(kernels ? static_cast<int>(*kernels) : -1);
}

bool emulates_bf16(const torch::Tensor& t) {
  return t.device().is_cpu() && at::autocast::is_autocast_enabled(c10::DeviceType::CPU) &&
         at::autocast::get_autocast_dtype(c10::DeviceType::CPU) == at::kBFloat16 &&
         cpu_bf16_kernels() == CpuBf16Kernels::kEmulated;
}

torch::Tensor autocast_linear(const torch::Tensor& x, const torch::Tensor& weight,
                              const torch::Tensor& bias) {
  if (!emulates_bf16(x)) return torch::linear(x, weight, bias);
  // Autograd rounds the gradients to bf16 at the same casts, so backward matches too.
  auto y = [&] {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
    return torch::linear(bf16_values(x), bf16_values(weight), bf16_values(bias));
  }();
  return y.to(torch::kBFloat16);
}

torch::Tensor autocast_attention(const torch::Tensor& q, const torch::Tensor& k,
                                 const torch::Tensor& v, const std::optional<torch::Tensor>& mask,
                                 double dropout, bool causal, bool grouped) {
  if (!emulates_bf16(q))
    return at::scaled_dot_product_attention(q, k, v, mask, dropout, causal, std::nullopt, grouped);
  auto y = [&] {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
    return at::scaled_dot_product_attention(bf16_values(q), bf16_values(k), bf16_values(v), mask,
                                            dropout, causal, std::nullopt, grouped);
  }();
  return y.to(torch::kBFloat16);
}

}  // namespace lmtune
