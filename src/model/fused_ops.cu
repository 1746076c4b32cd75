// The fused CUDA kernels: residual add + LayerNorm/RMSNorm (forward and backward), bias + GELU
// (forward and backward), and cross-entropy with its gradient. Norm kernels hold one row of C
// channels in registers, one row per block (four rows per block, a warp each, when C <= 512);
// statistics and arithmetic are fp32.
#include "fused_ops_cuda.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace lmtune::fused_cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kMaxThreads = 1024;
constexpr int kPerThread =
    static_cast<int>(kMaxNormChannels / kMaxThreads);  // channels a thread holds
constexpr int kWarpRowsPerBlock = 4;                   // rows per block when one warp holds a row
constexpr int kColumnRows = 8;  // block rows of the column-sum kernels (32 columns each)
constexpr int kElementwiseThreads = 256;

// residual + branch is computed in PyTorch's promoted dtype: the residual's when the two agree,
// fp32 when the residual is fp32 (the only other pairs the kernels take).
template <typename R, typename B>
using SumType = std::conditional_t<std::is_same_v<R, B>, R, float>;

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}

template <typename T>
__device__ __forceinline__ T from_float(float v) {
  return static_cast<T>(v);
}

// v rounded to T's precision, as a tensor of dtype T would hold it.
template <typename T>
__device__ __forceinline__ float round_to(float v) {
  return to_float(from_float<T>(v));
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

// The sum of v over the threads of one block row, returned to all of them; every thread of the
// block calls it. Several warps share a row only when the block holds one row (blockDim.y == 1),
// so `shared` needs one slot per warp of a block. The order of the sum is fixed: deterministic.
__device__ float row_sum(float v, float* shared) {
  v = warp_sum(v);
  if (blockDim.x == kWarp) return v;
  const int warp = threadIdx.x / kWarp;
  __syncthreads();  // the readers of an earlier call are done with `shared`
  if (threadIdx.x % kWarp == 0) shared[warp] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < static_cast<int>(blockDim.x) / kWarp; ++w) total += shared[w];
  return total;
}

// Channel c = threadIdx.x + i * blockDim.x of the row is slot i of a thread (coalesced loads).
template <typename R, typename B, typename O>
__global__ void __launch_bounds__(kMaxThreads)
    add_norm_forward_kernel(const R* __restrict__ residual, const B* __restrict__ branch,
                            const float* __restrict__ weight, const float* __restrict__ bias,
                            SumType<R, B>* __restrict__ sum, O* __restrict__ normed,
                            float* __restrict__ mean_out, float* __restrict__ rstd_out,
                            int64_t rows, int C, float eps, bool rms) {
  using S = SumType<R, B>;
  __shared__ float shared[kMaxThreads / kWarp];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool active = row < rows;  // inactive threads still take part in row_sum
  const int64_t base = row * C;

  float s[kPerThread];
  float total = 0.f;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int c = threadIdx.x + i * blockDim.x;
    s[i] = 0.f;
    if (active && c < C) {
      const S added = from_float<S>(to_float(residual[base + c]) + to_float(branch[base + c]));
      sum[base + c] = added;
      s[i] = to_float(added);
      total += s[i];
    }
  }
  // Two passes over the registers: the mean, then the squares about it (no cancellation).
  const float mean = rms ? 0.f : row_sum(total, shared) / C;
  float squares = 0.f;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int c = threadIdx.x + i * blockDim.x;
    if (active && c < C) squares += (s[i] - mean) * (s[i] - mean);
  }
  const float rstd = rsqrtf(row_sum(squares, shared) / C + eps);

#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int c = threadIdx.x + i * blockDim.x;
    if (active && c < C) {
      float y;
      if (rms) {
        // LlamaRMSNorm: the normalised row goes back to sum's dtype before the weight.
        y = weight[c] * round_to<S>(s[i] * rstd);
      } else {
        y = (s[i] - mean) * rstd * weight[c] + (bias != nullptr ? bias[c] : 0.f);
      }
      normed[base + c] = from_float<O>(y);
    }
  }
  if (active && threadIdx.x == 0) {
    rstd_out[row] = rstd;
    if (!rms) mean_out[row] = mean;
  }
}

