// LibTorch's CPU allocator replaced by one that keeps large blocks for reuse, so a training step
// does not hand its activations back to the kernel and page-fault them in again on the next step.
// It holds at most a tenth more than the process's own peak of bytes in use (docs/memory.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>

namespace lmtune {

struct HostCacheStats {
  int64_t hits = 0;          // large requests served by an idle cached block
  int64_t misses = 0;        // large requests that mapped a new block
  int64_t evictions = 0;     // idle blocks unmapped to stay within the limit
  int64_t live_bytes = 0;    // large blocks in use
  int64_t cached_bytes = 0;  // large blocks idle in the cache
  int64_t peak_live_bytes = 0;
  int64_t peak_held_bytes = 0;  // highest live + cached: what the cache made the process hold
};

// Requests of at least this many bytes are cached; smaller ones go to malloc, whose heap already
// reuses them.
inline constexpr std::size_t kHostCacheMinBytes = std::size_t{1} << 20;

// The cache itself: blocks mapped with mmap, kept idle after release and handed out again for a
// request of their size or up to a third smaller. Thread-safe.
class HostCache {
 public:
  HostCache() = default;
  HostCache(const HostCache&) = delete;
  HostCache& operator=(const HostCache&) = delete;
  ~HostCache();  // unmaps the idle blocks; live ones must have been released

  // A block of at least `bytes` (>= kHostCacheMinBytes), 4096-aligned. Throws c10::Error when
  // the system has no memory left even after the idle blocks are returned.
  void* take(std::size_t bytes);
  // Returns a block from take() to the cache; false (and nothing done) for any other pointer.
  bool give_back(void* block);
  // Unmaps every idle block.
  void trim();
  HostCacheStats stats() const;

 private:
  void make_room(std::size_t bytes);
  void unmap_idle(std::multimap<std::size_t, void*>::iterator it);
  void unmap_all_idle();

  mutable std::mutex mutex_;
  std::multimap<std::size_t, void*> idle_;        // size -> idle block
  std::unordered_map<void*, std::size_t> sizes_;  // every block, live or idle -> its size
  HostCacheStats stats_;
};

// Makes a process-wide HostCache LibTorch's CPU allocator for every tensor allocated afterwards;
// smaller requests go to malloc. Idempotent. LMTUNE_HOST_CACHE=0 in the environment leaves
// LibTorch's own allocator in place; a value other than 0 or 1 throws UsageError.
void install_host_cache();

// Whether the process-wide cache is LibTorch's CPU allocator now.
bool host_cache_installed();

// Unmaps the process-wide cache's idle blocks, for after work whose CPU tensors will not recur
// soon (a checkpoint's CPU copies of a GPU model).
void trim_host_cache();

HostCacheStats host_cache_stats();

}  // namespace lmtune
