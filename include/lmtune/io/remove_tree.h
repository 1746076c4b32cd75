// Recursive removal of a directory tree, written on POSIX calls rather than
// std::filesystem::remove_all: some LibTorch builds (the torch 2.11 wheel) export their own copy
// of libstdc++'s filesystem functions, and that copy of remove_all crashes when it is called.
#pragma once

#include <filesystem>
#include <system_error>

namespace lmtune {

// Removes `path` and everything under it, without following symbolic links. A path that does
// not exist is no error. Returns false and sets `error` when something could not be removed.
bool remove_tree(const std::filesystem::path& path, std::error_code& error);

// As above; a failure throws std::filesystem::filesystem_error naming the path.
void remove_tree(const std::filesystem::path& path);

}  // namespace lmtune
