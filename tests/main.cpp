// GoogleTest entry point: fixes LibTorch's thread count so results do not depend on the machine,
// and installs the caching CPU allocator as `lmtune` does, so every test runs on it.
#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include "lmtune/core/host_allocator.h"
#include "lmtune/core/runtime.h"

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  lmtune::install_host_cache();
  lmtune::set_threads(/*requested=*/2);
  spdlog::set_level(spdlog::level::warn);
  return RUN_ALL_TESTS();
}
