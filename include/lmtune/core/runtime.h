// Process-wide settings every command applies: LibTorch's thread count and the logger.
#pragma once

#include <cstdint>

namespace lmtune {

// Sets LibTorch's intra-op threads (0 = every core) and returns the number in effect.
int64_t set_threads(int64_t requested);

// Logs to stderr as "lmtune <level>: message", the form every error line takes.
void init_logging(bool verbose);

}  // namespace lmtune