// grad_sum total = norm backward + grad_sum, written as the residual's and (when its dtype
// differs, grad_branch != nullptr) the branch's gradient. xhat = (s - mean) * rstd, g' = g * w:
//   LayerNorm: ds = rstd * (g' - mean(g') - xhat * mean(g' * xhat))
//   RMSNorm:   ds = rstd * (g' - h * mean(g' * h)), h = s * rstd
template <typename R, typename B, typename O>
__global__ void __launch_bounds__(kMaxThreads)
    add_norm_backward_kernel(const O* __restrict__ grad_normed,
                             const SumType<R, B>* __restrict__ grad_sum,
                             const SumType<R, B>* __restrict__ sum,
                             const float* __restrict__ weight, const float* __restrict__ mean,
                             const float* __restrict__ rstd, R* __restrict__ grad_residual,
                             B* __restrict__ grad_branch, int64_t rows, int C, bool rms) {
  __shared__ float shared[kMaxThreads / kWarp];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool active = row < rows;
  const int64_t base = row * C;
  const float row_mean = active && !rms ? mean[row] : 0.f;
  const float row_rstd = active ? rstd[row] : 0.f;

  float xhat[kPerThread];
  float gw[kPerThread];
  float gw_total = 0.f;
  float gw_xhat_total = 0.f;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int c = threadIdx.x + i * blockDim.x;
    xhat[i] = 0.f;
    gw[i] = 0.f;
    if (active && c < C) {
      xhat[i] = (to_float(sum[base + c]) - row_mean) * row_rstd;
      gw[i] = to_float(grad_normed[base + c]) * weight[c];
      gw_total += gw[i];
      gw_xhat_total += gw[i] * xhat[i];
    }
  }
  const float gw_mean = rms ? 0.f : row_sum(gw_total, shared) / C;
  const float gw_xhat_mean = row_sum(gw_xhat_total, shared) / C;

#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int c = threadIdx.x + i * blockDim.x;
    if (active && c < C) {
      float ds = row_rstd * (gw[i] - gw_mean - xhat[i] * gw_xhat_mean);
      if (grad_sum != nullptr) ds += to_float(grad_sum[base + c]);
      grad_residual[base + c] = from_float<R>(ds);
      if (grad_branch != nullptr) grad_branch[base + c] = from_float<B>(ds);
    }
  }
}

// Column sums over one chunk of rows (blockIdx.y) for 32 columns (blockIdx.x), into
// partials (chunks, 2, C): [0] sum of g * xhat (the weight's gradient; for RMSNorm xhat is h in
// sum's dtype, as the forward multiplied it), [1] sum of g (the bias's).
template <typename S, typename O>
__global__ void add_norm_weight_grad_kernel(const O* __restrict__ grad_normed,
                                            const S* __restrict__ sum,
                                            const float* __restrict__ mean,
                                            const float* __restrict__ rstd,
                                            float* __restrict__ partials, int64_t rows, int C,
                                            int64_t rows_per_chunk, bool rms) {
  __shared__ float shared_w[kColumnRows][kWarp + 1];
  __shared__ float shared_b[kColumnRows][kWarp + 1];
  const int c = blockIdx.x * kWarp + threadIdx.x;
  const int64_t first = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t last = first + rows_per_chunk < rows ? first + rows_per_chunk : rows;
  float dw = 0.f;
  float db = 0.f;
  if (c < C) {
    for (int64_t row = first + threadIdx.y; row < last; row += kColumnRows) {
      const float g = to_float(grad_normed[row * C + c]);
      const float s = to_float(sum[row * C + c]);
      const float x = rms ? round_to<S>(s * rstd[row]) : (s - mean[row]) * rstd[row];
      dw += g * x;
      db += g;
    }
  }
  shared_w[threadIdx.y][threadIdx.x] = dw;
  shared_b[threadIdx.y][threadIdx.x] = db;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float w = 0.f;
    float b = 0.f;
    for (int y = 0; y < kColumnRows; ++y) {
      w += shared_w[y][threadIdx.x];
      b += shared_b[y][threadIdx.x];
    }
    partials[(static_cast<int64_t>(blockIdx.y) * 2 + 0) * C + c] = w;
    partials[(static_cast<int64_t>(blockIdx.y) * 2 + 1) * C + c] = b;
  }
}

