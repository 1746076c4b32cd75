#include "lmtune/io/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include <nlohmann/json.hpp>

#include "lmtune/core/errors.h"
#include "lmtune/io/atomic_file.h"
#include "lmtune/io/mapped_file.h"

namespace lmtune {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// A header larger than this is hostile or broken: real ones are a few hundred KB.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DtypeSpelling {
  const char* name;
  torch::Dtype dtype;
  std::size_t bytes;
};
constexpr DtypeSpelling kDtypes[] = {
    {"F32", torch::kFloat32, 4}, {"F16", torch::kFloat16, 2}, {"BF16", torch::kBFloat16, 2}};

const DtypeSpelling* dtype_by_name(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return &d;
  return nullptr;
}

const DtypeSpelling& dtype_by_type(torch::Dtype dtype) {
  for (const auto& d : kDtypes)
    if (d.dtype == dtype) return d;
  throw Error(std::string("safetensors: cannot write tensors of dtype ") +
              std::string(c10::toString(dtype)) + "; use float32, float16 or bfloat16");
}

}  // namespace

SafetensorsFile::SafetensorsFile(const fs::path& path)
    : path_(path), mapping_(std::make_shared<MappedFile>(path)) {
  auto fail = [&](const std::string& message) -> InputError {
    return InputError(path.string(), "not a valid safetensors file: " + message);
  };
  if (mapping_->size() < 8) throw fail("shorter than its 8-byte header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i)
    header_len = (header_len << 8) | mapping_->bytes()[i];  // little-endian
  if (header_len > kMaxHeaderBytes || header_len > mapping_->size() - 8)
    throw fail("header length " + std::to_string(header_len) + " exceeds the file size " +
               std::to_string(mapping_->size()) + " (truncated or corrupt)");
  const char* header_begin = reinterpret_cast<const char*>(mapping_->bytes() + 8);
  json header =
      json::parse(header_begin, header_begin + header_len, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) throw fail("its header is not valid JSON");
  if (!header.is_object()) throw fail("its header is not a JSON object");

  data_ = mapping_->bytes() + 8 + header_len;
  const std::size_t data_size = mapping_->size() - 8 - header_len;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") {
      if (!info.is_object()) throw fail("__metadata__ is not an object");
      for (const auto& [key, value] : info.items()) {
        if (!value.is_string()) throw fail("__metadata__ value '" + key + "' is not a string");
        metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    const std::string& tensor = name;  // clang before 16 cannot capture a structured binding
    auto bad = [&](const std::string& message) {
      return fail("tensor '" + tensor + "': " + message);
    };
    if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") ||
        !info.contains("data_offsets"))
      throw bad("needs dtype, shape and data_offsets");
    if (!info["dtype"].is_string()) throw bad("dtype is not a string");
    const DtypeSpelling* dtype = dtype_by_name(info["dtype"].get<std::string>());
    if (!dtype)
      throw InputError(path.string(), "tensor '" + name + "' has dtype " +
                                          info["dtype"].get<std::string>() +
                                          "; lmtune reads F32, F16 and BF16");
    SafetensorsEntry entry{name, dtype->dtype, {}, 0, 0};
    uint64_t elements = 1;
    if (!info["shape"].is_array()) throw bad("shape is not a list");
    for (const auto& dim : info["shape"]) {
      if (!dim.is_number_unsigned())
        throw bad("shape has a dimension that is not a non-negative integer");
      uint64_t d = dim.get<uint64_t>();
      // A dimension above INT64_MAX would turn negative in the int64 shape, and next to a zero
      // dimension it passes the product check (tests/fuzz/safetensors/review-*).
      if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          (d != 0 && elements > std::numeric_limits<uint64_t>::max() / d / dtype->bytes))
        throw bad("shape is too large");
      elements *= d;
      entry.shape.push_back(static_cast<int64_t>(d));
    }
    const auto& offsets = info["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned())
      throw bad("data_offsets is not a pair of non-negative integers");
    uint64_t begin = offsets[0].get<uint64_t>(), end = offsets[1].get<uint64_t>();
    if (begin > end || end > data_size)
      throw bad("data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                ") lie outside the data section of " + std::to_string(data_size) +
                " bytes (truncated or corrupt)");
    if (end - begin != elements * dtype->bytes)
      throw bad("shape needs " + std::to_string(elements * dtype->bytes) +
                " bytes but data_offsets span " + std::to_string(end - begin));
    entry.begin = begin;
    entry.end = end;
    entries_.push_back(std::move(entry));
  }
  std::vector<const SafetensorsEntry*> by_offset;
  for (const auto& e : entries_) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const auto* a, const auto* b) { return a->begin < b->begin; });
  for (std::size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i]->begin < by_offset[i - 1]->end)
      throw fail("tensors '" + by_offset[i - 1]->name + "' and '" + by_offset[i]->name +
                 "' overlap");
  }
}

const SafetensorsEntry* SafetensorsFile::find(const std::string& name) const {
  for (const auto& entry : entries_)
    if (entry.name == name) return &entry;
  return nullptr;
}

torch::Tensor SafetensorsFile::read(const SafetensorsEntry& entry) const {
  torch::Tensor out = torch::empty(entry.shape, torch::TensorOptions().dtype(entry.dtype));
  // The data section gives no alignment guarantee, so copy bytes rather than wrap the mapping.
  std::memcpy(out.data_ptr(), data_ + entry.begin, entry.end - entry.begin);
  return out;
}

void write_safetensors(const fs::path& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<torch::Tensor> contiguous;
  std::size_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    torch::Tensor t = tensor.detach().to(torch::kCPU).contiguous();
    std::size_t bytes = t.numel() * t.element_size();
    header[name] = {{"dtype", dtype_by_type(t.scalar_type()).name},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    contiguous.push_back(std::move(t));
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data section 8-byte aligned
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(uint64_t(text.size()) >> (8 * i));

  replace_file_atomically(path, [&](int fd, const fs::path& tmp) {
    write_all(fd, length, sizeof(length), tmp);
    write_all(fd, text.data(), text.size(), tmp);
    for (const auto& t : contiguous) write_all(fd, t.data_ptr(), t.numel() * t.element_size(), tmp);
  });
}

void write_file_atomically(const fs::path& path, const std::string& text) {
  replace_file_atomically(
      path, [&](int fd, const fs::path& tmp) { write_all(fd, text.data(), text.size(), tmp); });
}

}  // namespace lmtune
