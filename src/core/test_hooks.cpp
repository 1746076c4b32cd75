#include "lmtune/core/test_hooks.h"

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <string>

namespace lmtune {

void kill_here_if_testing(std::string_view phase, int64_t step) {
  const char* points = std::getenv("LMTUNE_TEST_KILL_AT");
  if (!points) return;
  const std::string wanted = std::string(phase) + ":" + std::to_string(step);
  const std::string any_step = std::string(phase) + ":*";
  const std::string_view list(points);
  std::size_t start = 0;
  while (start <= list.size()) {
    const std::size_t end = std::min(list.find(',', start), list.size());
    const std::string_view point = list.substr(start, end - start);
    if (point == wanted || point == any_step) std::raise(SIGKILL);
    start = end + 1;
  }
}

}  // namespace lmtune