// Column sums of m (rows, C) over one chunk of rows, into partials (chunks, C).
template <typename T>
__global__ void column_sum_kernel(const T* __restrict__ m, float* __restrict__ partials,
                                  int64_t rows, int64_t C, int64_t rows_per_chunk) {
  __shared__ float shared[kColumnRows][kWarp + 1];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kWarp + threadIdx.x;
  const int64_t first = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t last = first + rows_per_chunk < rows ? first + rows_per_chunk : rows;
  float total = 0.f;
  if (c < C) {
    for (int64_t row = first + threadIdx.y; row < last; row += kColumnRows) {
      total += to_float(m[row * C + c]);
    }
  }
  shared[threadIdx.y][threadIdx.x] = total;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float sum = 0.f;
    for (int y = 0; y < kColumnRows; ++y) sum += shared[y][threadIdx.x];
    partials[static_cast<int64_t>(blockIdx.y) * C + c] = sum;
  }
}

// sqrt(2 / pi) and the cubic coefficient of the tanh approximation.
constexpr float kGeluTanhScale = 0.7978845608028654f;
constexpr float kGeluTanhCubic = 0.044715f;
constexpr float kSqrtHalf = 0.7071067811865476f;      // 1 / sqrt(2)
constexpr float kInvSqrtTwoPi = 0.3989422804014327f;  // 1 / sqrt(2 pi)

__device__ __forceinline__ float gelu(float z, bool tanh_approx) {
  if (tanh_approx) {
    return 0.5f * z * (1.f + tanhf(kGeluTanhScale * (z + kGeluTanhCubic * z * z * z)));
  }
  return 0.5f * z * (1.f + erff(z * kSqrtHalf));
}

// d gelu(z) / dz.
__device__ __forceinline__ float gelu_slope(float z, bool tanh_approx) {
  if (tanh_approx) {
    const float t = tanhf(kGeluTanhScale * (z + kGeluTanhCubic * z * z * z));
    const float inner_slope = kGeluTanhScale * (1.f + 3.f * kGeluTanhCubic * z * z);
    return 0.5f * (1.f + t) + 0.5f * z * (1.f - t * t) * inner_slope;
  }
  return 0.5f * (1.f + erff(z * kSqrtHalf)) + z * kInvSqrtTwoPi * expf(-0.5f * z * z);
}

template <typename X>
__global__ void bias_gelu_forward_kernel(const X* __restrict__ x, const float* __restrict__ bias,
                                         X* __restrict__ y, int64_t n, int64_t C,
                                         bool tanh_approx) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    y[i] = from_float<X>(gelu(to_float(x[i]) + bias[i % C], tanh_approx));
  }
}

template <typename X>
__global__ void bias_gelu_backward_kernel(const X* __restrict__ grad_y, const X* __restrict__ x,
                                          const float* __restrict__ bias, X* __restrict__ grad_x,
                                          int64_t n, int64_t C, bool tanh_approx) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float z = to_float(x[i]) + bias[i % C];
    grad_x[i] = from_float<X>(to_float(grad_y[i]) * gelu_slope(z, tanh_approx));
  }
}

// Cross-entropy and its gradient, one block per row of logits: a running (max, sum of exp) per
// thread, merged across the block; then the row read again and overwritten with the gradient.
constexpr int kLossThreads = 512;
constexpr int64_t kIgnoreIndex = -100;

struct SoftmaxStats {
  float max;  // the largest logit seen
  float sum;  // sum of exp(logit - max) over the logits seen
};

// Both halves' logits as one. A NaN logit makes the sum NaN (so the loss and the gradient are NaN,
// as LibTorch's); a half of -inf logits, or that has seen nothing, changes nothing (exp(-inf -
// -inf) would be NaN).
__device__ __forceinline__ SoftmaxStats merge(SoftmaxStats a, SoftmaxStats b) {
  if (b.max == -INFINITY) return a;
  if (b.max > a.max) return {b.max, a.sum * expf(a.max - b.max) + b.sum};
  if (b.sum != 0.f) a.sum += b.sum * expf(b.max - a.max);
  return a;
}

