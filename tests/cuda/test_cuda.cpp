// Tests of the CUDA code paths (label `cuda`): each one runs on a GPU and fails without one, so
// scripts/test.sh runs this label only where a GPU is visible. They compare the GPU against the
// CPU or against the plain path on the GPU: forward, activation checkpointing with dropout (the
// CUDA generator restored), the chunked loss, the fused AdamW, the fp16 loss scaler, mixed
// precision steps, peak memory, the checkpointed CUDA generator state, a Llama-family model,
// quantized weights (int8, nf4), LoRA adapters over a quantized base, the fused add + norm,
// bias + GELU and cross-entropy kernels against their reference paths, and train.fused_loss.
#include <gtest/gtest.h>

#include <iostream>

#include <torch/cuda.h>

#include "../tiny_gpt2.h"
#include "../tiny_llama.h"
#include "lmtune/model/chunked_loss.h"
#include "lmtune/model/fused_ops.h"
#include "lmtune/model/gpt2.h"
#include "lmtune/model/llama.h"
#include "lmtune/model/lora.h"
#include "lmtune/model/quantize.h"
#include "lmtune/train/checkpoint.h"
#include "lmtune/train/evaluate.h"
#include "lmtune/train/loss_scaler.h"
#include "lmtune/train/memory.h"
#include "lmtune/train/optim.h"
#include "lmtune/train/precision.h"
#include "lmtune/train/training_step.h"

using lmtune::GPT2;
using lmtune::Precision;

// Outside the anonymous namespace: the TEST_F classes derive from it.
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(torch::cuda::is_available()) << "these tests need a CUDA device";
    // Exact fp32 comparisons: no TF32 in matrix products or convolutions.
    at::globalContext().setAllowTF32CuBLAS(false);
    at::globalContext().setAllowTF32CuDNN(false);
  }
};

namespace {

const torch::Device kCuda(torch::kCUDA, 0);

GPT2 tiny_model(double dropout, torch::Device device) {
  TinyShape shape;
  shape.n_layer = 3;
  shape.n_embd = 64;
  shape.n_positions = 64;
  shape.vocab = 97;
  GPT2 model = tiny_gpt2(shape, dropout, /*seed=*/3);
  model->to(device);
  return model;
}

lmtune::Batch tiny_batch() {
  return random_batch(/*vocab=*/97, /*rows=*/4, /*seq=*/48);
}

struct StepResult {
  double loss = 0;
  std::map<std::string, torch::Tensor> grads;  // on the CPU
};

// A tiny Llama-family model with the parts GPT-2 lacks: grouped-query attention (4 query heads
// over 2 key/value heads), RMSNorm on q and k (Qwen3), untied output head, weights from `seed`.
lmtune::Llama tiny_llama(torch::Device device) {
  TinyLlamaShape shape;
  shape.vocab = 97;
  shape.head_dim = 16;
  shape.n_positions = 64;
  lmtune::LlamaConfig c = tiny_llama_config(shape);
  c.qk_norm = true;
  lmtune::Llama model(c);
  model->init_weights(/*seed=*/4);
  model->train();
  model->to(device);
  return model;
}

// One forward and backward of `model` on the tiny batch, with every generator at `seed`.
StepResult train_step(const lmtune::CausalLM& model, Precision precision, torch::Device device,
                      int64_t chunk_tokens = 0, uint64_t seed = 11, bool fused_loss = false) {
  torch::manual_seed(seed);
  torch::cuda::manual_seed_all(seed);
  auto loss =
      lmtune::summed_token_loss(model, tiny_batch(), precision, device, chunk_tokens, fused_loss);
  loss.backward();
  StepResult result{loss.item<double>(), {}};
  for (const auto& p : model->named_parameters())
    if (p.value().grad().defined()) result.grads[p.key()] = p.value().grad().cpu();
  return result;
}

// Every gradient within atol + rtol * |expected|, and the same set of them.
void expect_close_grads(const StepResult& actual, const StepResult& expected, double rtol,
                        double atol) {
  ASSERT_EQ(actual.grads.size(), expected.grads.size());
  for (const auto& [name, grad] : expected.grads) {
    ASSERT_TRUE(actual.grads.count(name)) << name;
    const auto& got = actual.grads.at(name);
    EXPECT_TRUE(torch::allclose(got, grad, rtol, atol))
        << name << ": max difference " << (got - grad).abs().max().item<double>();
  }
}

// Every gradient within `tolerance` of the expected one by relative norm, |a - e| / |e|: fp32
// on two devices with different kernels and summation orders lands far below 1e-4 (seen on an
// H200: elementwise differences up to 1e-5 in a Llama's embedding gradient).
void expect_close_grads_by_norm(const StepResult& actual, const StepResult& expected,
                                double tolerance) {
  ASSERT_EQ(actual.grads.size(), expected.grads.size());
  for (const auto& [name, grad] : expected.grads) {
    ASSERT_TRUE(actual.grads.count(name)) << name;
    const double error = (actual.grads.at(name).to(torch::kFloat64) - grad.to(torch::kFloat64))
                             .norm()
                             .item<double>();
    const double norm = grad.to(torch::kFloat64).norm().item<double>();
    ASSERT_GT(norm, 0) << name << ": a zero gradient checks nothing";
    EXPECT_LT(error / norm, tolerance) << name;
  }
}

}  // namespace

