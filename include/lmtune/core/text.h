// Small string helpers shared across layers.
#pragma once

#include <string_view>

namespace lmtune {

inline bool ends_with(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

}  // namespace lmtune
