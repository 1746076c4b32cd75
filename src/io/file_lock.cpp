#include "lmtune/io/file_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "lmtune/core/errors.h"

namespace lmtune {

namespace fs = std::filesystem;

namespace {

int open_lock_file(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0)
    throw Error("cannot create the lock file " + path.string() + ": " + std::strerror(errno));
  return fd;
}

// flock, retried when a signal interrupts it. True when the lock is held.
bool lock_file(int fd, int operation, const fs::path& path) {
  while (::flock(fd, operation) != 0) {
    if (errno == EINTR) continue;
    if (errno == EWOULDBLOCK) return false;
    throw Error("cannot lock " + path.string() + ": " + std::strerror(errno));
  }
  return true;
}

// The pid the holder wrote into the lock file, or 0 before it has.
pid_t holder_pid(int fd) {
  char text[32] = {};
  ssize_t size = ::pread(fd, text, sizeof(text) - 1, 0);
  if (size <= 0) return 0;
  long pid = std::strtol(text, nullptr, 10);
  return pid > 0 ? static_cast<pid_t>(pid) : 0;
}

void write_own_pid(int fd) {
  const std::string text = std::to_string(::getpid()) + "\n";
  // The pid only names the holder in other processes' messages: a failure to write it is harmless.
  if (::ftruncate(fd, 0) != 0) return;
  [[maybe_unused]] ssize_t written = ::pwrite(fd, text.data(), text.size(), 0);
}

}  // namespace

std::optional<FileLock> FileLock::try_lock(const fs::path& path, pid_t& holder) {
  int fd = open_lock_file(path);
  try {
    if (!lock_file(fd, LOCK_EX | LOCK_NB, path)) {
      // The holder writes its pid right after locking; give it a moment to.
      holder = holder_pid(fd);
      for (int i = 0; i < 20 && holder == 0; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        holder = holder_pid(fd);
      }
      ::close(fd);
      return std::nullopt;
    }
  } catch (...) {
    ::close(fd);
    throw;
  }
  write_own_pid(fd);
  holder = 0;
  return FileLock(fd);
}

FileLock FileLock::lock(const fs::path& path, const std::function<void(pid_t)>& on_wait) {
  pid_t holder = 0;
  if (auto held = try_lock(path, holder)) return std::move(*held);
  on_wait(holder);
  int fd = open_lock_file(path);
  try {
    lock_file(fd, LOCK_EX, path);
  } catch (...) {
    ::close(fd);
    throw;
  }
  write_own_pid(fd);
  return FileLock(fd);
}

FileLock::FileLock(FileLock&& other) noexcept : fd_(other.fd_) {
  other.fd_ = -1;
}

FileLock& FileLock::operator=(FileLock&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

FileLock::~FileLock() {
  // Closing the only descriptor of the open file releases the lock.
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace lmtune