__device__ SoftmaxStats block_stats(SoftmaxStats v, SoftmaxStats* shared) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    v = merge(v, {__shfl_xor_sync(0xffffffffu, v.max, offset),
                  __shfl_xor_sync(0xffffffffu, v.sum, offset)});
  }
  if (threadIdx.x % kWarp == 0) shared[threadIdx.x / kWarp] = v;
  __syncthreads();
  SoftmaxStats total{-INFINITY, 0.f};
  for (int w = 0; w < static_cast<int>(blockDim.x) / kWarp; ++w) total = merge(total, shared[w]);
  return total;
}

template <typename T>
__global__ void __launch_bounds__(kLossThreads)
    cross_entropy_grad_kernel(T* __restrict__ logits, const int64_t* __restrict__ targets,
                              const float* __restrict__ scale, float* __restrict__ row_loss,
                              int64_t vocab, int64_t padded_vocab) {
  __shared__ SoftmaxStats shared[kLossThreads / kWarp];
  T* x = logits + static_cast<int64_t>(blockIdx.x) * padded_vocab;
  const int64_t target = targets[blockIdx.x];
  const bool counted = target != kIgnoreIndex;
  CUDA_KERNEL_ASSERT(!counted || (target >= 0 && target < vocab));
  SoftmaxStats mine{-INFINITY, 0.f};
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x)
    mine = merge(mine, {to_float(x[j]), 1.f});
  // Read before the barrier inside block_stats, after which the row is overwritten.
  const float target_logit = counted && threadIdx.x == 0 ? to_float(x[target]) : 0.f;
  const SoftmaxStats row = block_stats(mine, shared);
  const float log_sum = row.max + logf(row.sum);
  if (threadIdx.x == 0) row_loss[blockIdx.x] = counted ? log_sum - target_logit : 0.f;
  const float weight = counted ? (scale ? *scale : 1.f) : 0.f;
  for (int64_t j = threadIdx.x; j < padded_vocab; j += blockDim.x) {
    float g = 0.f;
    if (j < vocab) g = (expf(to_float(x[j]) - log_sum) - (j == target ? 1.f : 0.f)) * weight;
    x[j] = from_float<T>(g);
  }
}

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

int sm_count() {
  return at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
}

// One row per block of ceil(C / kPerThread) threads rounded up to whole warps; a warp per row,
// four rows per block, when one warp is enough.
struct RowLaunch {
  dim3 grid;
  dim3 block;
};

RowLaunch row_launch(int64_t rows, int64_t C) {
  const int64_t threads =
      std::clamp<int64_t>(ceil_div(ceil_div(C, kPerThread), kWarp) * kWarp, kWarp, kMaxThreads);
  const int64_t rows_per_block = threads == kWarp ? kWarpRowsPerBlock : 1;
  return {dim3(static_cast<unsigned>(ceil_div(rows, rows_per_block))),
          dim3(static_cast<unsigned>(threads), static_cast<unsigned>(rows_per_block))};
}

// Column sums: blocks of 32 columns x kColumnRows, the rows split into chunks so that about
// four blocks per multiprocessor run; each chunk leaves one row of partial sums.
struct ColumnLaunch {
  dim3 grid;
  dim3 block;
  int64_t rows_per_chunk;
  int64_t chunks;
};

ColumnLaunch column_launch(int64_t rows, int64_t C) {
  const int64_t column_blocks = ceil_div(C, kWarp);
  const int64_t wanted_chunks = std::max<int64_t>(1, ceil_div(4 * sm_count(), column_blocks));
  const int64_t chunks_max = std::min<int64_t>(wanted_chunks, ceil_div(rows, kColumnRows));
  const int64_t rows_per_chunk = ceil_div(rows, std::max<int64_t>(1, chunks_max));
  const int64_t chunks = ceil_div(rows, rows_per_chunk);
  return {dim3(static_cast<unsigned>(column_blocks), static_cast<unsigned>(chunks)),
          dim3(kWarp, kColumnRows), rows_per_chunk, chunks};
}

// Calls f(T{}) with T the C++ type of the floating dtype t.
template <typename F>
void with_float_type(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat:
      f(float{});
      return;
    case at::kBFloat16:
      f(c10::BFloat16{});
      return;
    case at::kHalf:
      f(c10::Half{});
      return;
    default:
      TORCH_CHECK(false, "fused kernels: unsupported dtype ", t);
  }
}

bool is_kernel_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

