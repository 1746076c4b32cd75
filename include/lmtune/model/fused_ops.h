// Fused residual-add + norm, bias + GELU, and cross-entropy with its gradient: one function each
// that runs a fused CUDA kernel when asked and able, and a reference path in plain LibTorch ops
// otherwise (the CPU, unsupported inputs). Both paths give the same dtypes; the first two are
// differentiable.
#pragma once

#include <torch/torch.h>

namespace lmtune {

// The norm that follows a residual add: LayerNorm (weight and bias) or RMSNorm (weight; bias
// undefined).
struct NormWeights {
  torch::Tensor weight;  // (C)
  torch::Tensor bias;    // (C), or undefined for RMSNorm
  double eps = 1e-5;
  bool rms = false;  // RMSNorm (Llama) rather than LayerNorm (GPT-2)
};

struct AddNormResult {
  torch::Tensor sum;     // (..., C) residual + branch: the residual stream going on
  torch::Tensor normed;  // (..., C) norm(sum): the next sublayer's input
};

// sum = residual + branch; normed = norm(sum), normalised over the last dimension C.
// sum has the dtype PyTorch's promotion gives residual + branch (fp32 + bf16 -> fp32). The norm
// is computed in fp32 whatever the inputs; normed has the autocast dtype when autocast is enabled
// for the inputs' device type, else sum's dtype.
// LayerNorm: (s - mean) * rstd * weight + bias, as torch::layer_norm. RMSNorm as transformers'
// LlamaRMSNorm: h = s32 * rsqrt(mean(s32^2) + eps); normed = weight * h.to(sum's dtype).
// use_kernel: the fused CUDA kernel when the inputs are on a CUDA device and it supports them.
AddNormResult add_norm(const torch::Tensor& residual, const torch::Tensor& branch,
                       const NormWeights& norm, bool use_kernel);

// gelu(x + bias) in x's dtype, computed in fp32 (the tanh approximation when `tanh`, else erf).
// bias (C, the last dimension of x) is cast to x's dtype first, as a matmul's bias epilogue under
// autocast would. use_kernel as for add_norm.
torch::Tensor bias_gelu(const torch::Tensor& x, const torch::Tensor& bias, bool tanh,
                        bool use_kernel);

struct LossAndLogitGrad {
  torch::Tensor loss;  // fp32 scalar
  torch::Tensor grad;  // (n, Vp) in the logits' dtype
};

// The cross-entropy of each row of `logits` (n, Vp) over its first `vocab` columns (the others are
// padding: left out of the softmax, gradient 0), summed over the rows whose target is not -100,
// and its gradient with respect to the logits times `scale` (an fp32 0-dim tensor on the logits'
// device; undefined: 1): softmax minus one-hot, 0 on ignored rows. Statistics in fp32, one
// exponential per logit. Not differentiable: it is the loss's forward and backward at once, for a
// caller that passes the gradient on (the chunked loss). Consumes `logits`: the gradient may be
// written over them. The kernel (use_kernel, contiguous logits on a CUDA device) reads bf16/fp16
// logits once for the statistics and once more to write the gradient in place; no fp32 copy.
LossAndLogitGrad cross_entropy_with_grad(const torch::Tensor& logits, int64_t vocab,
                                         const torch::Tensor& targets, const torch::Tensor& scale,
                                         bool use_kernel);

// Whether this build has the CUDA kernels (LMTUNE_WITH_CUDA).
bool fused_kernels_compiled();

}  // namespace lmtune
