// The reference paths of the fused ops (src/model/fused_ops.cpp) on the CPU against formulas
// written out here: residual add + LayerNorm / RMSNorm (Llama) and bias + GELU, forward and every
// gradient, in fp32 and under CPU bf16 autocast; cross-entropy with its gradient against
// LibTorch's autograd. The CUDA kernels are compared with these paths on
// a GPU in tests/cuda/test_cuda.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <utility>

#include "lmtune/model/fused_ops.h"
#include "lmtune/train/precision.h"

using lmtune::AddNormResult;
using lmtune::NormWeights;

namespace {

constexpr double kFusedEps = 1e-5;

// |actual - expected| <= rtol * (|expected| + max |expected|) everywhere, with the same dtype.
testing::AssertionResult fused_close(const torch::Tensor& actual, const torch::Tensor& expected,
                                     double rtol) {
  if (!actual.defined() || !expected.defined()) {
    return testing::AssertionFailure() << "undefined tensor";
  }
  if (actual.scalar_type() != expected.scalar_type()) {
    return testing::AssertionFailure()
           << "dtype " << actual.scalar_type() << ", expected " << expected.scalar_type();
  }
  const torch::Tensor a = actual.to(torch::kFloat64), e = expected.to(torch::kFloat64);
  const double scale = e.abs().max().item<double>();
  const double excess = ((a - e).abs() - rtol * (e.abs() + scale)).max().item<double>();
  if (excess <= 0) return testing::AssertionSuccess();
  return testing::AssertionFailure()
         << "differs by up to " << (a - e).abs().max().item<double>() << " at a scale of " << scale;
}

// Leaf tensors of an add + norm, each requiring its gradient: residual and branch (4, 6, C).
struct FusedInputs {
  torch::Tensor residual, branch, weight, bias;
};

FusedInputs fused_inputs(int64_t C, torch::Dtype branch_dtype, bool with_bias) {
  torch::manual_seed(11);
  FusedInputs in;
  in.residual = torch::randn({4, 6, C}).requires_grad_();
  // An offset mean, so that LayerNorm's centring matters.
  in.branch = (0.5 * torch::randn({4, 6, C}) + 0.7).to(branch_dtype).requires_grad_();
  in.weight = (1 + 0.3 * torch::randn({C})).requires_grad_();
  if (with_bias) in.bias = (0.2 * torch::randn({C})).requires_grad_();
  return in;
}

FusedInputs fused_copy(const FusedInputs& in) {
  FusedInputs out;
  out.residual = in.residual.detach().clone().requires_grad_();
  out.branch = in.branch.detach().clone().requires_grad_();
  out.weight = in.weight.detach().clone().requires_grad_();
  if (in.bias.defined()) out.bias = in.bias.detach().clone().requires_grad_();
  return out;
}

// The norm written out in fp32: LayerNorm (s - mean) / sqrt(var + eps) * w + b, or Llama's
// RMSNorm w * (s / sqrt(mean(s^2) + eps)).to(s's dtype); then to `out_dtype`.
torch::Tensor written_out_norm(const torch::Tensor& sum, const FusedInputs& in, bool rms,
                               torch::Dtype out_dtype) {
  const torch::Tensor s = sum.to(torch::kFloat32);
  if (rms) {
    const torch::Tensor h = s / torch::sqrt((s * s).mean(-1, /*keepdim=*/true) + kFusedEps);
    return (in.weight * h.to(sum.scalar_type())).to(out_dtype);
  }
  const torch::Tensor mean = s.mean(-1, /*keepdim=*/true);
  const torch::Tensor var = ((s - mean) * (s - mean)).mean(-1, /*keepdim=*/true);
  return ((s - mean) / torch::sqrt(var + kFusedEps) * in.weight + in.bias).to(out_dtype);
}

// Backward of normed . grad_normed + sum . grad_sum, with fixed random output gradients.
void fused_backward(const AddNormResult& r) {
  torch::manual_seed(12);
  const torch::Tensor grad_normed = torch::randn(r.normed.sizes()).to(r.normed.scalar_type());
  const torch::Tensor grad_sum = torch::randn(r.sum.sizes()).to(r.sum.scalar_type());
  torch::autograd::backward({r.normed, r.sum}, {grad_normed, grad_sum});
}

void expect_grads_close(const FusedInputs& actual, const FusedInputs& expected, double rtol) {
  EXPECT_TRUE(fused_close(actual.residual.grad(), expected.residual.grad(), rtol)) << "residual";
  EXPECT_TRUE(fused_close(actual.branch.grad(), expected.branch.grad(), rtol)) << "branch";
  EXPECT_TRUE(fused_close(actual.weight.grad(), expected.weight.grad(), rtol)) << "weight";
  if (expected.bias.defined()) {
    EXPECT_TRUE(fused_close(actual.bias.grad(), expected.bias.grad(), rtol)) << "bias";
  }
}

// The reference path against the written-out norm, forward and gradients, in fp32.
void check_fp32_add_norm(bool rms) {
  const FusedInputs in = fused_inputs(/*C=*/40, torch::kFloat32, /*with_bias=*/!rms);
  const FusedInputs expected = fused_copy(in);
  const AddNormResult r =
      lmtune::add_norm(in.residual, in.branch, {in.weight, in.bias, kFusedEps, rms},
                       /*use_kernel=*/false);
  const torch::Tensor sum = expected.residual + expected.branch;
  const AddNormResult e{sum, written_out_norm(sum, expected, rms, torch::kFloat32)};
  EXPECT_TRUE(torch::equal(r.sum, e.sum));
  EXPECT_TRUE(fused_close(r.normed, e.normed, 1e-5));
  fused_backward(r);
  fused_backward(e);
  expect_grads_close(in, expected, 1e-5);
}

TEST(FusedOps, LayerNormAfterTheAddEqualsTheWrittenOutFormulaWithEveryGradient) {
  check_fp32_add_norm(/*rms=*/false);
}

TEST(FusedOps, RmsNormAfterTheAddEqualsLlamasFormulaWithEveryGradient) {
  check_fp32_add_norm(/*rms=*/true);
}

TEST(FusedOps, LayerNormAgreesWithTorchLayerNormOfTheSum) {
  const FusedInputs in = fused_inputs(/*C=*/24, torch::kFloat32, /*with_bias=*/true);
  const AddNormResult r = lmtune::add_norm(
      in.residual, in.branch, {in.weight, in.bias, kFusedEps, /*rms=*/false}, /*use_kernel=*/false);
  const torch::Tensor expected =
      torch::layer_norm(in.residual + in.branch, {24}, in.weight, in.bias, kFusedEps);
  EXPECT_TRUE(fused_close(r.normed, expected, 1e-5));
}

// fp32 residual + bf16 branch under CPU bf16 autocast: the sum stays fp32, normed comes out bf16.
void check_autocast_add_norm(bool rms) {
  const FusedInputs in = fused_inputs(/*C=*/64, torch::kBFloat16, /*with_bias=*/!rms);
  const FusedInputs expected = fused_copy(in);
  AddNormResult r;
  {
    lmtune::AutocastScope autocast(lmtune::Precision::kBf16, torch::kCPU);
    r = lmtune::add_norm(in.residual, in.branch, {in.weight, in.bias, kFusedEps, rms},
                         /*use_kernel=*/false);
  }
  EXPECT_EQ(r.sum.scalar_type(), torch::kFloat32);
  EXPECT_EQ(r.normed.scalar_type(), torch::kBFloat16);
  const torch::Tensor sum = expected.residual + expected.branch;
  const AddNormResult e{sum, written_out_norm(sum, expected, rms, torch::kBFloat16)};
  EXPECT_TRUE(torch::equal(r.sum, e.sum));
  EXPECT_TRUE(fused_close(r.normed, e.normed, 1e-2));  // a bf16 rounding step apart at most
  fused_backward(r);
  fused_backward(e);
  expect_grads_close(in, expected, 1e-2);
  EXPECT_EQ(in.branch.grad().scalar_type(), torch::kBFloat16);
  EXPECT_EQ(in.weight.grad().scalar_type(), torch::kFloat32);
}

TEST(FusedOps, LayerNormUnderBf16AutocastGivesBf16NormedAndTheFormulasGradients) {
  check_autocast_add_norm(/*rms=*/false);
}

TEST(FusedOps, RmsNormUnderBf16AutocastGivesBf16NormedAndTheFormulasGradients) {
  check_autocast_add_norm(/*rms=*/true);
}

TEST(FusedOps, AskingForTheKernelOnTheCpuTakesTheReferencePath) {
  for (bool rms : {false, true}) {
    const FusedInputs in = fused_inputs(/*C=*/32, torch::kFloat32, /*with_bias=*/!rms);
    const FusedInputs other = fused_copy(in);
    const AddNormResult a = lmtune::add_norm(
        in.residual, in.branch, {in.weight, in.bias, kFusedEps, rms}, /*use_kernel=*/true);
    const AddNormResult b = lmtune::add_norm(other.residual, other.branch,
                                             {other.weight, other.bias, kFusedEps, rms}, false);
    EXPECT_TRUE(torch::equal(a.sum, b.sum));
    EXPECT_TRUE(torch::equal(a.normed, b.normed));
    fused_backward(a);
    fused_backward(b);
    expect_grads_close(in, other, /*rtol=*/0);
  }
  const torch::Tensor x = torch::randn({3, 8}), bias = torch::randn({8});
  EXPECT_TRUE(torch::equal(lmtune::bias_gelu(x, bias, /*tanh=*/true, /*use_kernel=*/true),
                           lmtune::bias_gelu(x, bias, /*tanh=*/true, /*use_kernel=*/false)));
}

TEST(FusedOps, RmsNormRefusesABias) {
  const FusedInputs in = fused_inputs(/*C=*/8, torch::kFloat32, /*with_bias=*/true);
  const NormWeights rms_with_bias{in.weight, in.bias, kFusedEps, /*rms=*/true};
  EXPECT_THROW(lmtune::add_norm(in.residual, in.branch, rms_with_bias, false), c10::Error);
}

// gelu written out: erf form 0.5 z (1 + erf(z / sqrt 2)); tanh form
// 0.5 z (1 + tanh(sqrt(2 / pi) (z + 0.044715 z^3))).
torch::Tensor written_out_gelu(const torch::Tensor& z, bool tanh) {
  if (tanh) {
    return 0.5 * z *
           (1 + torch::tanh(std::sqrt(2 / 3.14159265358979323846) * (z + 0.044715 * z * z * z)));
  }
  return 0.5 * z * (1 + torch::erf(z / std::sqrt(2.0)));
}

TEST(FusedOps, BiasGeluEqualsGeluOfTheSumWithBothApproximationsAndItsGradients) {
  for (bool tanh : {false, true}) {
    torch::manual_seed(13);
    const torch::Tensor x = torch::randn({5, 3, 24}).mul(2).requires_grad_();
    const torch::Tensor bias = torch::randn({24}).requires_grad_();
    const torch::Tensor x2 = x.detach().clone().requires_grad_();
    const torch::Tensor bias2 = bias.detach().clone().requires_grad_();
    const torch::Tensor y = lmtune::bias_gelu(x, bias, tanh, /*use_kernel=*/false);
    const torch::Tensor expected = torch::gelu(x2 + bias2, tanh ? "tanh" : "none");
    EXPECT_TRUE(fused_close(y, expected, 1e-6)) << "tanh " << tanh;
    EXPECT_TRUE(fused_close(y, written_out_gelu(x2.detach() + bias2.detach(), tanh), 1e-6));
    const torch::Tensor grad = torch::randn(y.sizes());
    y.backward(grad);
    expected.backward(grad);
    EXPECT_TRUE(fused_close(x.grad(), x2.grad(), 1e-6)) << "tanh " << tanh;
    EXPECT_TRUE(fused_close(bias.grad(), bias2.grad(), 1e-6)) << "tanh " << tanh;
  }
  // The two approximations differ, so the flag reaches the formula.
  const torch::Tensor z = torch::full({1, 1}, 1.5), zero = torch::zeros({1});
  EXPECT_GT((lmtune::bias_gelu(z, zero, true, false) - lmtune::bias_gelu(z, zero, false, false))
                .abs()
                .item<double>(),
            1e-5);
}

TEST(FusedOps, BiasGeluOfBf16InputRoundsTheBiasToBf16AndAnswersInBf16) {
  torch::manual_seed(14);
  const torch::Tensor x = torch::randn({6, 16}).to(torch::kBFloat16);
  const torch::Tensor bias = torch::randn({16}) * 1.001;  // fp32, not a bf16 number
  const torch::Tensor y = lmtune::bias_gelu(x, bias, /*tanh=*/false, /*use_kernel=*/false);
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  const torch::Tensor z = x.to(torch::kFloat32) + bias.to(torch::kBFloat16).to(torch::kFloat32);
  EXPECT_TRUE(torch::equal(y, written_out_gelu(z, false).to(torch::kBFloat16)));
  // With the bias unrounded some outputs would round differently.
  const torch::Tensor unrounded = written_out_gelu(x.to(torch::kFloat32) + bias, false);
  EXPECT_FALSE(torch::equal(y, unrounded.to(torch::kBFloat16)));
}

// The loss and the logits' gradient of LibTorch's cross-entropy (sum over rows, -100 ignored) on
// the first `vocab` columns, times `scale`, the padding columns' gradient 0; in fp64.
std::pair<double, torch::Tensor> autograd_cross_entropy(const torch::Tensor& logits, int64_t vocab,
                                                        const torch::Tensor& targets,
                                                        double scale) {
  torch::Tensor x = logits.to(torch::kFloat64).requires_grad_();
  torch::Tensor loss = torch::nn::functional::cross_entropy(
      x.narrow(1, 0, vocab), targets,
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kSum));
  (loss * scale).backward();
  return {loss.item<double>(), x.grad()};
}