TEST_F(CudaTest, Fp32LossAndGradientsMatchTheCpu) {
  GPT2 cpu = tiny_model(/*dropout=*/0.0, torch::kCPU), gpu = tiny_model(0.0, kCuda);
  auto expected = train_step(cpu, Precision::kFp32, torch::kCPU);
  auto actual = train_step(gpu, Precision::kFp32, kCuda);
  EXPECT_NEAR(actual.loss, expected.loss, 1e-5 * std::abs(expected.loss));
  expect_close_grads(actual, expected, 1e-4, 1e-6);
}

TEST_F(CudaTest, CheckpointedGradientsEqualThePlainRunWithDropout) {
  GPT2 plain = tiny_model(/*dropout=*/0.1, kCuda), checkpointed = tiny_model(0.1, kCuda);
  checkpointed->set_gradient_checkpointing(1);
  auto expected = train_step(plain, Precision::kFp32, kCuda);
  auto actual = train_step(checkpointed, Precision::kFp32, kCuda);
  EXPECT_EQ(actual.loss, expected.loss);  // identical dropout masks give the identical forward
  expect_close_grads(actual, expected, 0, 1e-6);
}

TEST_F(CudaTest, CheckpointedBf16GradientsMatchThePlainRun) {
  GPT2 plain = tiny_model(/*dropout=*/0.1, kCuda), checkpointed = tiny_model(0.1, kCuda);
  checkpointed->set_gradient_checkpointing(2);
  auto expected = train_step(plain, Precision::kBf16, kCuda);
  expect_close_grads(train_step(checkpointed, Precision::kBf16, kCuda), expected, 0, 1e-5);
}

TEST_F(CudaTest, ChunkedLossEqualsThePlainPath) {
  GPT2 plain = tiny_model(/*dropout=*/0.0, kCuda), chunked = tiny_model(0.0, kCuda);
  auto expected = train_step(plain, Precision::kFp32, kCuda);
  auto actual = train_step(chunked, Precision::kFp32, kCuda, /*chunk_tokens=*/40);
  EXPECT_NEAR(actual.loss, expected.loss, 1e-5 * std::abs(expected.loss));
  // The gradients of a loss summed over 191 tokens: the chunks add them up in another order
  // (seen: 5e-6 on a bias gradient).
  expect_close_grads(actual, expected, 1e-4, 1e-5);
}

TEST_F(CudaTest, MixedPrecisionStepsStayCloseToFp32WithFp32Gradients) {
  GPT2 model = tiny_model(/*dropout=*/0.0, kCuda);
  const double fp32 = train_step(model, Precision::kFp32, kCuda).loss;
  for (Precision precision : {Precision::kBf16, Precision::kFp16}) {
    model->zero_grad();
    auto result = train_step(model, precision, kCuda);
    EXPECT_NEAR(result.loss, fp32, 0.01 * fp32) << lmtune::enum_name(precision);
    for (const auto& p : model->parameters()) {
      ASSERT_TRUE(p.grad().defined());
      EXPECT_EQ(p.dtype(), torch::kFloat32);  // master weights stay fp32
      EXPECT_EQ(p.grad().dtype(), torch::kFloat32);
      EXPECT_TRUE(torch::isfinite(p.grad()).all().item<bool>());
    }
  }
}

TEST_F(CudaTest, FusedAdamWMatchesTheCpu) {
  auto make = [](torch::Device device) {
    auto generator = at::make_generator<at::CPUGeneratorImpl>(1);
    auto p = torch::randn({300, 7}, generator).to(device).requires_grad_(true);
    auto b = torch::randn({7}, generator).to(device).requires_grad_(true);
    return std::vector<torch::Tensor>{p, b};
  };
  auto cpu = make(torch::kCPU), gpu = make(kCuda);
  lmtune::AdamW cpu_opt({{{"p"}, {cpu[0]}, 0.1}, {{"b"}, {cpu[1]}, 0.0}}, {});
  lmtune::AdamW gpu_opt({{{"p"}, {gpu[0]}, 0.1}, {{"b"}, {gpu[1]}, 0.0}}, {});
  for (int step = 1; step <= 3; ++step) {
    auto generator = at::make_generator<at::CPUGeneratorImpl>(100 + step);
    for (std::size_t i = 0; i < cpu.size(); ++i) {
      auto grad = torch::randn(cpu[i].sizes(), generator);
      cpu[i].mutable_grad() = grad.clone();
      gpu[i].mutable_grad() = grad.to(kCuda);
    }
    cpu_opt.step(/*lr=*/1e-2);
    gpu_opt.step(/*lr=*/1e-2);
  }
  for (std::size_t i = 0; i < cpu.size(); ++i)
    EXPECT_TRUE(torch::allclose(gpu[i].cpu(), cpu[i], 1e-5, 1e-6)) << i;
  EXPECT_EQ(gpu_opt.state()[0].step.item<float>(), 3.0f);
}

