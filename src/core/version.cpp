#include "lmtune/core/version.h"

#include <torch/cuda.h>
#include <torch/version.h>

namespace lmtune {

std::string lmtune_version() {
  return LMTUNE_VERSION;
}

std::string libtorch_version() {
  return TORCH_VERSION;
}

std::string version_report() {
  std::string report = "lmtune " + lmtune_version() + " (git " + kGitRevision + ")\n";
  report += "LibTorch " + libtorch_version();
#ifdef LMTUNE_WITH_CUDA
  report += ", built with CUDA code paths\n";
#else
  report += ", built without CUDA\n";
#endif
  if (torch::cuda::is_available()) {
    report += "CUDA available: yes (" + std::to_string(torch::cuda::device_count()) + " device(s))";
  } else {
    report += "CUDA available: no";
  }
  return report;
}

}  // namespace lmtune
