// Process-wide settings every command applies: LibTorch's thread count, the logger, and where
// this machine's caches live.
#pragma once

#include <cstdint>
#include <filesystem>

namespace lmtune {

// Sets LibTorch's intra-op threads (0 = every core) and returns the number in effect.
int64_t set_threads(int64_t requested);

// Logs to stderr as "lmtune <level>: message", the form every error line takes.
void init_logging(bool verbose);

// lmtune's directory for caches shared by every run on this machine: $LMTUNE_CACHE_DIR, else
// $XDG_CACHE_HOME/lmtune, else ~/.cache/lmtune (the virtual environment of
// scripts/install-deps.sh lives there too).
std::filesystem::path machine_cache_dir();

}  // namespace lmtune
