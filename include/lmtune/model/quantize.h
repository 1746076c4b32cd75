// Frozen weights held quantized (LLM.int8's row-wise int8, QLoRA's NF4) and dequantized on the fly,
// bit for bit as bitsandbytes 0.50 computes them on the CPU; never gives the weight a gradient.
#pragma once

#include <cstdint>

#include <torch/torch.h>

namespace lmtune {

enum class QuantType { kNone, kInt8, kNf4 };

// Values that share one fp32 absmax in NF4 (bitsandbytes' blocksize=64).
inline constexpr int64_t kNf4BlockSize = 64;
// NF4 absmaxes that share one second-level absmax under double quantization (bitsandbytes'
// compress_statistics=True quantizes the statistics with blocksize=256).
inline constexpr int64_t kNf4StatsBlockSize = 256;

// A frozen (out, in) weight held quantized. The tensors all live on one device.
struct QuantizedWeight {
  QuantType type = QuantType::kNone;
  int64_t out = 0, in = 0;
  // int8: (out, in) int8, round(w * 127 / absmax[row]).
  // nf4: (ceil(out*in/2)) uint8, two 4-bit code indices per byte of the flattened row-major
  // weight, the even element in the high nibble (bitsandbytes' packing); an odd count is padded
  // with the code of 0.
  torch::Tensor codes;
  // int8: (out) fp32, max |w| of each row. nf4: (n_blocks) fp32, max |w| of each block of 64
  // (n_blocks = ceil(out*in/64)); undefined when double-quantized.
  torch::Tensor absmax;
  // nf4 double quantization (QLoRA): absmax - offset held as 8-bit dynamic-map codes in blocks of
  // 256, each block scaled by its own fp32 absmax.
  torch::Tensor absmax_codes;   // (n_blocks) uint8
  torch::Tensor absmax_absmax;  // (ceil(n_blocks/256)) fp32
  torch::Tensor absmax_offset;  // () fp32, the mean of the absmaxes

  bool double_quantized() const { return absmax_codes.defined(); }
  // nf4: the absmax of every block, undoing the double quantization: (n_blocks) fp32.
  torch::Tensor block_absmax() const;
  // The weight (out, in) in `dtype`, computed in fp32 and rounded once, on the codes' device.
  torch::Tensor dequantize(torch::ScalarType dtype = torch::kFloat32) const;
  // Bytes held by the tensors above.
  int64_t bytes() const;
  QuantizedWeight to(torch::Device device) const;
};

// Quantizes `weight` (out, in), any floating dtype (fp64 is rounded to fp32 first, as
// bitsandbytes takes 16- and 32-bit floats only). `double_quant` applies to nf4 only. The weight
// must be finite.
QuantizedWeight quantize_weight(const torch::Tensor& weight, QuantType type,
                                bool double_quant = false);

// The 16 NF4 code values, ascending, as bitsandbytes defines them: (16) fp32 on the CPU.
torch::Tensor nf4_code_values();

// y = x W^T + b with W dequantized on the fly: x (..., in) -> (..., out). Autograd keeps only the
// quantized weight and dequantizes again for grad_x; W gets no gradient, and bias (out) or
// undefined gets one only if it requires it. Under autocast on x's device W is dequantized
// straight to the autocast dtype; otherwise to x's dtype.
torch::Tensor quantized_linear(const torch::Tensor& x, const QuantizedWeight& w,
                               const torch::Tensor& bias = {});

}  // namespace lmtune
