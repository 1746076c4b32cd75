#include "lmtune/core/host_allocator.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include "lmtune/core/errors.h"

namespace lmtune {
namespace {

constexpr std::size_t kPageBytes = 4096;
// The cache may hold up to a tenth more than the peak of live bytes. Measured at bench's
// default shape (fp32, 2 threads): no slack served 95% of the steps' large requests, a tenth
// 99.8%, for 2% more peak memory (docs/memory.md).
constexpr int64_t kSlackDivisor = 10;
// Alignment of the small blocks, as LibTorch's own allocator gives (one AVX-512 vector).
constexpr std::size_t kSmallAlignment = 64;

std::size_t round_to_pages(std::size_t bytes) {
  return (bytes + kPageBytes - 1) / kPageBytes * kPageBytes;
}

}  // namespace

HostCache::~HostCache() {
  trim();
}

void* HostCache::take(std::size_t bytes) {
  bytes = round_to_pages(bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  // Best fit, up to half again the request: a block that large stays useful (the step's
  // sizes recur) while its surplus sits unused for this request.
  auto fit = idle_.lower_bound(bytes);
  if (fit != idle_.end() && fit->first <= bytes + bytes / 2) {
    void* block = fit->second;
    stats_.cached_bytes -= static_cast<int64_t>(fit->first);
    stats_.live_bytes += static_cast<int64_t>(fit->first);
    stats_.peak_live_bytes = std::max(stats_.peak_live_bytes, stats_.live_bytes);
    stats_.hits += 1;
    idle_.erase(fit);
    return block;
  }
  make_room(bytes);
  void* block = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (block == MAP_FAILED) {
    unmap_all_idle();
    block = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  }
  TORCH_CHECK(block != MAP_FAILED, "out of host memory: could not allocate ", bytes,
              " bytes for a CPU tensor");
  sizes_.emplace(block, bytes);
  stats_.live_bytes += static_cast<int64_t>(bytes);
  stats_.peak_live_bytes = std::max(stats_.peak_live_bytes, stats_.live_bytes);
  stats_.peak_held_bytes =
      std::max(stats_.peak_held_bytes, stats_.live_bytes + stats_.cached_bytes);
  stats_.misses += 1;
  return block;
}

// Unmaps idle blocks until a new block of `bytes` keeps live + cached within the larger of the
// peak live bytes so far plus a tenth, and what this request needs anyway: the cache only ever
// holds about what the process has already needed at once.
void HostCache::make_room(std::size_t bytes) {
  const int64_t need = static_cast<int64_t>(bytes);
  const int64_t limit = std::max(stats_.peak_live_bytes + stats_.peak_live_bytes / kSlackDivisor,
                                 stats_.live_bytes + need);
  while (!idle_.empty() && stats_.live_bytes + stats_.cached_bytes + need > limit) {
    int64_t excess = stats_.live_bytes + stats_.cached_bytes + need - limit;
    // The smallest block that covers the excess, else the largest and go on.
    auto victim = idle_.lower_bound(static_cast<std::size_t>(excess));
    unmap_idle(victim != idle_.end() ? victim : std::prev(idle_.end()));
  }
}

void HostCache::unmap_idle(std::multimap<std::size_t, void*>::iterator it) {
  munmap(it->second, it->first);
  sizes_.erase(it->second);
  stats_.cached_bytes -= static_cast<int64_t>(it->first);
  stats_.evictions += 1;
  idle_.erase(it);
}

bool HostCache::give_back(void* block) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = sizes_.find(block);
  if (it == sizes_.end()) return false;
  // Ahead of its equals, so the block freed last is handed out first, still warm in the caches.
  idle_.emplace_hint(idle_.lower_bound(it->second), it->second, block);
  stats_.live_bytes -= static_cast<int64_t>(it->second);
  stats_.cached_bytes += static_cast<int64_t>(it->second);
  return true;
}

void HostCache::unmap_all_idle() {
  while (!idle_.empty()) unmap_idle(idle_.begin());
}

void HostCache::trim() {
  std::lock_guard<std::mutex> lock(mutex_);
  unmap_all_idle();
}

HostCacheStats HostCache::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

namespace {

// Never destroyed: tensors may be freed during static destruction, after any static object.
HostCache& process_cache() {
  static auto* cache = new HostCache();
  return *cache;
}

void release_host_block(void* data) {
  if (data == nullptr || process_cache().give_back(data)) return;
  std::free(data);
}

// The c10::Allocator face of the process-wide cache. Data and context are the same pointer, so
// LibTorch's raw allocation interface works too.
class CachingCpuAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(std::size_t bytes) override {
    void* data = nullptr;
    if (bytes >= kHostCacheMinBytes) {
      data = process_cache().take(bytes);
    } else if (bytes > 0) {
      TORCH_CHECK(posix_memalign(&data, kSmallAlignment, bytes) == 0,
                  "out of host memory: could not allocate ", bytes, " bytes for a CPU tensor");
    }
    return {data, data, &release_host_block, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release_host_block; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

CachingCpuAllocator& caching_cpu_allocator() {
  static auto* allocator = new CachingCpuAllocator();
  return *allocator;
}

}  // namespace

void install_host_cache() {
  const char* setting = std::getenv("LMTUNE_HOST_CACHE");
  const std::string value = setting != nullptr ? setting : "1";
  if (value != "0" && value != "1")
    throw UsageError("environment variable LMTUNE_HOST_CACHE=" + value +
                     ": expected 1 (cache large CPU tensors, the default) or 0 (LibTorch's own "
                     "allocator)");
  if (value == "0") return;
  // Priority above LibTorch's own registration (0), so it takes effect.
  c10::SetCPUAllocator(&caching_cpu_allocator(), /*priority=*/1);
}

bool host_cache_installed() {
  return c10::GetCPUAllocator() == &caching_cpu_allocator();
}

void trim_host_cache() {
  process_cache().trim();
}

HostCacheStats host_cache_stats() {
  return process_cache().stats();
}

}  // namespace lmtune
