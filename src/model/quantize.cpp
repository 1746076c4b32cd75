#include "lmtune/model/quantize.h"

#include <array>
#include <cmath>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include <ATen/autocast_mode.h>

#include "lmtune/model/bf16_emulation.h"

// Every step below repeats bitsandbytes 0.50's arithmetic on the CPU (backends/default and the
// native CPU kernels), operation for operation, so codes, absmaxes and dequantized weights are
// bit-identical to its; tests/e2e/test_quantize_bnb.py checks this against the real library.
namespace lmtune {
namespace {

using torch::Tensor;

// NF4's levels: normal quantiles from the QLoRA paper, as bitsandbytes' get_4bit_type lists them.
constexpr std::array<float, 16> kNf4Code = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

constexpr float kInt8Max = 127.0f;
// int8 dequantization multiplies by this rounded 1/127 after the absmax (never divides by 127).
constexpr float kInt8Step = 7.874015718698502e-3f;
// NF4 clamps a block's absmax to this before taking its reciprocal, so zeros do not divide by 0.
constexpr double kTinyAbsmax = 1e-38;
// The 8-bit statistics quantizer looks codes up in a table over [-1, 1] of this many entries.
constexpr int64_t kStatsLutSize = 65536;

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// A constant table, copied to each device once: dequantization runs in every forward and
// backward, where a host-to-device copy per call would stall. Instances are never destroyed, as
// CUDA tensors must not outlive the CUDA runtime at exit. Callers must not write to a table.
class DeviceTable {
 public:
  explicit DeviceTable(Tensor cpu) : cpu_(std::move(cpu)) {}
  Tensor on(torch::Device device) {
    if (device.is_cpu()) return cpu_;
    std::lock_guard<std::mutex> lock(mutex_);
    auto [it, inserted] = copies_.try_emplace(device);
    if (inserted) it->second = cpu_.to(device);
    return it->second;
  }

