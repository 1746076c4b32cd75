#include "lmtune/core/runtime.h"

#include <cstdlib>
#include <thread>

#include <spdlog/sinks/stdout_color_sinks.h>

namespace lmtune {

int64_t set_threads(int64_t requested) {
  int64_t threads = requested > 0 ? requested : std::max(1u, std::thread::hardware_concurrency());
  torch::set_num_threads(static_cast<int>(threads));
  return threads;
}

void init_logging(bool verbose) {
  auto logger = spdlog::stderr_color_st("lmtune");
  logger->set_pattern("lmtune %^%l%$: %v");
  logger->set_level(verbose ? spdlog::level::debug : spdlog::level::info);
  spdlog::set_default_logger(logger);
}

std::filesystem::path machine_cache_dir() {
  auto set = [](const char* name) -> const char* {
    const char* value = std::getenv(name);
    return value && *value ? value : nullptr;
  };
  if (const char* dir = set("LMTUNE_CACHE_DIR")) return dir;
  if (const char* xdg = set("XDG_CACHE_HOME")) return std::filesystem::path(xdg) / "lmtune";
  if (const char* home = set("HOME")) return std::filesystem::path(home) / ".cache" / "lmtune";
  return std::filesystem::temp_directory_path() / "lmtune-cache";
}

}  // namespace lmtune
