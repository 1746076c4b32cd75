#include "lmtune/model/fused_ops.h"

#include <algorithm>
#include <vector>

#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#ifdef LMTUNE_WITH_CUDA
#include "fused_ops_cuda.h"
#endif

namespace lmtune {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kIgnoreIndex = -100;  // a target the loss leaves out, as LibTorch's default

// normed's dtype: autocast's for the inputs' device type when it is on, else sum's.
at::ScalarType add_norm_output_dtype(at::DeviceType device_type, at::ScalarType sum_dtype) {
  if (at::autocast::is_autocast_available(device_type) &&
      at::autocast::is_autocast_enabled(device_type)) {
    return at::autocast::get_autocast_dtype(device_type);
  }
  return sum_dtype;
}

// The reference path casts explicitly, so autocast must not recast anything it calls.
AddNormResult add_norm_reference(const torch::Tensor& residual, const torch::Tensor& branch,
                                 const NormWeights& norm, at::ScalarType normed_dtype) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  torch::Tensor sum = residual + branch;  // (..., C)
  torch::Tensor sum32 = sum.to(torch::kFloat32);
  torch::Tensor normed;
  if (norm.rms) {
    torch::Tensor h = sum32 * torch::rsqrt(sum32.pow(2).mean(-1, /*keepdim=*/true) + norm.eps);
    normed = norm.weight * h.to(sum.scalar_type());
  } else {
    const torch::Tensor bias32 =
        norm.bias.defined() ? norm.bias.to(torch::kFloat32) : torch::Tensor();
    normed =
        torch::layer_norm(sum32, {sum.size(-1)}, norm.weight.to(torch::kFloat32), bias32, norm.eps);
  }
  return {sum, normed.to(normed_dtype)};
}

// Rows of fp32 logits per block on the CPU: about 2 MB, which the caches of the machines lmtune
// runs on hold (L2, else L3), so that the passes over a block reread it from there.
constexpr int64_t kCacheBlockFloats = int64_t{1} << 19;

// In LibTorch ops, in place where the logits are fp32 already: per block of rows, four passes
// over it (max, exp, sum, scale), then the one-hot subtraction's scatter, one value a row. On a
// GPU one block takes every row: each op there is a kernel launch, and its caches are small.
LossAndLogitGrad cross_entropy_with_grad_reference(const torch::Tensor& logits, int64_t vocab,
                                                   const torch::Tensor& targets,
                                                   const torch::Tensor& scale) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  torch::NoGradGuard no_grad;
  const int64_t n = logits.size(0), padding = logits.size(1) - vocab;
  torch::Tensor p = logits.narrow(1, 0, vocab).to(torch::kFloat32);  // fp32 logits: a view
  const torch::Tensor counted = targets.ne(kIgnoreIndex);
  const torch::Tensor column = targets.to(torch::kLong).clamp_min(0).unsqueeze(1);  // (n, 1)
  // As LibTorch's loss would (on the CPU only: a GPU would wait for the answer); gather alone would
  // read a padding column.
  TORCH_CHECK(logits.is_cuda() || (column < vocab).all().item<bool>(),
              "cross_entropy_with_grad: a target is outside the vocabulary of ", vocab);
  const torch::Tensor target_logit = p.gather(1, column).squeeze(1);
  torch::Tensor weight = counted.to(torch::kFloat32).unsqueeze(1);  // (n, 1): 1, or 0 if ignored
  if (scale.defined()) weight = weight * scale.to(torch::kFloat32);
  const int64_t block =
      logits.is_cuda() ? std::max<int64_t>(n, 1) : std::max<int64_t>(1, kCacheBlockFloats / vocab);
  std::vector<torch::Tensor> log_sums;  // per block (rows, 1): log of the sum of exp(logit)
  for (int64_t start = 0; start < n; start += block) {
    const int64_t rows = std::min(block, n - start);
    torch::Tensor q = p.narrow(0, start, rows);
    const torch::Tensor max = q.amax(1, /*keepdim=*/true);
    q.sub_(max).exp_();
    const torch::Tensor sum = q.sum(1, /*keepdim=*/true);
    q.mul_(weight.narrow(0, start, rows) / sum);
    log_sums.push_back(sum.log().add_(max));
  }
  const torch::Tensor row_loss =
      n > 0 ? torch::cat(log_sums).squeeze(1).sub_(target_logit) : target_logit;
  const torch::Tensor loss = row_loss.masked_fill(counted.logical_not(), 0).sum();
  p.scatter_add_(1, column, weight.neg());
  if (padding > 0) p = torch::constant_pad_nd(p, {0, padding});
  return {loss, p.to(logits.scalar_type())};
}

torch::Tensor bias_gelu_reference(const torch::Tensor& x, const torch::Tensor& bias, bool tanh) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  torch::Tensor z = x.to(torch::kFloat32) + bias.to(x.scalar_type()).to(torch::kFloat32);
  return torch::gelu(z, tanh ? "tanh" : "none").to(x.scalar_type());
}