// Calls f(R{}, B{}, O{}) for the dtype triples add_norm_dtypes_supported accepts.
template <typename F>
void with_norm_types(at::ScalarType residual, at::ScalarType branch, at::ScalarType normed, F&& f) {
  TORCH_CHECK(add_norm_dtypes_supported(residual, branch, normed),
              "add_norm kernel: unsupported dtypes ", residual, ", ", branch, " -> ", normed);
  with_float_type(residual, [&](auto r) {
    with_float_type(branch, [&](auto b) {
      using R = decltype(r);
      using B = decltype(b);
      if constexpr (std::is_same_v<R, float> || std::is_same_v<R, B>) {
        with_float_type(normed, [&](auto o) { f(r, b, o); });
      }
    });
  });
}

}  // namespace

bool add_norm_dtypes_supported(at::ScalarType residual, at::ScalarType branch,
                               at::ScalarType normed) {
  return is_kernel_float(residual) && is_kernel_float(branch) && is_kernel_float(normed) &&
         (residual == at::kFloat || residual == branch);
}

AddNormSaved add_norm_forward(const at::Tensor& residual, const at::Tensor& branch,
                              const at::Tensor& weight32, const at::Tensor& bias32, double eps,
                              bool rms, at::ScalarType normed_dtype) {
  const c10::cuda::CUDAGuard guard(residual.device());
  const int64_t C = residual.size(-1);
  const int64_t rows = residual.numel() / C;
  const auto options = residual.options();
  AddNormSaved out;
  out.sum =
      at::empty(residual.sizes(),
                options.dtype(c10::promoteTypes(residual.scalar_type(), branch.scalar_type())));
  out.normed = at::empty(residual.sizes(), options.dtype(normed_dtype));
  out.rstd = at::empty({rows}, options.dtype(at::kFloat));
  if (!rms) out.mean = at::empty({rows}, options.dtype(at::kFloat));
  if (rows == 0) return out;

  const RowLaunch launch = row_launch(rows, C);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  with_norm_types(residual.scalar_type(), branch.scalar_type(), normed_dtype,
                  [&](auto r, auto b, auto o) {
                    using R = decltype(r);
                    using B = decltype(b);
                    using O = decltype(o);
                    add_norm_forward_kernel<R, B, O><<<launch.grid, launch.block, 0, stream>>>(
                        residual.data_ptr<R>(), branch.data_ptr<B>(), weight32.data_ptr<float>(),
                        bias32.defined() ? bias32.data_ptr<float>() : nullptr,
                        out.sum.data_ptr<SumType<R, B>>(), out.normed.data_ptr<O>(),
                        rms ? nullptr : out.mean.data_ptr<float>(), out.rstd.data_ptr<float>(),
                        rows, static_cast<int>(C), static_cast<float>(eps), rms);
                    C10_CUDA_KERNEL_LAUNCH_CHECK();
                  });
  return out;
}