TEST_F(CudaTest, LossScalerSkipsAnInfStepOnTheDeviceAndBacksOff) {
  auto p = torch::ones({4}, torch::TensorOptions().device(kCuda).requires_grad(true));
  lmtune::AdamW adamw({{{"p"}, {p}, 0.0}}, {});
  lmtune::LossScaler scaler(/*init_scale=*/1024, /*growth_interval=*/2, /*backoff=*/0.5, kCuda);
  auto grad = torch::full({4}, 2048.0);
  grad[1] = std::numeric_limits<float>::infinity();  // the injected overflow
  p.mutable_grad() = grad.to(kCuda);
  auto found_inf = torch::zeros({}, torch::TensorOptions().device(kCuda));
  scaler.unscale({p}, found_inf);
  adamw.step(/*lr=*/0.1, found_inf);
  scaler.update(found_inf);
  EXPECT_EQ(found_inf.item<float>(), 1.0f);
  EXPECT_TRUE(torch::equal(p.cpu(), torch::ones({4})));
  EXPECT_EQ(adamw.state()[0].step.item<float>(), 0.0f);
  EXPECT_EQ(scaler.state().scale, 512.0);
  EXPECT_EQ(scaler.take_skipped_steps(), 1);

  p.mutable_grad() = torch::full({4}, 1024.0).to(kCuda);  // a finite step is unscaled and taken
  found_inf.zero_();
  scaler.unscale({p}, found_inf);
  EXPECT_TRUE(torch::equal(p.grad().cpu(), torch::full({4}, 2.0)));
  adamw.step(/*lr=*/0.1, found_inf);
  scaler.update(found_inf);
  EXPECT_FALSE(torch::equal(p.cpu(), torch::ones({4})));
  EXPECT_EQ(adamw.state()[0].step.item<float>(), 1.0f);
}

TEST_F(CudaTest, PeakMemoryIsTheCachingAllocatorsPeak) {
  const double before = lmtune::peak_memory_mb(kCuda);
  {
    auto big = torch::empty({256, 1024, 1024}, torch::TensorOptions().device(kCuda));  // 1 GiB
    big.fill_(1.0f);
    torch::cuda::synchronize();
  }
  const double after = lmtune::peak_memory_mb(kCuda);
  EXPECT_GE(after, 1024.0);
  EXPECT_GE(after, before);
}

TEST_F(CudaTest, CheckpointedRngStateRestoresTheCudaGenerator) {
  torch::cuda::manual_seed_all(42);
  lmtune::TrainerState state;
  lmtune::capture_rng_state(state);
  ASSERT_EQ(state.cuda_rng_states.size(), static_cast<std::size_t>(torch::cuda::device_count()));
  auto first = torch::rand({1000}, torch::TensorOptions().device(kCuda)).cpu();
  lmtune::restore_rng_state(state);
  auto again = torch::rand({1000}, torch::TensorOptions().device(kCuda)).cpu();
  EXPECT_TRUE(torch::equal(first, again));
}

TEST_F(CudaTest, AutoChunkedLossFollowsTheGpusMemory) {
  lmtune::TrainConfig train;
  train.micro_batch_size = 16;  // GPT-2 124M at 16 x 1024: 3.3 GB of logits, plain on any GPU
  EXPECT_EQ(lmtune::resolve_loss_chunk_tokens(train, 1024, 50257, kCuda), 0);
  train.micro_batch_size = 1024;  // 211 GB of logits: chunked on any GPU
  EXPECT_EQ(lmtune::resolve_loss_chunk_tokens(train, 1024, 50257, kCuda), train.loss_chunk_tokens);
}

TEST_F(CudaTest, LlamaLossAndGradientsMatchTheCpuAndCheckpointingChangesNothing) {
  lmtune::Llama cpu = tiny_llama(torch::kCPU), gpu = tiny_llama(kCuda);
  auto expected = train_step(cpu, Precision::kFp32, torch::kCPU);
  auto actual = train_step(gpu, Precision::kFp32, kCuda);
  EXPECT_NEAR(actual.loss, expected.loss, 1e-5 * std::abs(expected.loss));
  expect_close_grads_by_norm(actual, expected, 1e-4);

  lmtune::Llama checkpointed = tiny_llama(kCuda);
  checkpointed->set_gradient_checkpointing(1);
  gpu->zero_grad();
  auto plain_bf16 = train_step(gpu, Precision::kBf16, kCuda);
  auto checkpointed_bf16 = train_step(checkpointed, Precision::kBf16, kCuda);
  EXPECT_EQ(checkpointed_bf16.loss, plain_bf16.loss);
  expect_close_grads(checkpointed_bf16, plain_bf16, 0, 1e-5);
  EXPECT_NEAR(plain_bf16.loss, expected.loss, 0.01 * std::abs(expected.loss));
}

TEST_F(CudaTest, QuantizingOnTheGpuGivesTheCpusCodesAndDequantizesToTheSameWeight) {
  torch::manual_seed(0);
  auto w = torch::randn({96, 200}) * 0.02;  // 19,200 values: nf4 blocks and int8 rows
  w.index_put_({3, 7}, 1.25);
  for (auto [type, double_quant] :
       {std::pair{lmtune::QuantType::kInt8, false}, std::pair{lmtune::QuantType::kNf4, false},
        std::pair{lmtune::QuantType::kNf4, true}}) {
    const auto on_cpu = lmtune::quantize_weight(w, type, double_quant);
    const auto on_gpu = lmtune::quantize_weight(w.to(kCuda), type, double_quant);
    const std::string what = std::string(type == lmtune::QuantType::kInt8 ? "int8" : "nf4") +
                             (double_quant ? " double" : "");
    EXPECT_TRUE(on_gpu.codes.is_cuda()) << what;
    EXPECT_TRUE(torch::equal(on_gpu.codes.cpu(), on_cpu.codes)) << what;
    // Moved after quantizing on the CPU, as build_model does: the same weight on the device.
    EXPECT_TRUE(torch::equal(on_cpu.to(kCuda).dequantize().cpu(), on_cpu.dequantize())) << what;
    EXPECT_TRUE(torch::equal(on_cpu.to(kCuda).dequantize(torch::kBFloat16).cpu(),
                             on_cpu.dequantize().to(torch::kBFloat16)))
        << what;
    // Double quantization subtracts the mean of the block scales, a reduction whose order the
    // GPU may choose differently: within rounding there, exact otherwise.
    const auto gpu_weight = on_gpu.dequantize().cpu(), cpu_weight = on_cpu.dequantize();
    if (double_quant)
      EXPECT_TRUE(torch::allclose(gpu_weight, cpu_weight, 1e-6, 1e-8)) << what;
    else
      EXPECT_TRUE(torch::equal(gpu_weight, cpu_weight)) << what;
  }
}

