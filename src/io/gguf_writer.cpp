#include "lmtune/io/gguf_writer.h"

#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "lmtune/core/errors.h"
#include "lmtune/io/atomic_file.h"

namespace lmtune {
namespace fs = std::filesystem;

namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as a little-endian uint32
constexpr uint32_t kGgufVersion = 3;
constexpr int64_t kQ8BlockSize = 32;
constexpr int64_t kQ8BlockBytes = 2 + kQ8BlockSize;  // an F16 scale, then 32 int8

// GGUF's metadata value types (gguf_type in ggml's gguf.h).
enum GgufValueType : uint32_t {
  kGgufUint32 = 4,
  kGgufInt32 = 5,
  kGgufFloat32 = 6,
  kGgufBool = 7,
  kGgufString = 8,
  kGgufArray = 9,
};

// GGUF is little-endian, as every machine lmtune runs on: values are appended as they lie in
// memory.
template <class T>
void append_raw(std::string& out, T value) {
  static_assert(std::is_trivially_copyable_v<T>);
  out.append(reinterpret_cast<const char*>(&value), sizeof(value));
}

void append_gguf_string(std::string& out, const std::string& text) {
  append_raw<uint64_t>(out, text.size());
  out += text;
}

int64_t padded_to(int64_t size, int64_t alignment) {
  return (size + alignment - 1) / alignment * alignment;
}

void gguf_write_zeros(int fd, int64_t count, const fs::path& path) {
  static const char kZeros[256] = {};
  while (count > 0) {
    const int64_t n = std::min<int64_t>(count, sizeof(kZeros));
    write_all(fd, kZeros, static_cast<std::size_t>(n), path);
    count -= n;
  }
}

// ggml's quantize_row_q8_0_ref on blocks [begin, end) of `x`.
void quantize_q8_0_blocks(const float* x, uint8_t* out, int64_t begin, int64_t end) {
  for (int64_t block = begin; block < end; ++block) {
    const float* v = x + block * kQ8BlockSize;
    float amax = 0.0f;
    for (int64_t j = 0; j < kQ8BlockSize; ++j) amax = std::max(amax, std::fabs(v[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    uint8_t* q = out + block * kQ8BlockBytes;
    const uint16_t scale = c10::Half(d).x;  // fp32 -> fp16 rounds to nearest even, as ggml's
    std::memcpy(q, &scale, sizeof(scale));
    for (int64_t j = 0; j < kQ8BlockSize; ++j)
      q[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::roundf(v[j] * id)));
  }
}

torch::Tensor encode_q8_0(const torch::Tensor& values) {
  torch::Tensor x = values.to(torch::kFloat32).contiguous();
  const int64_t blocks = x.numel() / kQ8BlockSize;
  torch::Tensor out = torch::empty({blocks * kQ8BlockBytes}, torch::kUInt8);
  const float* in = x.data_ptr<float>();
  uint8_t* bytes = out.data_ptr<uint8_t>();
  at::parallel_for(0, blocks, /*grain_size=*/2048, [&](int64_t begin, int64_t end) {
    quantize_q8_0_blocks(in, bytes, begin, end);
  });
  return out;
}

// The bytes of a contiguous tensor as a flat uint8 tensor.
torch::Tensor as_bytes(const torch::Tensor& t) {
  torch::Tensor flat = t.contiguous().reshape({-1});
  return flat.view(torch::kUInt8);
}

}  // namespace

const char* ggml_type_name(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
      return "F32";
    case GgmlType::kF16:
      return "F16";
    case GgmlType::kQ8_0:
      return "Q8_0";
    case GgmlType::kBF16:
      return "BF16";
  }
  return "?";
}

int64_t ggml_block_size(GgmlType type) {
  return type == GgmlType::kQ8_0 ? kQ8BlockSize : 1;
}

int64_t ggml_nbytes(GgmlType type, int64_t elements) {
  switch (type) {
    case GgmlType::kF32:
      return elements * 4;
    case GgmlType::kF16:
    case GgmlType::kBF16:
      return elements * 2;
    case GgmlType::kQ8_0:
      return elements / kQ8BlockSize * kQ8BlockBytes;
  }
  return 0;
}

torch::Tensor encode_ggml(const torch::Tensor& values, GgmlType type) {
  TORCH_CHECK(values.is_floating_point(), "encode_ggml: expected floating-point values");
  const int64_t row = values.dim() == 0 ? 1 : values.size(-1);
  TORCH_CHECK(row % ggml_block_size(type) == 0, "encode_ggml: rows of ", row, " values are not ",
              "whole blocks of ", ggml_block_size(type), " for ", ggml_type_name(type));
  torch::Tensor cpu = values.detach().to(torch::kCPU);
  switch (type) {
    case GgmlType::kF32:
      return as_bytes(cpu.to(torch::kFloat32));
    case GgmlType::kF16:
      return as_bytes(cpu.to(torch::kFloat32).to(torch::kFloat16));
    case GgmlType::kBF16:
      return as_bytes(cpu.to(torch::kFloat32).to(torch::kBFloat16));
    case GgmlType::kQ8_0:
      return encode_q8_0(cpu);
  }
  TORCH_CHECK(false, "encode_ggml: unknown type");
}

GgufWriter::GgufWriter(uint32_t alignment) : alignment_(alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0)
    throw std::invalid_argument("GGUF alignment must be a power of two, got " +
                                std::to_string(alignment));
  if (alignment != kGgufDefaultAlignment) add_uint32("general.alignment", alignment);
}

