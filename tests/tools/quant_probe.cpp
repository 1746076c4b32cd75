// Test tool: quantizes weights with lmtune's quantize_weight for the e2e tests, which compare every
// tensor with bitsandbytes.
//   quant_probe TYPE IN.safetensors OUT.safetensors   TYPE: int8, nf4 or nf4-double
// For each (out, in) tensor NAME of IN, OUT holds NAME.codes, NAME.absmax (or, double-quantized,
// NAME.absmax_codes, NAME.absmax_absmax, NAME.absmax_offset and NAME.block_absmax),
// NAME.dequantized in NAME's dtype and NAME.dequantized_fp32. Codes are stored as fp32 values
// (the safetensors writer takes float dtypes; every code is a small integer, exact in fp32).
#include <iostream>
#include <string>

#include "lmtune/core/errors.h"
#include "lmtune/core/runtime.h"
#include "lmtune/io/safetensors.h"
#include "lmtune/model/quantize.h"

namespace {

using lmtune::NamedTensors;
using lmtune::QuantizedWeight;

void add_as_float(NamedTensors& out, const std::string& name, const torch::Tensor& t) {
  if (t.defined()) out.emplace_back(name, t.to(torch::kFloat32).reshape({-1}));
}

NamedTensors probe(const std::string& name, const torch::Tensor& weight, lmtune::QuantType type,
                   bool double_quant) {
  QuantizedWeight q = lmtune::quantize_weight(weight, type, double_quant);
  NamedTensors out;
  add_as_float(out, name + ".codes", q.codes);
  add_as_float(out, name + ".absmax", q.absmax);
  add_as_float(out, name + ".absmax_codes", q.absmax_codes);
  add_as_float(out, name + ".absmax_absmax", q.absmax_absmax);
  add_as_float(out, name + ".absmax_offset", q.absmax_offset);
  if (double_quant) add_as_float(out, name + ".block_absmax", q.block_absmax());
  out.emplace_back(name + ".dequantized", q.dequantize(weight.scalar_type()));
  out.emplace_back(name + ".dequantized_fp32", q.dequantize(torch::kFloat32));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace lmtune;
  set_threads(/*requested=*/2);
  const std::string type = argc == 4 ? argv[1] : "";
  if (type != "int8" && type != "nf4" && type != "nf4-double") {
    std::cerr << "usage: quant_probe int8|nf4|nf4-double IN.safetensors OUT.safetensors"
              << std::endl;
    return 2;
  }
  try {
    SafetensorsFile in(argv[2]);
    NamedTensors out;
    for (const auto& entry : in.entries()) {
      NamedTensors one =
          probe(entry.name, in.read(entry), type == "int8" ? QuantType::kInt8 : QuantType::kNf4,
                /*double_quant=*/type == "nf4-double");
      out.insert(out.end(), one.begin(), one.end());
    }
    write_safetensors(argv[3], out);
    return 0;
  } catch (const Error& e) {
    std::cerr << e.what() << std::endl;
    return e.exit_code();
  }
}
