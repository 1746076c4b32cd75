// The CPU bf16 path of a CPU without bf16 instructions (src/model/bf16_emulation.cpp), forced on
// whatever CPU runs the tests, against LibTorch's own bf16 autocast kernels (forced too): the same
// values to within one bf16 rounding step, forward and backward, as docs/benchmarks.md claims.
#include <gtest/gtest.h>

#include <cstdlib>

#include "lmtune/model/bf16_emulation.h"
#include "lmtune/model/gpt2.h"
#include "lmtune/train/evaluate.h"
#include "lmtune/train/precision.h"
#include "tiny_gpt2.h"

using lmtune::CpuBf16Kernels;

namespace {

// The CPU bf16 kernels forced for a scope, whatever this CPU would choose.
class ForcedKernels {
 public:
  explicit ForcedKernels(CpuBf16Kernels kernels) { lmtune::force_cpu_bf16_kernels(kernels); }
  ~ForcedKernels() { lmtune::force_cpu_bf16_kernels(std::nullopt); }
  ForcedKernels(const ForcedKernels&) = delete;
  ForcedKernels& operator=(const ForcedKernels&) = delete;
};

// One bf16 rounding step at each element of `magnitude`: the spacing of bf16 numbers there,
// 2^(e - 7) for a magnitude in [2^e, 2^(e + 1)) (bf16 keeps 8 significant bits).
torch::Tensor bf16_step(const torch::Tensor& magnitude) {
  return torch::pow(2.0, torch::floor(torch::log2(magnitude.abs().clamp_min(1e-30))) - 7);
}

// |a - b| <= one bf16 rounding step at `magnitude`, at every element.
testing::AssertionResult within_one_bf16_step(const torch::Tensor& a, const torch::Tensor& b,
                                              const torch::Tensor& magnitude) {
  if (a.sizes() != b.sizes()) return testing::AssertionFailure() << "shapes differ";
  auto a64 = a.to(torch::kFloat64), b64 = b.to(torch::kFloat64);
  auto in_steps = (a64 - b64).abs() / bf16_step(magnitude.to(torch::kFloat64));
  const int64_t beyond = (in_steps > 1).sum().item<int64_t>();
  if (beyond == 0) return testing::AssertionSuccess();
  return testing::AssertionFailure()
         << beyond << " of " << a.numel() << " elements differ by more "
         << "than one bf16 step; at most by " << in_steps.max().item<double>() << " steps";
}

// The same at the larger magnitude of the two results themselves: the strict form, for results
// rounded once from an fp32 accumulation.
testing::AssertionResult within_one_bf16_step(const torch::Tensor& a, const torch::Tensor& b) {
  return within_one_bf16_step(a, b, torch::maximum(a.abs(), b.abs()));
}

// Whether every element is a bf16 number (rounding to bf16 leaves it as it is).
bool holds_bf16_values(const torch::Tensor& t) {
  return torch::equal(t.to(torch::kBFloat16).to(t.scalar_type()), t);
}

// The linear layer's output and its input, weight and bias gradients under CPU bf16 autocast
// with `kernels`: x (6, 16, 32), weight (48, 32), bias (48).
std::vector<torch::Tensor> linear_under_autocast(CpuBf16Kernels kernels) {
  torch::manual_seed(0);
  auto x = torch::randn({6, 16, 32}, torch::requires_grad());
  auto w = torch::randn({48, 32}, torch::requires_grad());
  auto b = torch::randn({48}, torch::requires_grad());
  ForcedKernels forced(kernels);
  lmtune::AutocastScope autocast(lmtune::Precision::kBf16, torch::kCPU);
  EXPECT_EQ(lmtune::emulates_bf16(x), kernels == CpuBf16Kernels::kEmulated);
  auto y = lmtune::autocast_linear(x, w, b);  // (6, 16, 48)
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  auto grads = torch::autograd::grad({y.to(torch::kFloat32).square().sum()}, {x, w, b});
  return {y.to(torch::kFloat32), grads[0], grads[1], grads[2]};
}

}  // namespace

