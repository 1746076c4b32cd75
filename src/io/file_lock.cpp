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
pid_t written_pid(int fd) {
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

// The holder's pid (0 if unknown), giving it a moment to write it: it does so right after locking.
pid_t holder_of(int fd) {
  pid_t holder = written_pid(fd);
  for (int i = 0; i < 20 && holder == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    holder = written_pid(fd);
  }
  return holder;
}

}  // namespace

std::optional<FileLock> FileLock::try_lock(const fs::path& path, pid_t& holder) {
  FileLock file(open_lock_file(path));  // closed again unless returned
  if (!lock_file(file.fd_, LOCK_EX | LOCK_NB, path)) {
    holder = holder_of(file.fd_);
    return std::nullopt;
  }
  write_own_pid(file.fd_);
  holder = 0;
  return file;
}

FileLock FileLock::lock(const fs::path& path, const std::function<void(pid_t)>& on_wait) {
  FileLock file(open_lock_file(path));
  if (!lock_file(file.fd_, LOCK_EX | LOCK_NB, path)) {
    on_wait(holder_of(file.fd_));
    lock_file(file.fd_, LOCK_EX, path);
  }
  write_own_pid(file.fd_);
  return file;
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
