// Launchers of the fused CUDA kernels (fused_ops.cu), built only with LMTUNE_WITH_CUDA; they take
// only what fused_ops.cpp has checked they support, contiguous and on one CUDA device.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace lmtune::fused_cuda {

// The largest last dimension the norm kernels take: one row is held in registers, 16 channels in
// each of up to 1024 threads (1024 x 16 = 16384).
constexpr int64_t kMaxNormChannels = 16384;

// Whether the norm kernels are instantiated for these dtypes: residual fp32 or the branch's dtype,
// each of fp32/bf16/fp16, and any of those for normed.
bool add_norm_dtypes_supported(at::ScalarType residual, at::ScalarType branch,
                               at::ScalarType normed);

struct AddNormSaved {
  at::Tensor sum;     // (..., C) residual + branch, in their promoted dtype
  at::Tensor normed;  // (..., C) in the requested dtype
  at::Tensor mean;    // (rows) fp32; undefined for RMSNorm
  at::Tensor rstd;    // (rows) fp32: 1 / sqrt(var + eps), or 1 / sqrt(mean(s^2) + eps) for RMSNorm
};

// residual, branch: (..., C) of one shape; weight32 (C) and bias32 (C, or undefined) in fp32.
AddNormSaved add_norm_forward(const at::Tensor& residual, const at::Tensor& branch,
                              const at::Tensor& weight32, const at::Tensor& bias32, double eps,
                              bool rms, at::ScalarType normed_dtype);

struct AddNormGrads {
  at::Tensor residual;  // (..., C) in residual's dtype
  at::Tensor branch;    // (..., C) in branch's dtype (the same tensor when the dtypes agree)
  at::Tensor weight;    // (C) fp32; undefined unless asked for
  at::Tensor bias;      // (C) fp32; undefined unless asked for, and for RMSNorm
};

// grad_normed in normed's dtype; grad_sum (the residual stream's own gradient) in sum's dtype or
// undefined; sum, mean, rstd as add_norm_forward saved them.
AddNormGrads add_norm_backward(const at::Tensor& grad_normed, const at::Tensor& grad_sum,
                               const at::Tensor& sum, const at::Tensor& weight32,
                               const at::Tensor& mean, const at::Tensor& rstd, bool rms,
                               at::ScalarType residual_dtype, at::ScalarType branch_dtype,
                               bool weight_grads);

// x (..., C) fp32/bf16/fp16; bias32 (C) already rounded to x's dtype, held in fp32.
at::Tensor bias_gelu_forward(const at::Tensor& x, const at::Tensor& bias32, bool tanh);

struct BiasGeluGrads {
  at::Tensor x;     // (..., C) in x's dtype
  at::Tensor bias;  // (C) fp32: grad x summed over rows; undefined unless asked for
};

BiasGeluGrads bias_gelu_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                 const at::Tensor& bias32, bool tanh, bool bias_grad);

// Writes over logits (n, Vp), contiguous fp32/bf16/fp16, the gradient cross_entropy_with_grad
// describes; targets (n) int64 on the same device, -100 for ignored rows; scale32 an fp32 0-dim
// tensor or undefined. Returns each row's loss (n) in fp32, 0 on ignored rows.
at::Tensor cross_entropy_grad(const at::Tensor& logits, int64_t vocab, const at::Tensor& targets,
                              const at::Tensor& scale32);

}  // namespace lmtune::fused_cuda
