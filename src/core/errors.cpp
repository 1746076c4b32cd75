#include "lmtune/core/errors.h"

namespace lmtune {
namespace {

std::string join_lines(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& line : lines) {
    if (!out.empty()) out += '\n';
    out += line;
  }
  return out;
}

}  // namespace

ConfigError::ConfigError(std::vector<std::string> problems)
    : Error(join_lines(problems)), problems_(std::move(problems)) {}

InputError::InputError(const std::string& path, const std::string& message)
    : Error(path + ": " + message), path_(path) {}

}  // namespace lmtune