TEST_F(CudaTest, QuantizedLinearOnTheGpuMatchesTheCpuForwardAndBackward) {
  torch::manual_seed(1);
  auto w = torch::randn({48, 64}) * 0.05;
  auto bias = torch::randn({48}) * 0.1;
  auto x = torch::randn({3, 5, 64});
  auto upstream = torch::randn({3, 5, 48});
  for (auto type : {lmtune::QuantType::kInt8, lmtune::QuantType::kNf4}) {
    const auto q = lmtune::quantize_weight(w, type);
    auto run = [&](torch::Device device) {
      // Fresh leaves on each device (x.to(kCPU) would be x itself).
      auto xd = x.to(device).clone().requires_grad_(true);
      auto bd = bias.to(device).clone().requires_grad_(true);
      auto y = lmtune::quantized_linear(xd, q.to(device), bd);
      (y * upstream.to(device)).sum().backward();
      return std::vector<torch::Tensor>{y.detach().cpu(), xd.grad().cpu(), bd.grad().cpu()};
    };
    auto cpu = run(torch::kCPU), gpu = run(kCuda);
    for (std::size_t i = 0; i < cpu.size(); ++i)
      EXPECT_TRUE(torch::allclose(gpu[i], cpu[i], 1e-4, 1e-5))
          << i << ": max difference " << (gpu[i] - cpu[i]).abs().max().item<double>();
  }
}

TEST_F(CudaTest, LoraOverAnNf4BaseTrainsOnlyTheAdaptersAndMatchesTheCpu) {
  auto adapted = [](torch::Device device) {
    lmtune::Llama model = tiny_llama(torch::kCPU);
    lmtune::LoraSpec spec;
    spec.r = 4;
    spec.alpha = 8;
    spec.dropout = 0.0;
    spec.target_modules = {"all-linear"};
    lmtune::quantize_base(*model, lmtune::QuantType::kNf4, /*double_quant=*/true);
    torch::manual_seed(9);  // the same Kaiming draws for A on both sides
    lmtune::attach_lora(*model, spec);
    // B starts at zero, which would make A's gradient zero: give B values so both are checked.
    torch::NoGradGuard no_grad;
    for (auto& item : model->named_parameters())
      if (item.key().find(lmtune::kLoraB) != std::string::npos)
        item.value().copy_(torch::randn(item.value().sizes()) * 0.1);
    model->to(device);
    return model;
  };
  lmtune::Llama cpu = adapted(torch::kCPU), gpu = adapted(kCuda);
  auto expected = train_step(cpu, Precision::kFp32, torch::kCPU);
  auto actual = train_step(gpu, Precision::kFp32, kCuda);
  EXPECT_NEAR(actual.loss, expected.loss, 1e-5 * std::abs(expected.loss));
  ASSERT_FALSE(expected.grads.empty());
  for (const auto& [name, grad] : expected.grads)
    EXPECT_TRUE(lmtune::is_adapter_parameter(name)) << name << " has a gradient";
  expect_close_grads_by_norm(actual, expected, 1e-4);
  auto bf16 = train_step(adapted(kCuda), Precision::kBf16, kCuda);
  EXPECT_NEAR(bf16.loss, expected.loss, 0.01 * std::abs(expected.loss));
  for (const auto& [name, grad] : bf16.grads) EXPECT_EQ(grad.dtype(), torch::kFloat32) << name;
}

TEST_F(CudaTest, VocabPaddingGivesThePlainLossAndGradients) {
  GPT2 plain = tiny_model(/*dropout=*/0.0, kCuda), padded = tiny_model(0.0, kCuda);
  padded->set_vocab_padding(64);  // vocabulary 97 -> 128
  auto expected = train_step(plain, Precision::kFp32, kCuda);
  auto actual = train_step(padded, Precision::kFp32, kCuda);
  EXPECT_NEAR(actual.loss, expected.loss, 1e-5 * std::abs(expected.loss));
  expect_close_grads_by_norm(actual, expected, 1e-5);
  plain->zero_grad();
  padded->zero_grad();
  // bf16: other matrix sizes may pick other kernels, so within bf16 rounding of each other.
  expected = train_step(plain, Precision::kBf16, kCuda);
  actual = train_step(padded, Precision::kBf16, kCuda);
  EXPECT_NEAR(actual.loss, expected.loss, 1e-3 * std::abs(expected.loss));
  expect_close_grads_by_norm(actual, expected, 1e-2);
}

