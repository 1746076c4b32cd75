// A read-only memory mapping of a whole file, for the safetensors reader and the token cache.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>

namespace lmtune {

// Maps `path` read-only for the object's lifetime. Failing to open or map it is an InputError
// naming the file.
class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* bytes() const { return bytes_; }  // nullptr for an empty file
  std::size_t size() const { return size_; }

 private:
  const uint8_t* bytes_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace lmtune
