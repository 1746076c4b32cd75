#include "special_tokens.h"

namespace lmtune {

SpecialTokenSplitter::SpecialTokenSplitter(std::vector<SpecialToken> tokens) {
  for (auto& token : tokens) {
    if (!token.text.empty()) tokens_.push_back(std::move(token));  // an empty token matches nowhere
  }
  std::stable_sort(
      tokens_.begin(), tokens_.end(),
      [](const SpecialToken& a, const SpecialToken& b) { return a.text.size() > b.text.size(); });
}

}  // namespace lmtune