void GgufWriter::add_key(const std::string& key, uint32_t value_type) {
  if (!keys_.insert(key).second)
    throw std::invalid_argument("GGUF metadata key '" + key + "' added twice");
  append_gguf_string(metadata_, key);
  append_raw<uint32_t>(metadata_, value_type);
  ++metadata_count_;
}

void GgufWriter::add_string(const std::string& key, const std::string& value) {
  add_key(key, kGgufString);
  append_gguf_string(metadata_, value);
}

void GgufWriter::add_uint32(const std::string& key, uint32_t value) {
  add_key(key, kGgufUint32);
  append_raw(metadata_, value);
}

void GgufWriter::add_float32(const std::string& key, float value) {
  add_key(key, kGgufFloat32);
  append_raw(metadata_, value);
}

void GgufWriter::add_bool(const std::string& key, bool value) {
  add_key(key, kGgufBool);
  append_raw<uint8_t>(metadata_, value ? 1 : 0);
}

void GgufWriter::add_string_array(const std::string& key, const std::vector<std::string>& values) {
  if (values.empty()) throw std::invalid_argument("GGUF array '" + key + "' is empty");
  add_key(key, kGgufArray);
  append_raw<uint32_t>(metadata_, kGgufString);
  append_raw<uint64_t>(metadata_, values.size());
  for (const auto& value : values) append_gguf_string(metadata_, value);
}

void GgufWriter::add_int32_array(const std::string& key, const std::vector<int32_t>& values) {
  if (values.empty()) throw std::invalid_argument("GGUF array '" + key + "' is empty");
  add_key(key, kGgufArray);
  append_raw<uint32_t>(metadata_, kGgufInt32);
  append_raw<uint64_t>(metadata_, values.size());
  for (int32_t value : values) append_raw(metadata_, value);
}

void GgufWriter::add_float32_array(const std::string& key, const std::vector<float>& values) {
  if (values.empty()) throw std::invalid_argument("GGUF array '" + key + "' is empty");
  add_key(key, kGgufArray);
  append_raw<uint32_t>(metadata_, kGgufFloat32);
  append_raw<uint64_t>(metadata_, values.size());
  for (float value : values) append_raw(metadata_, value);
}

void GgufWriter::add_tensor(const std::string& name, const std::vector<int64_t>& shape,
                            GgmlType type, TensorData data) {
  int64_t elements = 1;
  for (int64_t d : shape) elements *= d;
  const int64_t row = shape.empty() ? 1 : shape.back();
  if (row % ggml_block_size(type) != 0)
    throw std::invalid_argument("GGUF tensor '" + name + "': rows of " + std::to_string(row) +
                                " values are not whole " + ggml_type_name(type) + " blocks");
  if (!tensor_names_.insert(name).second)
    throw std::invalid_argument("GGUF tensor '" + name + "' added twice");
  tensors_.push_back({name, shape, type, ggml_nbytes(type, elements), std::move(data)});
}

// Magic, version, counts, the metadata, every tensor's info and the padding before the data.
std::string GgufWriter::header() const {
  std::string out;
  append_raw(out, kGgufMagic);
  append_raw(out, kGgufVersion);
  append_raw<uint64_t>(out, tensors_.size());
  append_raw<uint64_t>(out, metadata_count_);
  out += metadata_;
  int64_t offset = 0;  // from the start of the data section
  for (const auto& tensor : tensors_) {
    append_gguf_string(out, tensor.name);
    append_raw<uint32_t>(out, tensor.shape.size());
    for (auto d = tensor.shape.rbegin(); d != tensor.shape.rend(); ++d)
      append_raw<uint64_t>(out, *d);  // ggml's ne[0] is the innermost dim
    append_raw<uint32_t>(out, static_cast<uint32_t>(tensor.type));
    append_raw<uint64_t>(out, offset);
    offset += padded_to(tensor.nbytes, alignment_);
  }
  out.append(padded_to(out.size(), alignment_) - out.size(), '\0');
  return out;
}

int64_t GgufWriter::write(const fs::path& path) const {
  int64_t size = 0;
  replace_file_atomically(path, [&](int fd, const fs::path& tmp) {
    const std::string head = header();
    write_all(fd, head.data(), head.size(), tmp);
    size += static_cast<int64_t>(head.size());
    for (const auto& tensor : tensors_) {
      torch::Tensor bytes = tensor.data();
      TORCH_CHECK(bytes.scalar_type() == torch::kUInt8 && bytes.is_contiguous() &&
                      bytes.numel() == tensor.nbytes,
                  "GGUF tensor '", tensor.name, "': expected ", tensor.nbytes, " bytes of ",
                  ggml_type_name(tensor.type), ", got ", bytes.numel());
      write_all(fd, bytes.data_ptr(), static_cast<std::size_t>(tensor.nbytes), tmp);
      const int64_t padded = padded_to(tensor.nbytes, alignment_);
      gguf_write_zeros(fd, padded - tensor.nbytes, tmp);
      size += padded;
    }
  });
  return size;
}

}  // namespace lmtune