 private:
  Tensor cpu_;
  std::mutex mutex_;
  std::unordered_map<torch::Device, Tensor> copies_;
};

// The NF4 levels on `device`: (16) fp32.
Tensor nf4_code_on(torch::Device device) {
  static auto* table = new DeviceTable(nf4_code_values());
  return table->on(device);
}

// ---- int8: LLM.int8's vector-wise quantization (bitsandbytes' int8_vectorwise_quant) ----

QuantizedWeight quantize_int8(const Tensor& w) {
  QuantizedWeight q;
  q.type = QuantType::kInt8;
  q.out = w.size(0);
  q.in = w.size(1);
  q.absmax = w.abs().amax(/*dim=*/1).to(torch::kFloat32);  // (out)
  // Python's `127.0 / t` is t.reciprocal() * 127: two roundings, not one division.
  Tensor scale = q.absmax.reciprocal().mul_(kInt8Max);  // (out)
  // An all-zero row: bitsandbytes' 0 * inf is NaN, which its int8 cast turns into 0; a zero
  // scale gives those codes without converting NaN.
  scale.masked_fill_(q.absmax == 0, 0);
  // round() is half-to-even, as torch.round.
  q.codes = w.to(torch::kFloat32).mul(scale.unsqueeze(1)).round_().to(torch::kInt8);  // (out, in)
  return q;
}

Tensor dequantize_int8(const QuantizedWeight& q) {
  // (code * absmax) * step, in that order, as int8_vectorwise_dequant.
  return q.codes.to(torch::kFloat32).mul_(q.absmax.unsqueeze(1)).mul_(kInt8Step);  // (out, in)
}

// ---- nf4: QLoRA's 4-bit NormalFloat (bitsandbytes' quantize_4bit / dequantize_4bit) ----

// The flattened weight scaled into [-1, 1] by the absmax of its block of 64, and those absmaxes:
// (n) and (n_blocks) fp32.
std::pair<Tensor, Tensor> scale_nf4_blocks(const Tensor& flat) {
  const int64_t n = flat.numel();
  const int64_t full = n / kNf4BlockSize * kNf4BlockSize;
  Tensor body = flat.slice(0, 0, full).view({full / kNf4BlockSize, kNf4BlockSize});  // (n/64, 64)
  Tensor absmax = body.abs().amax(/*dim=*/1);                                        // (n/64)
  // Full blocks multiply by the reciprocal of the clamped absmax but keep the unclamped one.
  Tensor inverse = absmax.clamp_min(kTinyAbsmax).reciprocal().unsqueeze(1);  // (n/64, 1)
  Tensor scaled = body.mul(inverse).clamp_(-1, 1).view({-1});                // (full)
  if (full == n) return {scaled, absmax};
  // The short last block divides instead, and keeps its clamped absmax.
  Tensor tail = flat.slice(0, full);                                        // (n - full)
  Tensor tail_absmax = tail.abs().amax().clamp_min(kTinyAbsmax).view({1});  // (1)
  return {torch::cat({scaled, tail.div(tail_absmax).clamp_(-1, 1)}),
          torch::cat({absmax, tail_absmax})};
}

// Nearest NF4 level of each scaled value: (n) int32 in [0, 15]. Bucketing on the fp32 midpoints
// sends a value exactly on a midpoint to the lower level, as bitsandbytes does.
Tensor nearest_nf4(const Tensor& scaled) {
  Tensor code = nf4_code_on(scaled.device());
  Tensor midpoints = (code.slice(0, 0, 15) + code.slice(0, 1)) / 2;  // (15)
  return torch::bucketize(scaled, midpoints, /*out_int32=*/true, /*right=*/false);
}

// Two levels per byte, the even element in the high nibble: (n) -> (ceil(n/2)) uint8. An odd
// count gets a trailing 0.0 before rounding, as bitsandbytes pads.
Tensor pack_nf4(Tensor scaled) {
  if (scaled.numel() % 2 == 1) scaled = torch::constant_pad_nd(scaled, {0, 1});
  Tensor pairs = nearest_nf4(scaled).view({-1, 2});                         // (ceil(n/2), 2)
  return (pairs.select(1, 0) * 16 + pairs.select(1, 1)).to(torch::kUInt8);  // (ceil(n/2))
}

// The two NF4 levels each byte value holds: (256, 2) fp32, so unpacking is one gather per byte.
Tensor nf4_byte_table(torch::Device device) {
  static auto* table = new DeviceTable([] {
    Tensor code = nf4_code_values();
    return torch::stack({code.repeat_interleave(16), code.repeat({16})}, /*dim=*/1);
  }());
  return table->on(device);
}

// code[q] * absmax[block], one fp32 product per value (the native kernel's arithmetic).
Tensor dequantize_nf4(const QuantizedWeight& q) {
  const int64_t n = q.out * q.in;
  Tensor levels = nf4_byte_table(q.codes.device())
                      .index_select(0, q.codes.to(torch::kInt32))
                      .view({-1});   // (2 * ceil(n/2))
  Tensor absmax = q.block_absmax();  // (n_blocks)
  const int64_t padded = absmax.numel() * kNf4BlockSize;
  levels = torch::constant_pad_nd(levels.slice(0, 0, n), {0, padded - n});  // (n_blocks * 64)
  return levels.view({-1, kNf4BlockSize})
      .mul_(absmax.unsqueeze(1))
      .view({-1})
      .slice(0, 0, n)
      .view({q.out, q.in});
}

// ---- nf4 double quantization (compress_statistics=True) ----

// bitsandbytes' signed 8-bit dynamic map (create_dynamic_map(signed=True)): for each exponent
// e = 10^-6 .. 10^0, the midpoints of a linear grid over [0.1, 1] (2^i + 1 points) scaled by
// +-e, then 0 and 1: (256) fp32, ascending, on the CPU.
Tensor build_dynamic_map() {
  std::vector<Tensor> parts;
  for (int64_t i = 0; i < 7; ++i) {
    Tensor grid = torch::linspace(0.1, 1.0, (int64_t{1} << i) + 1, torch::kFloat32);
    Tensor means = (grid.slice(0, 0, -1) + grid.slice(0, 1)) / 2.0;
    // The double Python's 10 ** (i - 6) gives, which the fp32 product rounds to float.
    const double exponent = std::pow(10.0, static_cast<double>(i - 6));
    parts.push_back(means * exponent);
    parts.push_back(means * -exponent);
  }
  parts.push_back(torch::tensor({0.0f, 1.0f}));
  return std::get<0>(torch::sort(torch::cat(parts)));
}

Tensor dynamic_map_on(torch::Device device) {
  static auto* table = new DeviceTable(build_dynamic_map());
  return table->on(device);
}

// The native quantizer's lookup table: the map index of the nearest code for each of 65536
// evenly spaced values over [-1, 1] (the first whose midpoint is not below it): (65536) int64.
Tensor dynamic_map_lut(const Tensor& map) {
  Tensor midpoints = (map.slice(0, 0, -1) + map.slice(0, 1)) * 0.5;  // (255)
  Tensor grid = torch::arange(kStatsLutSize, torch::kFloat32)
                    .mul_(2)
                    .div_(static_cast<double>(kStatsLutSize - 1))
                    .add_(-1);  // (65536)
  return torch::searchsorted(midpoints, grid, /*out_int32=*/false, /*right=*/false);
}

// Blockwise 8-bit quantization of `values` (n) with the dynamic map, blocks of 256, as the native
// CPU kernel computes it: absmax per block, value * (1 / absmax) clamped to [-1, 1], then the
// table entry at trunc(((v + 1) * 0.5) * 65535 + 0.5). An all-zero block gets code 0.
std::pair<Tensor, Tensor> quantize_dynamic(const Tensor& values) {
  const int64_t n = values.numel();
  const int64_t blocks = ceil_div(n, kNf4StatsBlockSize);
  Tensor padded = torch::constant_pad_nd(values, {0, blocks * kNf4StatsBlockSize - n})
                      .view({blocks, kNf4StatsBlockSize});  // (blocks, 256)
  Tensor absmax = padded.abs().amax(/*dim=*/1);             // (blocks)
  Tensor inverse = absmax.reciprocal().masked_fill_(absmax == 0, 0).unsqueeze(1);
  Tensor position =
      padded.mul(inverse).clamp_(-1, 1).add_(1).mul_(0.5).mul_(kStatsLutSize - 1).add_(0.5);
  Tensor lut = dynamic_map_lut(dynamic_map_on(torch::kCPU)).to(values.device());  // (65536)
  Tensor codes = lut.index({position.to(torch::kInt64)}).to(torch::kUInt8);       // (blocks, 256)
  codes.masked_fill_((absmax == 0).unsqueeze(1), 0);
  return {codes.view({-1}).slice(0, 0, n), absmax};
}

void double_quantize(QuantizedWeight& q) {
  q.absmax_offset = q.absmax.mean();  // ()
  auto [codes, absmax] = quantize_dynamic(q.absmax - q.absmax_offset);
  q.absmax_codes = codes;    // (n_blocks)
  q.absmax_absmax = absmax;  // (ceil(n_blocks/256))
  q.absmax = Tensor();
}

// map[code] * absmax[block] + offset, in fp32 (dequantize_blockwise, then the offset added).
Tensor undo_double_quantization(const QuantizedWeight& q) {
  const int64_t n = q.absmax_codes.numel();
  Tensor map = dynamic_map_on(q.absmax_codes.device());
  Tensor values = map.index({q.absmax_codes.to(torch::kInt64)});  // (n)
  Tensor scales = q.absmax_absmax.repeat_interleave(kNf4StatsBlockSize).slice(0, 0, n);
  return values.mul_(scales).add_(q.absmax_offset);  // (n)
}

QuantizedWeight quantize_nf4(const Tensor& w, bool double_quant) {
  QuantizedWeight q;
  q.type = QuantType::kNf4;
  q.out = w.size(0);
  q.in = w.size(1);
  auto [scaled, absmax] = scale_nf4_blocks(w.reshape({-1}).to(torch::kFloat32));
  q.codes = pack_nf4(scaled);  // (ceil(out*in/2))
  q.absmax = absmax;           // (n_blocks)
  if (double_quant) double_quantize(q);
  return q;
}

// ---- quantized_linear ----

// The dtype W is dequantized to: autocast's on x's device when it is on, so that autocast has
// nothing to cast, else x's own.
torch::ScalarType compute_dtype(const Tensor& x) {
  const auto device = x.device().type();
  if (at::autocast::is_autocast_enabled(device)) return at::autocast::get_autocast_dtype(device);
  return x.scalar_type();
}

std::vector<Tensor> weight_tensors(const QuantizedWeight& w) {
  return {w.codes, w.absmax, w.absmax_codes, w.absmax_absmax, w.absmax_offset};
}

QuantizedWeight weight_from(const std::vector<Tensor>& t, QuantType type, int64_t out, int64_t in) {
  QuantizedWeight w;
  w.type = type;
  w.out = out;
  w.in = in;
  w.codes = t.at(0);
  w.absmax = t.at(1);
  w.absmax_codes = t.at(2);
  w.absmax_absmax = t.at(3);
  w.absmax_offset = t.at(4);
  return w;
}

// grad_x = grad_y W (..., out) -> (..., in) in the dtype forward computed in. bf16 on a CPU
// without native bf16 runs as an fp32 matmul of bf16 values, as autocast_linear does in forward.
// Autocast is kept out: backward may run inside an autocast scope, and the dtypes are set here.
Tensor input_gradient(const Tensor& grad_y, const QuantizedWeight& w, torch::ScalarType compute) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  if (compute == torch::kBFloat16 && grad_y.is_cpu() &&
      cpu_bf16_kernels() == CpuBf16Kernels::kEmulated) {
    Tensor values = grad_y.to(torch::kBFloat16).to(torch::kFloat32);
    Tensor grad = torch::matmul(values, w.dequantize(torch::kBFloat16).to(torch::kFloat32));
    return grad.to(torch::kBFloat16);
  }
  return torch::matmul(grad_y.to(compute), w.dequantize(compute));
}

// The autograd node of quantized_linear: it saves the quantized weight, never a dequantized copy,
// and no activations (grad_x needs only W). An absent bias is nullopt, not an undefined tensor,
// which autograd would take for an input; input 1 (the bias) then does not exist.
struct QuantizedLinearFunction : torch::autograd::Function<QuantizedLinearFunction> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& x,
                        const std::optional<Tensor>& bias, const QuantizedWeight& w) {
    const torch::ScalarType compute = compute_dtype(x);
    ctx->save_for_backward(weight_tensors(w));
    ctx->saved_data["type"] = static_cast<int64_t>(w.type);
    ctx->saved_data["out"] = w.out;
    ctx->saved_data["in"] = w.in;
    ctx->saved_data["compute"] = static_cast<int64_t>(compute);
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["has_bias"] = bias.has_value();
    if (bias) ctx->saved_data["bias_dtype"] = static_cast<int64_t>(bias->scalar_type());
    return autocast_linear(x, w.dequantize(compute), bias.value_or(Tensor()));  // (..., out)
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto dtype = [&](const char* key) {
      return static_cast<torch::ScalarType>(ctx->saved_data[key].toInt());
    };
    const int64_t out = ctx->saved_data["out"].toInt();
    const Tensor& grad_y = grads.at(0);  // (..., out)
    Tensor grad_x, grad_bias;
    if (ctx->needs_input_grad(0)) {
      QuantizedWeight w = weight_from(ctx->get_saved_variables(),
                                      static_cast<QuantType>(ctx->saved_data["type"].toInt()), out,
                                      ctx->saved_data["in"].toInt());
      grad_x = input_gradient(grad_y, w, dtype("compute")).to(dtype("x_dtype"));  // (..., in)
    }
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(1)) {
      grad_bias = grad_y.to(torch::kFloat32).reshape({-1, out}).sum(0).to(dtype("bias_dtype"));
    }
    return {grad_x, grad_bias, Tensor()};
  }
};

}  // namespace

