#include "lmtune/train/memory.h"

#include <sys/resource.h>

#include <fstream>

#include <ATen/Context.h>
#include <ATen/DeviceAccelerator.h>

namespace lmtune {

double peak_memory_mb(torch::Device device) {
  constexpr double kMiB = 1024.0 * 1024.0;
  if (device.is_cuda()) {
    // The caching allocator has no statistics before CUDA is initialised (no tensor yet).
    at::globalContext().lazyInitDevice(c10::DeviceType::CUDA);
    auto stats = at::accelerator::getDeviceStats(device.has_index() ? device.index() : 0);
    // allocated_bytes[0] aggregates every pool of the allocator.
    return static_cast<double>(stats.allocated_bytes[0].peak) / kMiB;
  }
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) * 1024.0 / kMiB;  // ru_maxrss is in KiB on Linux
}

void reset_peak_memory(torch::Device device) {
  if (device.is_cuda()) {
    at::accelerator::resetPeakStats(device.has_index() ? device.index() : 0);
    return;
  }
  std::ofstream("/proc/self/clear_refs") << "5";  // resets VmHWM to the current RSS
}

}  // namespace lmtune