// Rows of logits over a padded vocabulary (60 of 64 columns real), two targets ignored, logits
// spread wide enough that the softmax is far from uniform.
struct CrossEntropyCase {
  torch::Tensor logits;   // (9, 64) fp32
  torch::Tensor targets;  // (9)
  int64_t vocab = 60;
};

CrossEntropyCase cross_entropy_case() {
  torch::manual_seed(21);
  CrossEntropyCase c;
  c.logits = torch::randn({9, 64}) * 4;
  c.targets = torch::randint(c.vocab, {9}, torch::kLong);
  c.targets.index_put_({2}, -100);
  c.targets.index_put_({7}, -100);
  c.targets.index_put_({5}, c.vocab - 1);  // the last real column
  return c;
}

TEST(FusedOps, CrossEntropyWithGradEqualsLibTorchsLossAndGradient) {
  const CrossEntropyCase c = cross_entropy_case();
  for (double scale : {1.0, 1024.0}) {
    for (int64_t vocab : {c.vocab, int64_t{64}}) {  // padded, and not
      SCOPED_TRACE(testing::Message() << "scale " << scale << " vocab " << vocab);
      const auto [loss, grad] = autograd_cross_entropy(c.logits, vocab, c.targets, scale);
      const torch::Tensor scale_tensor =
          scale == 1.0 ? torch::Tensor() : torch::full({}, scale, torch::kFloat32);
      const lmtune::LossAndLogitGrad fused = lmtune::cross_entropy_with_grad(
          c.logits.clone(), vocab, c.targets, scale_tensor, /*use_kernel=*/true);
      EXPECT_EQ(fused.loss.scalar_type(), torch::kFloat32);
      EXPECT_NEAR(fused.loss.item<double>(), loss, 1e-5 * std::abs(loss));
      ASSERT_EQ(fused.grad.sizes(), c.logits.sizes());
      EXPECT_TRUE(fused_close(fused.grad.to(torch::kFloat64), grad, 1e-6));
      // Ignored rows and padding columns: exactly 0.
      EXPECT_EQ(fused.grad[2].abs().max().item<float>(), 0.f);
      EXPECT_EQ(fused.grad.narrow(1, vocab, 64 - vocab).abs().sum().item<float>(), 0.f);
    }
  }
}