namespace {

// The fused kernels (src/model/fused_ops.cu) against the reference path of the same functions,
// both on the GPU: the channel counts include an odd one (100) and a Llama-sized one (5120).
constexpr int64_t kFusedChannels[] = {64, 384, 768, 2048, 100, 5120};
constexpr int64_t kFusedRows[] = {1, 7, 4096};

// A dtype mix of an add + norm: residual, branch, the norm's weights, and the autocast around it.
struct FusedNormCase {
  torch::Dtype residual;
  torch::Dtype branch;
  torch::Dtype weight;
  Precision autocast;  // kFp32: none
  double rtol;         // fp32 ~1e-5; a bf16/fp16 result one or two rounding steps apart
};

struct FusedNormRun {
  torch::Tensor sum, normed;
  torch::Tensor grad_residual, grad_branch, grad_weight, grad_bias;
};

// One add_norm forward and backward on (rows, C) inputs drawn from a seed of the shape, so the
// kernel and the reference see the same numbers. The residual stream's own gradient is fed back
// when `sum_grad` (as when a later block reads it), else only normed's.
FusedNormRun run_fused_add_norm(const FusedNormCase& c, bool rms, int64_t rows, int64_t C,
                                bool use_kernel, bool sum_grad) {
  torch::manual_seed(rows * 7919 + C);
  const auto on_gpu = torch::TensorOptions().device(kCuda);
  auto residual = torch::randn({rows, C}, on_gpu).to(c.residual).requires_grad_();
  auto branch = (0.5 * torch::randn({rows, C}, on_gpu) + 0.7).to(c.branch).requires_grad_();
  auto weight = (1 + 0.3 * torch::randn({C}, on_gpu)).to(c.weight).requires_grad_();
  torch::Tensor bias;
  if (!rms) bias = (0.2 * torch::randn({C}, on_gpu)).to(c.weight).requires_grad_();
  const torch::Tensor grad_normed = torch::randn({rows, C}, on_gpu);
  const torch::Tensor grad_sum = torch::randn({rows, C}, on_gpu);

  FusedNormRun run;
  {
    lmtune::AutocastScope autocast(c.autocast, kCuda);
    const lmtune::NormWeights norm{weight, bias, /*eps=*/1e-5, rms};
    lmtune::AddNormResult r = lmtune::add_norm(residual, branch, norm, use_kernel);
    run.sum = r.sum;
    run.normed = r.normed;
  }
  std::vector<torch::Tensor> outputs{run.normed};
  std::vector<torch::Tensor> grads{grad_normed.to(run.normed.scalar_type())};
  if (sum_grad) {
    outputs.push_back(run.sum);
    grads.push_back(grad_sum.to(run.sum.scalar_type()));
  }
  torch::autograd::backward(outputs, grads);
  run.grad_residual = residual.grad();
  run.grad_branch = branch.grad();
  run.grad_weight = weight.grad();
  if (!rms) run.grad_bias = bias.grad();
  return run;
}

// |actual - expected| <= rtol * (|expected| + max |expected|) everywhere, in the same dtype.
testing::AssertionResult fused_kernel_close(const torch::Tensor& actual,
                                            const torch::Tensor& expected, double rtol) {
  if (!actual.defined() || !expected.defined()) {
    return testing::AssertionFailure()
           << "undefined: actual " << actual.defined() << ", expected " << expected.defined();
  }
  if (actual.scalar_type() != expected.scalar_type() || actual.sizes() != expected.sizes()) {
    return testing::AssertionFailure() << "dtype or shape differs: " << actual.scalar_type()
                                       << " vs " << expected.scalar_type();
  }
  const torch::Tensor a = actual.to(torch::kFloat64), e = expected.to(torch::kFloat64);
  const double scale = e.abs().max().item<double>();
  const double excess = ((a - e).abs() - rtol * (e.abs() + scale)).max().item<double>();
  if (excess <= 0) return testing::AssertionSuccess();
  return testing::AssertionFailure() << "differs by up to " << (a - e).abs().max().item<double>()
                                     << " at a scale of " << scale << " (rtol " << rtol << ")";
}

// The kernel's run against the reference's: normed and every gradient within `rtol`.
void expect_fused_norm_runs_close(const FusedNormRun& k, const FusedNormRun& r, double rtol,
                                  bool rms) {
  EXPECT_TRUE(fused_kernel_close(k.normed, r.normed, rtol)) << "normed";
  EXPECT_TRUE(fused_kernel_close(k.grad_residual, r.grad_residual, rtol)) << "residual";
  EXPECT_TRUE(fused_kernel_close(k.grad_branch, r.grad_branch, rtol)) << "branch";
  EXPECT_TRUE(fused_kernel_close(k.grad_weight, r.grad_weight, rtol)) << "weight";
  if (!rms) {
    EXPECT_TRUE(fused_kernel_close(k.grad_bias, r.grad_bias, rtol)) << "bias";
  }
}

// The kernel against the reference for every shape, LayerNorm and RMSNorm: sum exactly (both
// round one fp32 add), normed and every gradient within the case's tolerance.
void expect_fused_add_norm_matches(const FusedNormCase& c) {
  for (bool rms : {false, true}) {
    for (int64_t C : kFusedChannels) {
      for (int64_t rows : kFusedRows) {
        SCOPED_TRACE(testing::Message()
                     << (rms ? "RMSNorm" : "LayerNorm") << " rows " << rows << " C " << C);
        const FusedNormRun k = run_fused_add_norm(c, rms, rows, C, /*use_kernel=*/true, true);
        const FusedNormRun r = run_fused_add_norm(c, rms, rows, C, /*use_kernel=*/false, true);
        EXPECT_TRUE(torch::equal(k.sum, r.sum));
        expect_fused_norm_runs_close(k, r, c.rtol, rms);
      }
    }
  }
}

// bias_gelu's kernel against its reference on the GPU, value and both gradients.
void expect_fused_bias_gelu_matches(torch::Dtype x_dtype, double rtol) {
  for (bool tanh : {false, true}) {
    for (int64_t C : kFusedChannels) {
      for (int64_t rows : kFusedRows) {
        SCOPED_TRACE(testing::Message() << "tanh " << tanh << " rows " << rows << " C " << C);
        std::vector<torch::Tensor> results[2];
        for (bool use_kernel : {true, false}) {
          torch::manual_seed(rows * 7919 + C);
          const auto on_gpu = torch::TensorOptions().device(kCuda);
          auto x = (2 * torch::randn({rows, C}, on_gpu)).to(x_dtype).requires_grad_();
          auto bias = torch::randn({C}, on_gpu).requires_grad_();  // fp32, as a master weight
          const torch::Tensor grad = torch::randn({rows, C}, on_gpu).to(x_dtype);
          torch::Tensor y = lmtune::bias_gelu(x, bias, tanh, use_kernel);
          y.backward(grad);
          results[use_kernel ? 0 : 1] = {y, x.grad(), bias.grad()};
        }
        EXPECT_TRUE(fused_kernel_close(results[0][0], results[1][0], rtol)) << "y";
        EXPECT_TRUE(fused_kernel_close(results[0][1], results[1][1], rtol)) << "grad x";
        EXPECT_TRUE(fused_kernel_close(results[0][2], results[1][2], rtol)) << "grad bias";
      }
    }
  }
}

}  // namespace

