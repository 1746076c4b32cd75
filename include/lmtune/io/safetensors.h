// Reads and writes the safetensors format: bounds-checked memory-mapped reads, atomic writes.
// Never touches tensor data before the whole header has been validated.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <torch/types.h>

namespace lmtune {

class MappedFile;

struct SafetensorsEntry {
  std::string name;
  torch::Dtype dtype;  // F32, F16 or BF16
  std::vector<int64_t> shape;
  std::size_t begin = 0;  // byte range in the data section, [begin, end)
  std::size_t end = 0;
};

// A validated, memory-mapped safetensors file. Errors are InputError naming the file and tensor.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsEntry* find(const std::string& name) const;
  // A CPU tensor holding a copy of the named tensor's data, in its stored dtype.
  torch::Tensor read(const SafetensorsEntry& entry) const;
  // The tensor's stored bytes, a view of the mapping (valid while this file is open).
  std::string_view bytes(const SafetensorsEntry& entry) const {
    return {reinterpret_cast<const char*>(data_ + entry.begin), entry.end - entry.begin};
  }

 private:
  std::filesystem::path path_;
  std::shared_ptr<MappedFile> mapping_;
  const uint8_t* data_ = nullptr;  // start of the data section
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// Writes tensors (any device; F32, F16 or BF16) to `path` through a temporary file that is fsynced
// and renamed into place, so `path` is either the old file or the complete new one. A failed
// write (a full disk) throws Error naming the file and leaves no temporary behind.
void write_safetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Writes `text` to `path` atomically, like write_safetensors.
void write_file_atomically(const std::filesystem::path& path, const std::string& text);

}  // namespace lmtune
