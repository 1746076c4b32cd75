// Unit tests of quantized frozen weights: round-trip error bounds, memory, and quantized_linear
// against a dense linear with the dequantized weight (fp32 and CPU bf16 autocast). Bit-exactness
// against bitsandbytes is tested end to end in tests/e2e/test_quantize_bnb.py.
#include <gtest/gtest.h>

#include "lmtune/model/bf16_emulation.h"
#include "lmtune/model/quantize.h"
#include "lmtune/train/precision.h"

namespace {

using lmtune::QuantizedWeight;
using lmtune::QuantType;

// A weight with the features that stress absmax scaling: outliers, zeros, a zero row.
torch::Tensor test_weight(int64_t out, int64_t in) {
  torch::manual_seed(0);
  auto w = torch::randn({out, in}) * 0.02;  // (out, in)
  w.index_put_({0, 3}, 1.5);
  w.index_put_({out - 1, in - 1}, -2.0);
  w.index_put_({1}, 0.0);
  return w;
}

// The absmax that scaled each value of an nf4 weight: (out, in).
torch::Tensor absmax_per_value(const QuantizedWeight& q) {
  return q.block_absmax()
      .repeat_interleave(lmtune::kNf4BlockSize)
      .slice(0, 0, q.out * q.in)
      .view({q.out, q.in});
}

TEST(Quantize, Nf4RoundTripErrorIsWithinHalfTheLargestCodeGapOfEachBlock) {
  auto w = test_weight(/*out=*/37, /*in=*/100);  // 3,700 values: the last block is short
  QuantizedWeight q = lmtune::quantize_weight(w, QuantType::kNf4);
  ASSERT_EQ(q.codes.numel(), 3700 / 2);
  ASSERT_EQ(q.absmax.numel(), 58);  // ceil(3,700 / 64)
  auto code = lmtune::nf4_code_values();
  const float largest_gap = (code.slice(0, 1) - code.slice(0, 0, 15)).max().item<float>();
  auto error = (q.dequantize() - w).abs();
  auto bound = absmax_per_value(q) * (largest_gap / 2) * (1 + 1e-6);
  EXPECT_TRUE((error <= bound).all().item<bool>()) << (error - bound).max();
}

TEST(Quantize, Int8RoundTripErrorIsWithinHalfAStepOfEachRow) {
  auto w = test_weight(/*out=*/33, /*in=*/70);
  QuantizedWeight q = lmtune::quantize_weight(w, QuantType::kInt8);
  ASSERT_EQ(q.codes.scalar_type(), torch::kInt8);
  ASSERT_EQ(q.codes.sizes(), w.sizes());
  auto error = (q.dequantize() - w).abs();
  auto bound = q.absmax.unsqueeze(1) / 254 * (1 + 1e-5);
  EXPECT_TRUE((error <= bound).all().item<bool>()) << (error - bound).max();
}

TEST(Quantize, ZeroRowsAndBlocksComeBackAsZeros) {
  auto w = test_weight(/*out=*/4, /*in=*/64);  // row 1 is zero, and is one whole nf4 block
  for (QuantType type : {QuantType::kInt8, QuantType::kNf4}) {
    auto back = lmtune::quantize_weight(w, type).dequantize();
    EXPECT_TRUE(back[1].eq(0).all().item<bool>());
    EXPECT_TRUE(back.isfinite().all().item<bool>());
  }
}

TEST(Quantize, QuantizedWeightsTakeAFractionOfBf16Memory) {
  auto w = torch::randn({1024, 1024});
  const double bf16_bytes = 2.0 * w.numel();
  auto nf4 = lmtune::quantize_weight(w, QuantType::kNf4);
  auto nf4_double = lmtune::quantize_weight(w, QuantType::kNf4, /*double_quant=*/true);
  auto int8 = lmtune::quantize_weight(w, QuantType::kInt8);
  // nf4: 0.5 byte per value + 4 bytes per 64 values = 0.5625 bytes, 28% of bf16.
  EXPECT_LE(nf4.bytes(), 0.30 * bf16_bytes);
  // Double quantization: 0.5 + 1/64 + 4/(64*256) bytes per value, about 25.8%.
  EXPECT_LT(nf4_double.bytes(), 0.26 * bf16_bytes);
  // int8: 1 byte per value + 4 bytes per row, about 50%.
  EXPECT_LE(int8.bytes(), 0.55 * bf16_bytes);
}

TEST(Quantize, DoubleQuantizedAbsmaxesStayWithinOneMapStepOfTheOriginals) {
  auto w = torch::randn({300, 128}) * torch::rand({300, 1});  // 600 blocks of varied scale
  auto plain = lmtune::quantize_weight(w, QuantType::kNf4);
  auto twice = lmtune::quantize_weight(w, QuantType::kNf4, /*double_quant=*/true);
  ASSERT_TRUE(twice.double_quantized());
  EXPECT_EQ(twice.absmax_codes.numel(), 600);
  EXPECT_EQ(twice.absmax_absmax.numel(), 3);  // ceil(600 / 256)
  // The dynamic map's widest step near 1 is about 0.014 of a block's second-level absmax.
  auto scale = twice.absmax_absmax.repeat_interleave(lmtune::kNf4StatsBlockSize).slice(0, 0, 600);
  auto error = (twice.block_absmax() - plain.absmax).abs();
  EXPECT_TRUE((error <= scale * 0.008).all().item<bool>()) << (error / scale).max();
  EXPECT_TRUE(torch::equal(twice.codes, plain.codes));
}

TEST(Quantize, QuantizeRejectsWhatNoAbsmaxCanScale) {
  auto w = torch::randn({4, 8});
  w.index_put_({2, 2}, std::numeric_limits<float>::infinity());
  EXPECT_THROW(lmtune::quantize_weight(w, QuantType::kNf4), c10::Error);
  EXPECT_THROW(lmtune::quantize_weight(torch::randn({8}), QuantType::kInt8), c10::Error);
  EXPECT_THROW(lmtune::quantize_weight(torch::randn({4, 8}), QuantType::kInt8, true), c10::Error);
}

TEST(Quantize, ToKeepsEveryTensor) {
  auto q = lmtune::quantize_weight(torch::randn({8, 64}), QuantType::kNf4, true);
  auto moved = q.to(torch::kCPU);
  EXPECT_EQ(moved.bytes(), q.bytes());
  EXPECT_TRUE(torch::equal(moved.dequantize(), q.dequantize()));
}

// quantized_linear against torch::linear with the dequantized weight held as a constant: the
// same forward values, the same grad_x and grad_bias, and no gradient anywhere else.
TEST(Quantize, QuantizedLinearMatchesDenseLinearForwardAndBackward) {
  for (QuantType type : {QuantType::kInt8, QuantType::kNf4}) {
    auto q = lmtune::quantize_weight(test_weight(/*out=*/24, /*in=*/40), type);
    auto dense = q.dequantize();  // (24, 40)
    auto x = torch::randn({3, 5, 40}, torch::requires_grad());
    auto bias = torch::randn({24}, torch::requires_grad());
    auto ours = lmtune::quantized_linear(x, q, bias);
    auto reference = torch::linear(x, dense, bias);
    EXPECT_TRUE(torch::equal(ours, reference));
    auto grad_y = torch::randn_like(ours);
    auto g_ours = torch::autograd::grad({ours}, {x, bias}, {grad_y});
    auto g_ref = torch::autograd::grad({reference}, {x, bias}, {grad_y});
    EXPECT_TRUE(torch::equal(g_ours[0], g_ref[0]));
    EXPECT_TRUE(torch::allclose(g_ours[1], g_ref[1], 1e-5, 1e-5));
    EXPECT_FALSE(q.codes.requires_grad());
    EXPECT_FALSE(q.codes.grad().defined());
  }
}

TEST(Quantize, QuantizedLinearLeavesAFrozenBiasWithoutGradient) {
  auto q = lmtune::quantize_weight(torch::randn({8, 16}), QuantType::kNf4);
  auto x = torch::randn({4, 16}, torch::requires_grad());
  auto bias = torch::randn({8});
  lmtune::quantized_linear(x, q, bias).sum().backward();
  EXPECT_TRUE(x.grad().defined());
  EXPECT_FALSE(bias.grad().defined());
}

// Under CPU bf16 autocast the weight is dequantized straight to bf16 and the result equals the
// dense projection's path (autocast_linear) given that bf16 weight, forward and backward.
TEST(Quantize, QuantizedLinearRunsUnderCpuBf16Autocast) {
  auto q = lmtune::quantize_weight(test_weight(/*out=*/48, /*in=*/32), QuantType::kNf4, true);
  auto dense = q.dequantize(torch::kBFloat16);  // (48, 32)
  auto x = torch::randn({6, 16, 32}, torch::requires_grad());
  auto bias = torch::randn({48});
  auto run = [&](bool quantized) {
    lmtune::AutocastScope autocast(lmtune::Precision::kBf16, torch::kCPU);
    auto y = quantized ? lmtune::quantized_linear(x, q, bias)
                       : lmtune::autocast_linear(x, dense, bias);  // (6, 16, 48)
    EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
    auto grad_x = torch::autograd::grad({y.to(torch::kFloat32).square().sum()}, {x})[0];
    return std::make_pair(y, grad_x);
  };
  auto [y_ours, grad_ours] = run(true);
  auto [y_ref, grad_ref] = run(false);
  EXPECT_TRUE(torch::equal(y_ours, y_ref));
  EXPECT_EQ(grad_ours.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(grad_ours, grad_ref));
}

TEST(Quantize, QuantizedLinearComputesInTheDtypeOfXWithoutAutocast) {
  auto q = lmtune::quantize_weight(torch::randn({8, 16}), QuantType::kInt8);
  auto x = torch::randn({4, 16}, torch::requires_grad());
  auto x_bf16 = x.to(torch::kBFloat16);
  auto y = lmtune::quantized_linear(x_bf16, q);  // (4, 8)
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(y, torch::linear(x_bf16, q.dequantize(torch::kBFloat16))));
  y.sum().backward();
  EXPECT_EQ(x.grad().scalar_type(), torch::kFloat32);
}

}  // namespace