TEST_F(CudaTest, FusedAddNormMatchesTheReferenceInFp32) {
  ASSERT_TRUE(lmtune::fused_kernels_compiled());
  expect_fused_add_norm_matches(
      {torch::kFloat32, torch::kFloat32, torch::kFloat32, Precision::kFp32, /*rtol=*/1e-5});
}

TEST_F(CudaTest, FusedAddNormMatchesTheReferenceForABf16BranchUnderBf16Autocast) {
  expect_fused_add_norm_matches(
      {torch::kFloat32, torch::kBFloat16, torch::kFloat32, Precision::kBf16, /*rtol=*/1e-2});
}

TEST_F(CudaTest, FusedAddNormMatchesTheReferenceForAnFp16BranchUnderFp16Autocast) {
  expect_fused_add_norm_matches(
      {torch::kFloat32, torch::kHalf, torch::kFloat32, Precision::kFp16, /*rtol=*/1e-2});
}

TEST_F(CudaTest, FusedAddNormMatchesTheReferenceInPureFp16AndBf16) {
  expect_fused_add_norm_matches(
      {torch::kHalf, torch::kHalf, torch::kHalf, Precision::kFp32, /*rtol=*/1e-2});
  expect_fused_add_norm_matches(
      {torch::kBFloat16, torch::kBFloat16, torch::kBFloat16, Precision::kFp32, /*rtol=*/2e-2});
}

TEST_F(CudaTest, FusedAddNormWithoutAGradientForTheSumMatchesTheReference) {
  const FusedNormCase c{torch::kFloat32, torch::kBFloat16, torch::kFloat32, Precision::kBf16, 1e-2};
  for (bool rms : {false, true}) {
    const FusedNormRun k = run_fused_add_norm(c, rms, /*rows=*/7, /*C=*/768, true, false);
    const FusedNormRun r = run_fused_add_norm(c, rms, /*rows=*/7, /*C=*/768, false, false);
    SCOPED_TRACE(rms ? "RMSNorm" : "LayerNorm");
    expect_fused_norm_runs_close(k, r, c.rtol, rms);
  }
}

TEST_F(CudaTest, FusedAddNormTakesTheKernelPathOnTheGpu) {
  // The kernel's output comes from a custom autograd function, the reference's from layer_norm.
  const FusedNormCase c{torch::kFloat32, torch::kFloat32, torch::kFloat32, Precision::kFp32, 0};
  const FusedNormRun k = run_fused_add_norm(c, /*rms=*/false, 7, 64, /*use_kernel=*/true, true);
  const FusedNormRun r = run_fused_add_norm(c, /*rms=*/false, 7, 64, /*use_kernel=*/false, true);
  ASSERT_TRUE(k.normed.grad_fn() && r.normed.grad_fn());
  EXPECT_NE(k.normed.grad_fn()->name(), r.normed.grad_fn()->name());
}

TEST_F(CudaTest, FusedBiasGeluMatchesTheReferenceInFp32Bf16AndFp16) {
  expect_fused_bias_gelu_matches(torch::kFloat32, /*rtol=*/1e-5);
  expect_fused_bias_gelu_matches(torch::kBFloat16, /*rtol=*/1e-2);
  expect_fused_bias_gelu_matches(torch::kHalf, /*rtol=*/1e-2);
}

TEST_F(CudaTest, FusedAddNormTakesUpTo16384ChannelsAndFallsBackBeyond) {
  const FusedNormCase c{torch::kFloat32, torch::kBFloat16, torch::kFloat32, Precision::kBf16, 1e-2};
  for (bool rms : {false, true}) {
    const FusedNormRun k = run_fused_add_norm(c, rms, /*rows=*/33, /*C=*/16384, true, true);
    const FusedNormRun r = run_fused_add_norm(c, rms, /*rows=*/33, /*C=*/16384, false, true);
    SCOPED_TRACE(rms ? "RMSNorm" : "LayerNorm");
    expect_fused_norm_runs_close(k, r, c.rtol, rms);
    // One channel more than a block holds: the reference path, asked for the kernel or not.
    const FusedNormRun wide = run_fused_add_norm(c, rms, /*rows=*/3, /*C=*/16385, true, true);
    const FusedNormRun plain = run_fused_add_norm(c, rms, /*rows=*/3, /*C=*/16385, false, true);
    EXPECT_EQ(wide.normed.grad_fn()->name(), plain.normed.grad_fn()->name());
    EXPECT_TRUE(torch::equal(wide.normed, plain.normed));
  }
}