#ifdef LMTUNE_WITH_CUDA

bool is_kernel_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

// Whether a weight-like tensor is the (C) vector the kernels read, on `device`.
bool is_channel_vector(const torch::Tensor& t, int64_t C, const torch::Device& device) {
  return t.dim() == 1 && t.size(0) == C && t.device() == device && is_kernel_float(t.scalar_type());
}

bool add_norm_kernel_takes(const torch::Tensor& residual, const torch::Tensor& branch,
                           const NormWeights& norm, at::ScalarType normed_dtype) {
  if (!residual.is_cuda() || residual.dim() == 0 || residual.numel() == 0) return false;
  if (branch.device() != residual.device() || branch.sizes() != residual.sizes()) return false;
  const int64_t C = residual.size(-1);
  if (C > fused_cuda::kMaxNormChannels || !is_channel_vector(norm.weight, C, residual.device())) {
    return false;
  }
  if (norm.bias.defined() && !is_channel_vector(norm.bias, C, residual.device())) return false;
  if (!fused_cuda::add_norm_dtypes_supported(residual.scalar_type(), branch.scalar_type(),
                                             normed_dtype)) {
    return false;
  }
  // RMSNorm's weight * h is rounded to the product's dtype; the kernel rounds once, to normed's,
  // which is the same when the product is fp32 or already normed's dtype.
  const auto product_dtype = c10::promoteTypes(
      norm.weight.scalar_type(), c10::promoteTypes(residual.scalar_type(), branch.scalar_type()));
  return !norm.rms || product_dtype == at::kFloat || product_dtype == normed_dtype;
}

bool bias_gelu_kernel_takes(const torch::Tensor& x, const torch::Tensor& bias) {
  return x.is_cuda() && x.dim() > 0 && x.numel() > 0 && is_kernel_float(x.scalar_type()) &&
         is_channel_vector(bias, x.size(-1), x.device());
}

bool cross_entropy_kernel_takes(const torch::Tensor& logits, const torch::Tensor& targets,
                                const torch::Tensor& scale) {
  return logits.is_cuda() && logits.is_contiguous() && is_kernel_float(logits.scalar_type()) &&
         targets.device() == logits.device() &&
         (!scale.defined() || scale.device() == logits.device());
}

// Saved: sum, weight, mean (LayerNorm), rstd. grads: (sum, normed), either may be undefined.
// `bias` is an empty tensor when there is none (RMSNorm): Function::apply records the device of
// every tensor argument, which an undefined tensor does not have.
class AddNormFunction : public torch::autograd::Function<AddNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& residual,
                               const torch::Tensor& branch, const torch::Tensor& weight,
                               const torch::Tensor& bias, double eps, bool rms,
                               at::ScalarType normed_dtype) {
    ctx->set_materialize_grads(false);
    const bool has_bias = bias.numel() > 0;
    const torch::Tensor bias32 = has_bias ? bias.to(torch::kFloat32).contiguous() : torch::Tensor();
    fused_cuda::AddNormSaved out = fused_cuda::add_norm_forward(
        residual.contiguous(), branch.contiguous(), weight.to(torch::kFloat32).contiguous(), bias32,
        eps, rms, normed_dtype);
    ctx->save_for_backward({out.sum, weight, out.mean, out.rstd});
    ctx->saved_data["rms"] = rms;
    ctx->saved_data["residual_dtype"] = static_cast<int64_t>(residual.scalar_type());
    ctx->saved_data["branch_dtype"] = static_cast<int64_t>(branch.scalar_type());
    ctx->saved_data["bias_dtype"] =
        static_cast<int64_t>(has_bias ? bias.scalar_type() : at::ScalarType::Undefined);
    ctx->saved_data["normed_dtype"] = static_cast<int64_t>(normed_dtype);
    return {out.sum, out.normed};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor& sum = saved[0];
    const torch::Tensor& weight = saved[1];
    const auto dtype = [&](const char* key) {
      return static_cast<at::ScalarType>(ctx->saved_data[key].toInt());
    };
    const at::ScalarType residual_dtype = dtype("residual_dtype");
    const at::ScalarType branch_dtype = dtype("branch_dtype");
    const at::ScalarType bias_dtype = dtype("bias_dtype");
    const torch::Tensor grad_sum =
        grads[0].defined() ? grads[0].to(sum.scalar_type()).contiguous() : torch::Tensor();
    variable_list result(7);  // one per argument of forward
    if (!grads[1].defined()) {
      if (grad_sum.defined()) {
        result[0] = grad_sum.to(residual_dtype);
        result[1] = grad_sum.to(branch_dtype);
      }
      return result;
    }
    const bool weight_grads = ctx->needs_input_grad(2) ||
                              (bias_dtype != at::ScalarType::Undefined && ctx->needs_input_grad(3));
    fused_cuda::AddNormGrads g = fused_cuda::add_norm_backward(
        grads[1].to(dtype("normed_dtype")).contiguous(), grad_sum, sum,
        weight.to(torch::kFloat32).contiguous(), saved[2], saved[3],
        ctx->saved_data["rms"].toBool(), residual_dtype, branch_dtype, weight_grads);
    result[0] = g.residual;
    result[1] = g.branch;
    if (g.weight.defined()) result[2] = g.weight.to(weight.scalar_type());
    if (g.bias.defined() && bias_dtype != at::ScalarType::Undefined) {
      result[3] = g.bias.to(bias_dtype);
    }
    return result;
  }
};

