// Version of lmtune and of the engine it runs on, for `lmtune --version` and saved state.
#pragma once

#include <string>

namespace lmtune {

extern const char* const kGitRevision;  // written at build time by cmake/revision.cmake

std::string lmtune_version();    // e.g. "0.1.0"
std::string libtorch_version();  // e.g. "2.15.0"
// Several lines: lmtune version and revision, LibTorch version and CUDA build, visible GPUs.
std::string version_report();

}  // namespace lmtune