// On the CPU the rows go through in blocks of about 2 MB of logits: a vocabulary of 100,000 makes
// blocks of 5 rows, so 13 rows are two whole blocks and a short one, with an ignored row in each.
TEST(FusedOps, CrossEntropyWithGradOverSeveralRowBlocksEqualsLibTorchs) {
  torch::manual_seed(22);
  const int64_t rows = 13, vocab = 100'000, padded = vocab + 64;
  const torch::Tensor logits = torch::randn({rows, padded}) * 4;
  torch::Tensor targets = torch::randint(vocab, {rows}, torch::kLong);
  for (int64_t ignored : {1, 6, 12}) targets.index_put_({ignored}, -100);
  const auto [loss, grad] = autograd_cross_entropy(logits, vocab, targets, 8.0);
  const lmtune::LossAndLogitGrad ours = lmtune::cross_entropy_with_grad(
      logits.clone(), vocab, targets, torch::full({}, 8.0, torch::kFloat32), false);
  EXPECT_NEAR(ours.loss.item<double>(), loss, 1e-5 * std::abs(loss));
  EXPECT_TRUE(fused_close(ours.grad.to(torch::kFloat64), grad, 1e-6));
  EXPECT_EQ(ours.grad[12].abs().max().item<float>(), 0.f);  // the short last block's ignored row
}

