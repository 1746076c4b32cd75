#include "lmtune/io/remove_tree.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>

namespace lmtune {
namespace {

// Removes `path` (a directory's entries first); returns 0 or the errno of the first failure.
int remove_entry(const std::string& path) {
  struct stat info {};
  if (::lstat(path.c_str(), &info) != 0) return errno == ENOENT ? 0 : errno;
  if (!S_ISDIR(info.st_mode)) return ::unlink(path.c_str()) == 0 || errno == ENOENT ? 0 : errno;
  DIR* dir = ::opendir(path.c_str());
  if (dir == nullptr) return errno;
  int failure = 0;
  while (const dirent* entry = ::readdir(dir)) {
    const std::string name = entry->d_name;
    if (name == "." || name == "..") continue;
    if (int e = remove_entry(path + "/" + name); e != 0 && failure == 0) failure = e;
  }
  ::closedir(dir);
  if (failure != 0) return failure;
  return ::rmdir(path.c_str()) == 0 || errno == ENOENT ? 0 : errno;
}

}  // namespace

bool remove_tree(const std::filesystem::path& path, std::error_code& error) {
  error.clear();
  if (int e = remove_entry(path.string()); e != 0) {
    error.assign(e, std::generic_category());
    return false;
  }
  return true;
}

void remove_tree(const std::filesystem::path& path) {
  std::error_code error;
  if (!remove_tree(path, error))
    throw std::filesystem::filesystem_error("cannot remove the directory tree", path, error);
}

}  // namespace lmtune