torch::Tensor nf4_code_values() {
  return torch::from_blob(const_cast<float*>(kNf4Code.data()), {16}, torch::kFloat32).clone();
}

torch::Tensor QuantizedWeight::block_absmax() const {
  TORCH_CHECK(type == QuantType::kNf4, "block_absmax: only an nf4 weight has blocks");
  return double_quantized() ? undo_double_quantization(*this) : absmax;
}

torch::Tensor QuantizedWeight::dequantize(torch::ScalarType dtype) const {
  TORCH_CHECK(type != QuantType::kNone, "dequantize: the weight is not quantized");
  Tensor w = type == QuantType::kInt8 ? dequantize_int8(*this) : dequantize_nf4(*this);
  return w.to(dtype);  // (out, in), rounded once from fp32
}

int64_t QuantizedWeight::bytes() const {
  int64_t total = 0;
  for (const Tensor& t : weight_tensors(*this)) {
    if (t.defined()) total += t.numel() * static_cast<int64_t>(t.element_size());
  }
  return total;
}

QuantizedWeight QuantizedWeight::to(torch::Device device) const {
  std::vector<Tensor> moved;
  for (const Tensor& t : weight_tensors(*this)) moved.push_back(t.defined() ? t.to(device) : t);
  return weight_from(moved, type, out, in);
}

