// bf16 matmuls and attention under autocast that stay fast on CPUs without native bf16: there they
// run as fp32 kernels on bf16-rounded operands, with bf16-rounded results (what LibTorch's own
// emulated bf16 kernels compute, fp32 accumulation included, at about 8x the speed).
#pragma once

#include <optional>

#include <torch/torch.h>

namespace lmtune {

// Whether LibTorch's bf16 matmuls are fast on this CPU: on x86, oneDNN's need AVX-512 BW, VL and
// DQ (not the AVX-512 BF16 instructions); without them LibTorch falls back to scalar bf16 loops.
// Other architectures are taken to be fast. Checked once per process.
bool cpu_has_native_bf16();

// The kernels CPU bf16 autocast runs on: LibTorch's own, or the emulation of this file.
enum class CpuBf16Kernels { kNative, kEmulated };

// kNative where cpu_has_native_bf16(), else kEmulated; unless forced, so that tests run the path
// a CPU of the other kind takes: LMTUNE_CPU_BF16=native|emulated in the environment (read once;
// other values are ignored), or force_cpu_bf16_kernels, which overrides it (nullopt: no longer).
CpuBf16Kernels cpu_bf16_kernels();
void force_cpu_bf16_kernels(std::optional<CpuBf16Kernels> kernels);

// Whether ops on `t` run under CPU bf16 autocast with the emulated kernels.
bool emulates_bf16(const torch::Tensor& t);

// torch::linear as autocast would run it: x (..., in), weight (out, in), bias (out) or undefined.
torch::Tensor autocast_linear(const torch::Tensor& x, const torch::Tensor& weight,
                              const torch::Tensor& bias = {});

// at::scaled_dot_product_attention as autocast would run it: q (B, H, T, D), k and v
// (B, H, S, D) -> (B, H, T, D); with `grouped`, k and v (B, H_kv, S, D), each head serving
// H / H_kv query heads (its enable_gqa).
torch::Tensor autocast_attention(const torch::Tensor& q, const torch::Tensor& k,
                                 const torch::Tensor& v, const std::optional<torch::Tensor>& mask,
                                 double dropout, bool causal, bool grouped = false);

}  // namespace lmtune
