// Writes GGUF v3 files, the format llama.cpp and ggml load: typed metadata, tensor infos (dims
// innermost first), aligned tensor data, and ggml's F32, F16, BF16 and Q8_0 encodings. Knows the
// format only, never a model: which keys and tensors a model needs is model/gguf_export.h's.
// The file is written to PATH.tmp and renamed into place, so PATH is never a partial file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include <torch/types.h>

namespace lmtune {

// The alignment of tensor data a reader assumes when general.alignment is absent.
inline constexpr uint32_t kGgufDefaultAlignment = 32;

// The ggml tensor types lmtune writes; the values are ggml's, as stored in the file.
enum class GgmlType : uint32_t { kF32 = 0, kF16 = 1, kQ8_0 = 8, kBF16 = 30 };

// "F32", "F16", "Q8_0", "BF16": ggml's names, for messages.
const char* ggml_type_name(GgmlType type);

// Elements per block: 32 for Q8_0 (a row must hold whole blocks), else 1.
int64_t ggml_block_size(GgmlType type);

// Bytes that `elements` values of `type` take (a whole number of blocks): 34 per Q8_0 block.
int64_t ggml_nbytes(GgmlType type, int64_t elements);

// `values` (floating point, any shape, rows along the last dim) as ggml stores `type`, as a flat
// uint8 tensor in little-endian order: F32; F16 and BF16 rounded to nearest even; Q8_0 as ggml's
// reference quantizer does it (per block of 32: the scale d = max|x| / 127 stored as F16, then
// 32 int8 round(x / d), halves away from zero). The last dim must hold whole blocks.
torch::Tensor encode_ggml(const torch::Tensor& values, GgmlType type);

// A GGUF file being assembled: metadata and tensor infos are kept in memory, tensor data is
// produced one tensor at a time while the file is written.
class GgufWriter {
 public:
  // Produces a tensor's bytes (encode_ggml's result) when write() reaches it.
  using TensorData = std::function<torch::Tensor()>;

  // An alignment other than the default is written as general.alignment (a power of two).
  explicit GgufWriter(uint32_t alignment = kGgufDefaultAlignment);

  // Metadata, written in the order added; a key added twice is std::invalid_argument. Arrays
  // must not be empty (GGUF readers reject empty arrays).
  void add_string(const std::string& key, const std::string& value);
  void add_uint32(const std::string& key, uint32_t value);
  void add_float32(const std::string& key, float value);
  void add_bool(const std::string& key, bool value);
  void add_string_array(const std::string& key, const std::vector<std::string>& values);
  void add_int32_array(const std::string& key, const std::vector<int32_t>& values);
  void add_float32_array(const std::string& key, const std::vector<float>& values);

  // A tensor of `shape` (outermost first, as torch holds it; the file lists it innermost first)
  // stored as `type`. `data` must produce ggml_nbytes(type, numel) bytes.
  void add_tensor(const std::string& name, const std::vector<int64_t>& shape, GgmlType type,
                  TensorData data);

  int64_t tensor_count() const { return static_cast<int64_t>(tensors_.size()); }

  // Writes the file to `path`.tmp, fsyncs it and renames it to `path`; returns its size in bytes.
  // A failure (a full disk, a producer that throws) removes the temporary file and rethrows; I/O
  // failures are Error naming the file.
  int64_t write(const std::filesystem::path& path) const;

 private:
  struct TensorInfo {
    std::string name;
    std::vector<int64_t> shape;
    GgmlType type;
    int64_t nbytes;
    TensorData data;
  };

  void add_key(const std::string& key, uint32_t value_type);
  std::string header() const;

  uint32_t alignment_;
  std::string metadata_;  // the encoded key-value pairs
  int64_t metadata_count_ = 0;
  std::set<std::string> keys_;
  std::vector<TensorInfo> tensors_;
  std::set<std::string> tensor_names_;
};

}  // namespace lmtune