QuantizedWeight quantize_weight(const torch::Tensor& weight, QuantType type, bool double_quant) {
  TORCH_CHECK(weight.dim() == 2 && weight.numel() > 0,
              "quantize_weight: expected a non-empty (out, in) weight, got shape ", weight.sizes());
  TORCH_CHECK(weight.is_floating_point(), "quantize_weight: expected a floating weight, got ",
              weight.scalar_type());
  TORCH_CHECK(type != QuantType::kNone, "quantize_weight: no quantization type given");
  TORCH_CHECK(!double_quant || type == QuantType::kNf4,
              "quantize_weight: double quantization applies to nf4 only");
  torch::NoGradGuard no_grad;
  Tensor w = weight.detach();
  if (w.scalar_type() == torch::kFloat64) w = w.to(torch::kFloat32);
  TORCH_CHECK(w.isfinite().all().item<bool>(),
              "quantize_weight: the weight holds inf or NaN, which no absmax can scale");
  return type == QuantType::kInt8 ? quantize_int8(w) : quantize_nf4(w, double_quant);
}

torch::Tensor quantized_linear(const torch::Tensor& x, const QuantizedWeight& w,
                               const torch::Tensor& bias) {
  TORCH_CHECK(w.type != QuantType::kNone, "quantized_linear: the weight is not quantized");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == w.in, "quantized_linear: x has ", x.size(-1),
              " features, the weight takes ", w.in);
  return QuantizedLinearFunction::apply(
      x, bias.defined() ? std::optional<Tensor>(bias) : std::nullopt, w);
}

}  // namespace lmtune
