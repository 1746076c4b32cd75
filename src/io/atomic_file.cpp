#include "lmtune/io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "lmtune/core/errors.h"

namespace lmtune {
namespace fs = std::filesystem;

namespace {

std::string with_errno(const std::string& what) {
  return what + ": " + std::strerror(errno);
}

void fsync_directory(const fs::path& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

void write_all(int fd, const void* data, std::size_t size, const fs::path& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      throw Error(path.string() + ": " + with_errno("write failed") + " (is the disk full?)");
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

void replace_file_atomically(const fs::path& path,
                             const std::function<void(int, const fs::path&)>& write) {
  fs::path tmp = path;
  tmp += ".tmp-" + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(tmp.string() + ": " + with_errno("cannot create"));
  try {
    write(fd, tmp);
    if (::fsync(fd) != 0) throw Error(tmp.string() + ": " + with_errno("fsync failed"));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string message = with_errno("cannot rename the temporary file into place");
    ::unlink(tmp.c_str());
    throw Error(path.string() + ": " + message);
  }
  fsync_directory(path.parent_path().empty() ? fs::path(".") : path.parent_path());
}

}  // namespace lmtune