// Saved: x and bias; bias32 is bias rounded to x's dtype, held in fp32.
class BiasGeluFunction : public torch::autograd::Function<BiasGeluFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& bias, bool tanh) {
    ctx->set_materialize_grads(false);
    const torch::Tensor x_contiguous = x.contiguous();
    ctx->save_for_backward({x_contiguous, bias});
    ctx->saved_data["tanh"] = tanh;
    return {fused_cuda::bias_gelu_forward(x_contiguous, bias_in_fp32(bias, x), tanh)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list result(3);  // one per argument of forward
    if (!grads[0].defined()) return result;
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor& x = saved[0];
    const torch::Tensor& bias = saved[1];
    fused_cuda::BiasGeluGrads g = fused_cuda::bias_gelu_backward(
        grads[0].to(x.scalar_type()).contiguous(), x, bias_in_fp32(bias, x),
        ctx->saved_data["tanh"].toBool(), /*bias_grad=*/ctx->needs_input_grad(1));
    result[0] = g.x;
    if (g.bias.defined()) result[1] = g.bias.to(bias.scalar_type());
    return result;
  }

 private:
  // As a matmul's bias epilogue: rounded to x's dtype, added in fp32.
  static torch::Tensor bias_in_fp32(const torch::Tensor& bias, const torch::Tensor& x) {
    return bias.to(x.scalar_type()).to(torch::kFloat32).contiguous();
  }
};

#endif  // LMTUNE_WITH_CUDA

}  // namespace

AddNormResult add_norm(const torch::Tensor& residual, const torch::Tensor& branch,
                       const NormWeights& norm, bool use_kernel) {
  TORCH_CHECK(!(norm.rms && norm.bias.defined()), "add_norm: RMSNorm takes no bias");
  const at::ScalarType normed_dtype = add_norm_output_dtype(
      residual.device().type(), c10::promoteTypes(residual.scalar_type(), branch.scalar_type()));
#ifdef LMTUNE_WITH_CUDA
  if (use_kernel && add_norm_kernel_takes(residual, branch, norm, normed_dtype)) {
    const torch::Tensor bias =
        norm.bias.defined() ? norm.bias : torch::empty({0}, norm.weight.options());
    variable_list out = AddNormFunction::apply(residual, branch, norm.weight, bias, norm.eps,
                                               norm.rms, normed_dtype);
    return {out[0], out[1]};
  }
#endif
  (void)use_kernel;
  return add_norm_reference(residual, branch, norm, normed_dtype);
}

torch::Tensor bias_gelu(const torch::Tensor& x, const torch::Tensor& bias, bool tanh,
                        bool use_kernel) {
#ifdef LMTUNE_WITH_CUDA
  if (use_kernel && bias_gelu_kernel_takes(x, bias)) {
    return BiasGeluFunction::apply(x, bias, tanh)[0];
  }
#endif
  (void)use_kernel;
  return bias_gelu_reference(x, bias, tanh);
}

LossAndLogitGrad cross_entropy_with_grad(const torch::Tensor& logits, int64_t vocab,
                                         const torch::Tensor& targets, const torch::Tensor& scale,
                                         bool use_kernel) {
  TORCH_CHECK(logits.dim() == 2 && targets.dim() == 1 && targets.size(0) == logits.size(0),
              "cross_entropy_with_grad: expected logits (n, Vp) and targets (n)");
  TORCH_CHECK(vocab > 0 && vocab <= logits.size(1), "cross_entropy_with_grad: vocab ", vocab,
              " outside 1..", logits.size(1));
  TORCH_CHECK(!scale.defined() || scale.numel() == 1,
              "cross_entropy_with_grad: scale not a scalar");
#ifdef LMTUNE_WITH_CUDA
  if (use_kernel && cross_entropy_kernel_takes(logits, targets, scale)) {
    const torch::Tensor row_loss = fused_cuda::cross_entropy_grad(
        logits, vocab, targets.to(torch::kLong).contiguous(),
        scale.defined() ? scale.to(torch::kFloat32).reshape({}) : torch::Tensor());
    return {row_loss.sum(), logits};
  }
#endif
  (void)use_kernel;
  return cross_entropy_with_grad_reference(logits, vocab, targets, scale);
}

bool fused_kernels_compiled() {
#ifdef LMTUNE_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace lmtune
