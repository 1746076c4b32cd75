// Writing a file so that it appears whole or not at all: the bytes go to a temporary file beside
// it, which is fsynced and renamed into place (and the directory fsynced). Used by every writer of
// files a crash must not leave half-written: safetensors, checkpoints' JSON, GGUF, token caches.
#pragma once

#include <cstddef>
#include <filesystem>
#include <functional>

namespace lmtune {

// Writes all `size` bytes to `fd`, retrying after interruptions; a failure (a full disk: ENOSPC,
// a file-size limit: EFBIG) throws lmtune::Error naming `path`.
void write_all(int fd, const void* data, std::size_t size, const std::filesystem::path& path);

// fsyncs the directory `dir` (empty: the working directory), so that the entries created, renamed
// or removed in it survive a power cut; a rename is durable only once its directory is synced.
// Throws lmtune::Error when the directory cannot be opened or synced.
void sync_directory(const std::filesystem::path& dir);

// Runs `write(fd, tmp)` on a new temporary file beside `path`, then fsyncs it and renames it to
// `path`, replacing any file there. On any failure the temporary file is removed, `path` is left
// as it was, and the error propagates.
void replace_file_atomically(
    const std::filesystem::path& path,
    const std::function<void(int fd, const std::filesystem::path& tmp)>& write);

}  // namespace lmtune
