#include "text_normalizer.h"

namespace lmtune {

namespace {

// `text` with each of its valid UTF-8 runs passed through `transform`, stray bytes kept.
template <class Transform>
std::string transform_utf8_runs(std::string_view text, Transform&& transform) {
  if (valid_utf8_prefix(text) == text.size()) return transform(text);
  std::string out;
  for_each_utf8_run(
      text, [&](std::string_view run) { out += transform(run); },
      [&](std::string_view byte) { out += byte; });
  return out;
}

}  // namespace

std::string TextReplacement::apply(std::string_view text) const {
  return transform_utf8_runs(text, [&](std::string_view run) {
    std::string out;
    std::size_t from = 0;
    pattern_.for_each_match(run, [&](std::size_t start, std::size_t end) {
      out.append(run.substr(from, start - from)).append(content_);
      from = end;
    });
    return out.append(run.substr(from));
  });
}

std::string TextNormalizer::normalize(std::string_view text) const {
  std::string out(text);
  for (const Step& step : steps_) {
    if (const auto* form = std::get_if<NormalForm>(&step)) {
      out = transform_utf8_runs(out,
                                [&](std::string_view run) { return to_normal_form(run, *form); });
    } else if (const auto* prepend = std::get_if<Prepend>(&step)) {
      if (!out.empty()) out.insert(0, prepend->prefix);
    } else {
      out = std::get<TextReplacement>(step).apply(out);
    }
  }
  return out;
}

}  // namespace lmtune
