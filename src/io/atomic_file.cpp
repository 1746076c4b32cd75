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

}  // namespace

void sync_directory(const fs::path& dir) {
  const fs::path path = dir.empty() ? fs::path(".") : dir;
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    throw Error(path.string() + ": " + with_errno("cannot open the directory to sync it"));
  // EINVAL: a file system that cannot sync directories (some FUSE ones); nothing more to do there.
  if (::fsync(fd) != 0 && errno != EINVAL) {
    const std::string message = with_errno("fsync of the directory failed");
    ::close(fd);
    throw Error(path.string() + ": " + message);
  }
  ::close(fd);
}

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
  sync_directory(path.parent_path());
}

}  // namespace lmtune
