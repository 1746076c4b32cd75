// An exclusive lock on a file, held by one process for the lock object's life: the run
// directory's one writer, and the token cache's one builder. It is an OS lock (flock), so the
// kernel releases it when the holder exits or is killed; a lock file left behind is never stale.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <functional>
#include <optional>

namespace lmtune {

class FileLock {
 public:
  // Locks `path` (created if missing) and writes this process's id into it. Returns nothing if
  // another process holds it, with that process's id in `holder` (0 when it has not written it
  // yet). Throws lmtune::Error when the file cannot be created or locked.
  static std::optional<FileLock> try_lock(const std::filesystem::path& path, pid_t& holder);

  // Locks `path`, waiting for the holder to release it; `on_wait(holder)` is called once first
  // when it has to wait.
  static FileLock lock(const std::filesystem::path& path,
                       const std::function<void(pid_t)>& on_wait);

  FileLock(FileLock&& other) noexcept;
  FileLock& operator=(FileLock&& other) noexcept;
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;
  ~FileLock();

 private:
  explicit FileLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

}  // namespace lmtune