// train.fused_kernels in whole models on the GPU: GPT-2 (add + LayerNorm, bias + GELU) and a Llama
// (add + RMSNorm) through the CUDA kernels give the plain blocks' loss and gradients in fp32 and
// under bf16 autocast, and checkpointed blocks recompute through the kernels to the same result.
TEST_F(CudaTest, FusedKernelBlocksGiveThePlainBlocksLossAndGradients) {
  for (bool llama : {false, true}) {
    SCOPED_TRACE(llama ? "llama" : "gpt2");
    lmtune::CausalLM model = llama ? lmtune::CausalLM(tiny_llama(kCuda))
                                   : lmtune::CausalLM(tiny_model(/*dropout=*/0.0, kCuda));
    auto step = [&](bool fused, Precision precision) {
      model->set_fused_kernels(fused);
      model->zero_grad();
      return train_step(model, precision, kCuda);
    };
    for (Precision precision : {Precision::kFp32, Precision::kBf16}) {
      SCOPED_TRACE(lmtune::enum_name(precision));
      const StepResult plain = step(false, precision);
      const StepResult fused = step(true, precision);
      const double tolerance = precision == Precision::kFp32 ? 1e-5 : 2e-2;
      EXPECT_NEAR(fused.loss, plain.loss, tolerance * std::abs(plain.loss));
      expect_close_grads_by_norm(fused, plain, tolerance);
    }
    const StepResult fused = step(true, Precision::kBf16);
    model->set_gradient_checkpointing(1);
    const StepResult checkpointed = step(true, Precision::kBf16);
    model->set_gradient_checkpointing(0);
    EXPECT_EQ(checkpointed.loss, fused.loss);
    expect_close_grads(checkpointed, fused, 0, 1e-5);
  }
}

// train.fused_clipping on the GPU with the fp16 loss scaler: the fused AdamW divides by scale /
// clip coefficient as it reads the gradients, and the weights come out as with the scaler's
// unscale pass and separate clipping. GPU backward is not bit-reproducible (atomics), and Adam
// turns the smallest gradient differences into update differences (a 2026-11-30 H200 run failed
// a fixed 1e-4 tolerance on most weights), so the bound is the spread of two identical separate
// runs, plus a floor for the fold's own rounding.
TEST_F(CudaTest, FusedClippingWithTheFp16ScalerMatchesSeparatePasses) {
  auto run = [&](bool fused_clipping) {
    GPT2 model = tiny_model(/*dropout=*/0.0, kCuda);
    lmtune::AdamW optimizer(lmtune::decay_groups(*model, 0.1), lmtune::AdamWOptions{});
    lmtune::LossScaler scaler(/*init_scale=*/1024, /*growth_interval=*/1000, /*backoff=*/0.5,
                              kCuda);
    lmtune::TrainingStep step(model, optimizer,
                              lmtune::StepSettings{Precision::kFp16, kCuda, 0,
                                                   /*max_grad_norm=*/0.05, fused_clipping},
                              &scaler);
    std::vector<double> norms;
    for (int i = 0; i < 3; ++i) {
      torch::manual_seed(11);
      norms.push_back(step.run({tiny_batch()}, /*lr=*/1e-3).grad_norm.item<double>());
    }
    // Weights, and first moments, which are (1 - beta1) x the clipped gradients: they show the
    // clipping that Adam's update, nearly blind to a gradient's scale, would hide.
    std::map<std::string, torch::Tensor> weights;
    for (const auto& p : model->named_parameters()) weights[p.key()] = p.value().detach().cpu();
    for (const auto& state : optimizer.state())
      weights["moment:" + state.name] = state.exp_avg.cpu();
    return std::make_pair(norms, weights);
  };
  auto [separate_norms, separate] = run(false);
  auto [again_norms, again] = run(false);
  auto [fused_norms, fused] = run(true);
  for (std::size_t i = 0; i < separate_norms.size(); ++i) {
    EXPECT_GT(separate_norms[i], 0.05);  // clipping acts
    EXPECT_NEAR(fused_norms[i], separate_norms[i], 1e-3 * separate_norms[i]);
  }
  double worst_noise = 0, worst = 0;
  for (const auto& [name, weight] : separate) {
    const double noise = (again.at(name) - weight).abs().max().item<double>();
    const double difference = (fused.at(name) - weight).abs().max().item<double>();
    worst_noise = std::max(worst_noise, noise);
    worst = std::max(worst, difference);
    const double floor = 1e-6 * std::max(1.0, weight.abs().max().item<double>());
    EXPECT_LE(difference, 4 * noise + floor) << name << ": two separate runs differ by " << noise;
  }
  std::cout << "fused clipping: largest weight difference " << worst
            << ", between two separate runs " << worst_noise << std::endl;
}