TEST(Bf16Emulation, TakenUnderCpuBf16AutocastWhereTheKernelsSayEmulated) {
  auto x = torch::randn({4, 8});
  {
    ForcedKernels forced(CpuBf16Kernels::kEmulated);
    EXPECT_FALSE(lmtune::emulates_bf16(x));  // no autocast
    lmtune::AutocastScope fp32(lmtune::Precision::kFp32, torch::kCPU);
    EXPECT_FALSE(lmtune::emulates_bf16(x));
    lmtune::AutocastScope bf16(lmtune::Precision::kBf16, torch::kCPU);
    EXPECT_TRUE(lmtune::emulates_bf16(x));
  }
  {
    ForcedKernels forced(CpuBf16Kernels::kNative);
    lmtune::AutocastScope bf16(lmtune::Precision::kBf16, torch::kCPU);
    EXPECT_FALSE(lmtune::emulates_bf16(x));
  }
  // Not forced: the hardware decides, unless LMTUNE_CPU_BF16 names a path.
  const char* environment = std::getenv("LMTUNE_CPU_BF16");
  if (!environment) {
    EXPECT_EQ(lmtune::cpu_bf16_kernels() == CpuBf16Kernels::kEmulated,
              !lmtune::cpu_has_native_bf16());
  }
  lmtune::AutocastScope bf16(lmtune::Precision::kBf16, torch::kCPU);
  EXPECT_EQ(lmtune::emulates_bf16(x), lmtune::cpu_bf16_kernels() == CpuBf16Kernels::kEmulated);
}

// Both paths accumulate in fp32 and round the result to bf16 once, so they differ only where
// their summation orders fall on two sides of a rounding boundary: by one step at most.
TEST(Bf16Emulation, LinearMatchesLibTorchsBf16AutocastWithinOneRoundingStep) {
  auto emulated = linear_under_autocast(CpuBf16Kernels::kEmulated);
  auto native = linear_under_autocast(CpuBf16Kernels::kNative);
  const char* names[] = {"output", "input gradient", "weight gradient", "bias gradient"};
  for (std::size_t i = 0; i < emulated.size(); ++i) {
    EXPECT_EQ(emulated[i].scalar_type(), native[i].scalar_type()) << names[i];
    EXPECT_TRUE(within_one_bf16_step(emulated[i], native[i])) << names[i];
    EXPECT_TRUE(holds_bf16_values(emulated[i])) << names[i];  // rounded, as native rounds
  }
  // The emulation really computes in bf16: the fp32 layer gives other values.
  torch::manual_seed(0);
  auto x = torch::randn({6, 16, 32}), w = torch::randn({48, 32}), b = torch::randn({48});
  auto fp32 = torch::linear(x, w, b);
  EXPECT_FALSE(torch::equal(emulated[0], fp32));
  EXPECT_LT((emulated[0] - fp32).norm().item<double>(), 1e-2 * fp32.norm().item<double>());
}

// LibTorch's bf16 attention rounds inside (the emulation only its operands and result), so where
// an output is a sum that cancels (sum_j p_j v_j near 0) the two differ by a rounding step of the
// terms, not of the small result: the bound is one step at sum_j p_j |v_j|. (At the result's own
// magnitude some elements differ by 50 steps.)
TEST(Bf16Emulation, AttentionMatchesLibTorchsBf16AutocastWithinOneRoundingStepOfItsTerms) {
  torch::manual_seed(1);
  auto q = torch::randn({2, 2, 8, 16}), k = torch::randn({2, 2, 8, 16}),
       v = torch::randn({2, 2, 8, 16});
  auto attend = [&](CpuBf16Kernels kernels) {
    ForcedKernels forced(kernels);
    lmtune::AutocastScope autocast(lmtune::Precision::kBf16, torch::kCPU);
    EXPECT_EQ(lmtune::emulates_bf16(q), kernels == CpuBf16Kernels::kEmulated);
    auto y = lmtune::autocast_attention(q, k, v, std::nullopt, 0.0, /*causal=*/true);
    EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
    return y.to(torch::kFloat32);  // (2, 2, 8, 16)
  };
  auto emulated = attend(CpuBf16Kernels::kEmulated), native = attend(CpuBf16Kernels::kNative);
  auto bf16 = [](const torch::Tensor& t) { return t.to(torch::kBFloat16).to(torch::kFloat32); };
  auto terms = at::scaled_dot_product_attention(bf16(q), bf16(k), bf16(v).abs(), std::nullopt, 0.0,
                                                /*causal=*/true);  // sum_j p_j |v_j|
  EXPECT_TRUE(within_one_bf16_step(emulated, native, terms));
  EXPECT_TRUE(holds_bf16_values(emulated));
  EXPECT_FALSE(torch::equal(emulated, native));  // two computations, not one compared with itself
}