TEST(FusedOps, CrossEntropyWithGradTakesMinusInfinityLogitsAsLibTorchDoes) {
  CrossEntropyCase c = cross_entropy_case();
  c.logits.index_put_({0, 0}, -INFINITY);
  c.logits.index_put_({1, torch::indexing::Slice(0, 30)}, -INFINITY);
  c.targets.index_put_({1}, 40);
  const auto [loss, grad] = autograd_cross_entropy(c.logits, c.vocab, c.targets, 1.0);
  ASSERT_TRUE(std::isfinite(loss));
  const lmtune::LossAndLogitGrad fused =
      lmtune::cross_entropy_with_grad(c.logits.clone(), c.vocab, c.targets, {}, false);
  EXPECT_NEAR(fused.loss.item<double>(), loss, 1e-5 * std::abs(loss));
  EXPECT_TRUE(fused_close(fused.grad.to(torch::kFloat64), grad, 1e-6));
}

TEST(FusedOps, CrossEntropyWithGradOfFp32LogitsWritesTheGradientOverThem) {
  const CrossEntropyCase c = cross_entropy_case();
  const torch::Tensor logits = c.logits.clone();
  const lmtune::LossAndLogitGrad fused =
      lmtune::cross_entropy_with_grad(logits, 64, c.targets, {}, /*use_kernel=*/false);
  EXPECT_EQ(fused.grad.data_ptr(), logits.data_ptr());  // no (n, V) copy
}

