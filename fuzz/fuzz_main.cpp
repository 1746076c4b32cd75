// libFuzzer entry points for lmtune's parsers: LMTUNE_FUZZ_TARGET names the harness to run
// (scripts/fuzz.sh sets it); the harnesses themselves are in targets.cpp.
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "targets.h"

namespace {

const lmtune::fuzz::FuzzTarget* g_target = nullptr;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  const char* name = std::getenv("LMTUNE_FUZZ_TARGET");
  g_target = name ? lmtune::fuzz::find_fuzz_target(name) : nullptr;
  if (!g_target) {
    std::fprintf(stderr, "lmtune_fuzz: set LMTUNE_FUZZ_TARGET to one of:");
    for (const auto& target : lmtune::fuzz::fuzz_targets())
      std::fprintf(stderr, " %.*s", static_cast<int>(target.name.size()), target.name.data());
    std::fprintf(stderr, "\n");
    std::exit(2);
  }
  // Rejected inputs log warnings (a rebuilt token cache, a skipped line): noise at this rate.
  spdlog::set_level(spdlog::level::off);
  torch::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return g_target->run(data, size);
}
