#include "lmtune/train/precision.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <fmt/format.h>
#if LMTUNE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

#include "lmtune/model/bf16_emulation.h"
#include "lmtune/model/model_factory.h"
#include "lmtune/train/checkpoint.h"

namespace lmtune {
namespace fs = std::filesystem;

namespace {

// Tokens, input and output width of the probe's linear layer for a model of width `hidden`
// trained on `tokens` tokens a micro-batch: the MLP's up projection (4x wide), with the tokens cut
// so that one pass stays under about 50 GFLOP (a fraction of a second on a few cores).
struct ProbeShape {
  int64_t tokens, in, out;
};
ProbeShape probe_shape(int64_t tokens, int64_t hidden) {
  constexpr double kMaxMultiplyAdds = 8e9;  // per matmul; a pass is three
  const int64_t out = 4 * hidden;
  const auto cap = static_cast<int64_t>(kMaxMultiplyAdds / static_cast<double>(hidden * out));
  return {std::clamp<int64_t>(std::min<int64_t>(tokens, 2048), 1, std::max<int64_t>(cap, 64)),
          hidden, out};
}

int64_t model_width(const Config& config) {
  if (config.model.init == ModelInit::kRandom) return config.model.n_embd;
  return read_model_spec(config.model.path).hidden_size;
}

// Whether `device`'s GPU computes bf16 natively (Ampere, compute capability 8.0, and later).
bool gpu_has_bf16(torch::Device device, std::string& which) {
#if LMTUNE_WITH_CUDA
  const auto* properties = at::cuda::getDeviceProperties(device.has_index() ? device.index() : 0);
  which = fmt::format("{} (compute capability {}.{})", properties->name, properties->major,
                      properties->minor);
  return properties->major >= 8;
#else
  which = device.str();
  return true;
#endif
}

// Milliseconds of one forward and backward of a linear layer under `precision`.
double time_linear_pass(Precision precision, const torch::Tensor& x, const torch::Tensor& weight,
                        const torch::Tensor& grad_y) {
  const auto start = std::chrono::steady_clock::now();
  {
    AutocastScope autocast(precision, torch::kCPU);
    torch::Tensor y = autocast_linear(x, weight);
    y.backward(grad_y.to(y.scalar_type()));
  }
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

}  // namespace

CpuPrecisionProbe probe_cpu_precision(int64_t tokens, int64_t in, int64_t out) {
  // A generator of its own: the run's random numbers (initialisation, dropout) stay untouched.
  at::Generator generator = at::detail::createCPUGenerator(0);
  torch::Tensor x = at::randn({tokens, in}, generator).requires_grad_();
  torch::Tensor weight =
      (at::randn({out, in}, generator) / std::sqrt(static_cast<double>(in))).requires_grad_();
  torch::Tensor grad_y = at::randn({tokens, out}, generator);
  torch::AutoGradMode enabled(true);
  CpuPrecisionProbe probe{tokens, in, out, 1e300, 1e300};
  constexpr int kRepeats = 3;  // the first of each is a warm-up
  for (int i = 0; i < kRepeats; ++i) {
    const double fp32 = time_linear_pass(Precision::kFp32, x, weight, grad_y);
    const double bf16 = time_linear_pass(Precision::kBf16, x, weight, grad_y);
    x.mutable_grad() = torch::Tensor();
    weight.mutable_grad() = torch::Tensor();
    if (i == 0) continue;
    probe.fp32_ms = std::min(probe.fp32_ms, fp32);
    probe.bf16_ms = std::min(probe.bf16_ms, bf16);
  }
  return probe;
}

std::string resolve_auto_precision(Config& config, torch::Device device,
                                   const std::optional<fs::path>& resume_from) {
  Precision& precision = config.train.precision;
  if (precision != Precision::kAuto) return "";
  if (resume_from) {
    // The checkpoint's: resuming in another precision would change the maths.
    const TrainerState state = read_checkpoint(find_resume_checkpoint(*resume_from));
    const auto saved = state.config.value("train", nlohmann::json::object())
                           .value("precision", std::string("bf16"));
    const auto chosen = enum_from_name<Precision>(saved);
    precision = chosen && *chosen != Precision::kAuto ? *chosen : Precision::kBf16;
    return fmt::format("train.precision: auto: {}, as the run being resumed chose",
                       enum_name(precision));
  }
  if (device.is_cuda()) {
    std::string gpu;
    const bool bf16 = gpu_has_bf16(device, gpu);
    precision = bf16 ? Precision::kBf16 : Precision::kFp16;
    return fmt::format("train.precision: auto: {} on {}{}", enum_name(precision), gpu,
                       bf16 ? "" : ", which has no bf16: fp16 with loss scaling");
  }
  const int64_t micro = std::max<int64_t>(config.train.micro_batch_size, 1);
  const ProbeShape shape = probe_shape(micro * config.data.seq_len, model_width(config));
  const CpuPrecisionProbe probe = probe_cpu_precision(shape.tokens, shape.in, shape.out);
  const bool bf16 = probe.fp32_ms > kAutoBf16MinSpeedup * probe.bf16_ms;
  precision = bf16 ? Precision::kBf16 : Precision::kFp32;
  return fmt::format(
      "train.precision: auto: {} on this CPU: a {}x{}x{} linear layer's forward and backward took "
      "{:.1f} ms in fp32 and {:.1f} ms in bf16{}",
      enum_name(precision), probe.tokens, probe.in, probe.out, probe.fp32_ms, probe.bf16_ms,
      cpu_bf16_kernels() == CpuBf16Kernels::kNative
          ? ""
          : " (emulated: this CPU has no fast bf16 matmuls)");
}

AutocastScope::AutocastScope(Precision precision, torch::Device device) {
  if (precision == Precision::kFp32) return;
  device_type_ = device.type();
  previous_enabled_ = at::autocast::is_autocast_enabled(*device_type_);
  previous_dtype_ = at::autocast::get_autocast_dtype(*device_type_);
  at::autocast::set_autocast_dtype(*device_type_,
                                   precision == Precision::kBf16 ? at::kBFloat16 : at::kHalf);
  at::autocast::set_autocast_enabled(*device_type_, true);
  at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
  if (!device_type_) return;
  // Leaving the outermost scope frees the low-precision copies of the weights autocast cached.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(*device_type_, previous_enabled_);
  at::autocast::set_autocast_dtype(*device_type_, previous_dtype_);
}

}  // namespace lmtune
