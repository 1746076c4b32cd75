#include "lmtune/train/memory.h"

#include <sys/resource.h>

#include <fstream>
#include <string>

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
  // VmHWM, this process image's own high-water mark. Not getrusage's ru_maxrss: Linux carries
  // that across fork and exec, so lmtune started from a large process (a Python driver with torch
  // loaded) would report its parent's resident set as its own peak.
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) * 1024.0 / kMiB;  // kB
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