AddNormGrads add_norm_backward(const at::Tensor& grad_normed, const at::Tensor& grad_sum,
                               const at::Tensor& sum, const at::Tensor& weight32,
                               const at::Tensor& mean, const at::Tensor& rstd, bool rms,
                               at::ScalarType residual_dtype, at::ScalarType branch_dtype,
                               bool weight_grads) {
  const c10::cuda::CUDAGuard guard(sum.device());
  const int64_t C = sum.size(-1);
  const int64_t rows = sum.numel() / C;
  const auto options = sum.options();
  AddNormGrads grads;
  grads.residual = at::empty(sum.sizes(), options.dtype(residual_dtype));
  const bool same_dtype = residual_dtype == branch_dtype;
  grads.branch = same_dtype ? grads.residual : at::empty(sum.sizes(), options.dtype(branch_dtype));
  if (rows == 0) return grads;

  const RowLaunch launch = row_launch(rows, C);
  const ColumnLaunch columns = column_launch(rows, C);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor partials;
  if (weight_grads) partials = at::empty({columns.chunks, 2, C}, options.dtype(at::kFloat));
  with_norm_types(
      residual_dtype, branch_dtype, grad_normed.scalar_type(), [&](auto r, auto b, auto o) {
        using R = decltype(r);
        using B = decltype(b);
        using O = decltype(o);
        using S = SumType<R, B>;
        add_norm_backward_kernel<R, B, O><<<launch.grid, launch.block, 0, stream>>>(
            grad_normed.data_ptr<O>(), grad_sum.defined() ? grad_sum.data_ptr<S>() : nullptr,
            sum.data_ptr<S>(), weight32.data_ptr<float>(), rms ? nullptr : mean.data_ptr<float>(),
            rstd.data_ptr<float>(), grads.residual.data_ptr<R>(),
            same_dtype ? nullptr : grads.branch.data_ptr<B>(), rows, static_cast<int>(C), rms);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (weight_grads) {
          add_norm_weight_grad_kernel<S, O><<<columns.grid, columns.block, 0, stream>>>(
              grad_normed.data_ptr<O>(), sum.data_ptr<S>(), rms ? nullptr : mean.data_ptr<float>(),
              rstd.data_ptr<float>(), partials.data_ptr<float>(), rows, static_cast<int>(C),
              columns.rows_per_chunk, rms);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
  if (weight_grads) {
    // The second, deterministic reduction: over the chunks' partial sums.
    const at::Tensor totals = partials.sum(0);  // (2, C)
    grads.weight = totals[0];
    if (!rms) grads.bias = totals[1];
  }
  return grads;
}

at::Tensor bias_gelu_forward(const at::Tensor& x, const at::Tensor& bias32, bool tanh) {
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty_like(x);
  const int64_t n = x.numel();
  if (n == 0) return y;
  const int64_t blocks = std::min<int64_t>(ceil_div(n, kElementwiseThreads), 32LL * sm_count());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  with_float_type(x.scalar_type(), [&](auto tag) {
    using X = decltype(tag);
    bias_gelu_forward_kernel<X><<<static_cast<unsigned>(blocks), kElementwiseThreads, 0, stream>>>(
        x.data_ptr<X>(), bias32.data_ptr<float>(), y.data_ptr<X>(), n, x.size(-1), tanh);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

BiasGeluGrads bias_gelu_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                 const at::Tensor& bias32, bool tanh, bool bias_grad) {
  const c10::cuda::CUDAGuard guard(x.device());
  BiasGeluGrads grads;
  grads.x = at::empty_like(x);
  const int64_t n = x.numel();
  const int64_t C = x.size(-1);
  if (n == 0) return grads;
  const int64_t rows = n / C;
  const int64_t blocks = std::min<int64_t>(ceil_div(n, kElementwiseThreads), 32LL * sm_count());
  const ColumnLaunch columns = column_launch(rows, C);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor partials;
  if (bias_grad) partials = at::empty({columns.chunks, C}, x.options().dtype(at::kFloat));
  with_float_type(x.scalar_type(), [&](auto tag) {
    using X = decltype(tag);
    bias_gelu_backward_kernel<X><<<static_cast<unsigned>(blocks), kElementwiseThreads, 0, stream>>>(
        grad_y.data_ptr<X>(), x.data_ptr<X>(), bias32.data_ptr<float>(), grads.x.data_ptr<X>(), n,
        C, tanh);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (bias_grad) {
      column_sum_kernel<X><<<columns.grid, columns.block, 0, stream>>>(
          grads.x.data_ptr<X>(), partials.data_ptr<float>(), rows, C, columns.rows_per_chunk);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  if (bias_grad) grads.bias = partials.sum(0);  // (C)
  return grads;
}

at::Tensor cross_entropy_grad(const at::Tensor& logits, int64_t vocab, const at::Tensor& targets,
                              const at::Tensor& scale32) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t rows = logits.size(0);
  at::Tensor row_loss = at::empty({rows}, logits.options().dtype(at::kFloat));
  if (rows == 0) return row_loss;
  TORCH_CHECK(rows <= std::numeric_limits<int32_t>::max(), "cross_entropy_grad: too many rows");
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  with_float_type(logits.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    cross_entropy_grad_kernel<T><<<static_cast<unsigned>(rows), kLossThreads, 0, stream>>>(
        logits.data_ptr<T>(), targets.data_ptr<int64_t>(),
        scale32.defined() ? scale32.data_ptr<float>() : nullptr, row_loss.data_ptr<float>(), vocab,
        logits.size(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return row_loss;
}

}  // namespace lmtune::fused_cuda