TEST(FusedOps, CrossEntropyWithGradOfBf16LogitsAnswersInBf16WithFp32Statistics) {
  const CrossEntropyCase c = cross_entropy_case();
  const torch::Tensor logits = c.logits.to(torch::kBFloat16);
  const auto [loss, grad] = autograd_cross_entropy(logits, c.vocab, c.targets, 1.0);
  const lmtune::LossAndLogitGrad fused =
      lmtune::cross_entropy_with_grad(logits.clone(), c.vocab, c.targets, {}, false);
  EXPECT_EQ(fused.grad.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(fused.loss.scalar_type(), torch::kFloat32);
  // The loss of the bf16 logits as they are, computed exactly: fp32 statistics, not bf16 ones.
  EXPECT_NEAR(fused.loss.item<double>(), loss, 1e-5 * std::abs(loss));
  EXPECT_TRUE(fused_close(fused.grad, grad.to(torch::kBFloat16), 1e-2));
}

TEST(FusedOps, CrossEntropyWithGradRefusesAVocabularyOrTargetOutsideTheLogits) {
  const CrossEntropyCase c = cross_entropy_case();
  EXPECT_THROW(lmtune::cross_entropy_with_grad(c.logits.clone(), 65, c.targets, {}, false),
               c10::Error);
  EXPECT_THROW(lmtune::cross_entropy_with_grad(c.logits.clone(), 0, c.targets, {}, false),
               c10::Error);
  // A target in the padding: LibTorch's loss refuses it, and so does this.
  torch::Tensor padding_target = c.targets.clone();
  padding_target.index_put_({0}, 62);
  EXPECT_THROW(lmtune::cross_entropy_with_grad(c.logits.clone(), 60, padding_target, {}, false),
               c10::Error);
}

TEST(FusedOps, TheKernelsAreCompiledWhereLibTorchHasCuda) {
#ifdef LMTUNE_WITH_CUDA
  EXPECT_TRUE(lmtune::fused_kernels_compiled());
#else
  EXPECT_FALSE(lmtune::fused_kernels_compiled());
#endif
}

}  // namespace
