// GoogleTest entry point: fixes LibTorch's thread count so results do not depend on the machine.
#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include "lmtune/core/runtime.h"

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  lmtune::set_threads(/*requested=*/2);
  spdlog::set_level(spdlog::level::warn);
  return RUN_ALL_TESTS();
}