namespace {

// cross_entropy_with_grad's kernel against its reference path on the GPU, for logits of `dtype`
// over `vocab` real columns of `padded`, rows with ignored targets, with and without a scale.
void expect_cross_entropy_kernel_matches(torch::Dtype dtype, int64_t vocab, int64_t padded,
                                         double rtol) {
  torch::manual_seed(vocab);
  const int64_t rows = 37;
  const auto on_gpu = torch::TensorOptions().device(kCuda);
  const torch::Tensor logits = (torch::randn({rows, padded}, on_gpu) * 3).to(dtype);
  torch::Tensor targets = torch::randint(vocab, {rows}, on_gpu.dtype(torch::kLong));
  targets.index_put_({0}, -100);
  targets.index_put_({rows - 1}, -100);
  targets.index_put_({5}, vocab - 1);
  for (double scale : {1.0, 4096.0}) {
    SCOPED_TRACE(testing::Message()
                 << dtype << " vocab " << vocab << " of " << padded << " scale " << scale);
    const torch::Tensor scale_tensor =
        scale == 1.0 ? torch::Tensor() : torch::full({}, scale, on_gpu.dtype(torch::kFloat32));
    const lmtune::LossAndLogitGrad kernel =
        lmtune::cross_entropy_with_grad(logits.clone(), vocab, targets, scale_tensor, true);
    const lmtune::LossAndLogitGrad reference =
        lmtune::cross_entropy_with_grad(logits.clone(), vocab, targets, scale_tensor, false);
    EXPECT_NEAR(kernel.loss.item<double>(), reference.loss.item<double>(),
                1e-5 * std::abs(reference.loss.item<double>()));
    EXPECT_TRUE(fused_kernel_close(kernel.grad, reference.grad, rtol));
    EXPECT_EQ(kernel.grad[0].abs().max().item<double>(), 0.0);  // an ignored row
    if (padded > vocab) {
      EXPECT_EQ(kernel.grad.narrow(1, vocab, padded - vocab).abs().max().item<double>(), 0.0);
    }
  }
}

}  // namespace

TEST_F(CudaTest, CrossEntropyKernelMatchesTheReferenceInFp32Bf16AndFp16) {
  for (const auto& [vocab, padded] :
       {std::pair<int64_t, int64_t>{50257, 50304}, {32000, 32000}, {1000, 1024}, {7, 7}}) {
    expect_cross_entropy_kernel_matches(torch::kFloat32, vocab, padded, 1e-5);
    expect_cross_entropy_kernel_matches(torch::kBFloat16, vocab, padded, 1e-2);
    expect_cross_entropy_kernel_matches(torch::kHalf, vocab, padded, 1e-2);
  }
}

// -inf logits (a masked or fp16-overflowed column) leave the rest of the row finite, as LibTorch's
// loss does; a thread whose first logit is -inf must not poison its running sum.
TEST_F(CudaTest, CrossEntropyKernelTakesMinusInfinityLogits) {
  const auto on_gpu = torch::TensorOptions().device(kCuda);
  torch::Tensor logits = torch::randn({3, 2000}, on_gpu);
  logits.index_put_({0, 0}, -INFINITY);                                // thread 0's first
  logits.index_put_({1, torch::indexing::Slice(0, 1024)}, -INFINITY);  // every thread's first
  const torch::Tensor targets = torch::tensor({5, 1500, 7}, torch::kLong).to(kCuda);
  for (torch::Dtype dtype : {torch::kFloat32, torch::kBFloat16}) {
    const lmtune::LossAndLogitGrad kernel =
        lmtune::cross_entropy_with_grad(logits.to(dtype), 2000, targets, {}, true);
    const lmtune::LossAndLogitGrad reference =
        lmtune::cross_entropy_with_grad(logits.to(dtype), 2000, targets, {}, false);
    EXPECT_TRUE(std::isfinite(kernel.loss.item<double>())) << dtype;
    EXPECT_NEAR(kernel.loss.item<double>(), reference.loss.item<double>(),
                1e-5 * std::abs(reference.loss.item<double>()))
        << dtype;
    EXPECT_TRUE(torch::isfinite(kernel.grad).all().item<bool>()) << dtype;
  }
}

TEST_F(CudaTest, CrossEntropyKernelWritesTheGradientOverTheLogits) {
  const torch::Tensor logits =
      torch::randn({4, 640}, torch::TensorOptions().device(kCuda)).to(torch::kBFloat16);
  const torch::Tensor targets = torch::tensor({1, 2, 3, 4}, torch::kLong).to(kCuda);
  const lmtune::LossAndLogitGrad out =
      lmtune::cross_entropy_with_grad(logits, 640, targets, {}, /*use_kernel=*/true);
  EXPECT_EQ(out.grad.data_ptr(), logits.data_ptr());  // no fp32 copy, no new buffer
  EXPECT_EQ(out.grad.scalar_type(), torch::kBFloat16);
}

// train.fused_loss in a whole training step on the GPU, vocabulary padded (97 -> 128): the loss
// and gradients of the plain path, in fp32 and in bf16 (within bf16's rounding).
TEST_F(CudaTest, FusedLossGivesThePlainLossAndGradients) {
  GPT2 plain = tiny_model(/*dropout=*/0.0, kCuda), fused = tiny_model(0.0, kCuda);
  fused->set_vocab_padding(64);
  for (Precision precision : {Precision::kFp32, Precision::kBf16}) {
    plain->zero_grad();
    fused->zero_grad();
    const double tolerance = precision == Precision::kFp32 ? 1e-5 : 1e-2;
    auto expected = train_step(plain, precision, kCuda);
    auto actual = train_step(fused, precision, kCuda, /*chunk_tokens=*/0, /*seed=*/11,
                             /*fused_loss=*/true);
    EXPECT_NEAR(actual.loss, expected.loss, tolerance * std::abs(expected.loss));
    expect_close_grads_by_norm(actual, expected, tolerance);
  }
}
