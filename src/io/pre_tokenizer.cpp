#include "pre_tokenizer.h"

#include <algorithm>

#include "unicode_text.h"

namespace lmtune {

namespace {

// GPT-2's pattern (openai/gpt-2 encoder.py), which ByteLevel applies. Contractions are matched
// case-sensitively, letters and digits keep one leading space, and a run of white space leaves
// its last space to the word after it. The possessive forms (++) give the same matches as GPT-2's
// greedy ones, because no later alternative could use what they give back, and spare PCRE2 the
// backtracking.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s+(?!\S)|\s++)";

// A stretch of a piece, and whether the step's pattern matched it.
struct Segment {
  std::size_t start;
  std::size_t end;
  bool is_match;
};

// `piece` cut at the matches of `pattern`, the gaps between them included. Each byte that is not
// UTF-8 is a gap of its own: patterns only see valid text.
std::vector<Segment> segments_of(std::string_view piece, const TextPattern& pattern, bool invert) {
  std::vector<Segment> segments;
  auto add_run = [&](std::string_view run) {
    std::size_t base = run.data() - piece.data(), previous = 0;
    pattern.for_each_match(run, [&](std::size_t start, std::size_t end) {
      if (start != previous) segments.push_back({base + previous, base + start, invert});
      segments.push_back({base + start, base + end, !invert});
      previous = end;
    });
    if (previous != run.size()) segments.push_back({base + previous, base + run.size(), invert});
  };
  auto add_byte = [&](std::string_view byte) {
    std::size_t at = byte.data() - piece.data();
    segments.push_back({at, at + 1, invert});
  };
  for_each_utf8_run(piece, add_run, add_byte);
  return segments;
}

// The segments as `behavior` groups them into pieces (empty ones left in; callers skip them).
std::vector<Segment> group_segments(const std::vector<Segment>& segments, SplitBehavior behavior) {
  std::vector<Segment> pieces;
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (const Segment& s : segments)
        if (!s.is_match) pieces.push_back(s);
      break;
    case SplitBehavior::kIsolated:
      pieces = segments;
      break;
    case SplitBehavior::kContiguous:  // runs of matches (or of gaps) become one piece
      for (const Segment& s : segments) {
        if (!pieces.empty() && s.is_match == previous_match)
          pieces.back().end = s.end;
        else
          pieces.push_back(s);
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::kMergedWithPrevious:  // a match joins the gap before it
      for (const Segment& s : segments) {
        if (!pieces.empty() && s.is_match && !previous_match)
          pieces.back().end = s.end;
        else
          pieces.push_back(s);
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext:  // a match joins the gap after it
      for (auto s = segments.rbegin(); s != segments.rend(); ++s) {
        if (!pieces.empty() && s->is_match && !previous_match)
          pieces.back().start = s->start;
        else
          pieces.push_back(*s);
        previous_match = s->is_match;
      }
      std::reverse(pieces.begin(), pieces.end());
      break;
  }
  return pieces;
}

void emit_groups(std::string_view piece, bool at_input_start, const TextPattern& pattern,
                 SplitBehavior behavior, bool invert, const PreTokenizer::PieceSink& emit) {
  for (const Segment& s : group_segments(segments_of(piece, pattern, invert), behavior)) {
    if (s.end > s.start)
      emit(piece.substr(s.start, s.end - s.start), at_input_start && s.start == 0);
  }
}

class SplitStep : public PreTokenizer::Step {
 public:
  SplitStep(TextPattern pattern, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}

  void split(std::string_view piece, bool at_input_start,
             PreTokenizer::PieceSink emit) const override {
    emit_groups(piece, at_input_start, pattern_, behavior_, invert_, emit);
  }

 private:
  TextPattern pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevelStep : public PreTokenizer::Step {
 public:
  ByteLevelStep(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space),
        use_regex_(use_regex),
        pattern_(TextPattern::regex(kGpt2Pattern)) {}

  void split(std::string_view piece, bool at_input_start,
             PreTokenizer::PieceSink emit) const override {
    std::string prefixed;
    if (add_prefix_space_ && (piece.empty() || piece.front() != ' ')) {
      prefixed.reserve(piece.size() + 1);  // appended, not " " + ...: GCC 12 warns falsely on that
      prefixed.push_back(' ');
      prefixed.append(piece);
      piece = prefixed;
    }
    if (!use_regex_) {
      emit(piece, at_input_start);
      return;
    }
    // The pattern has an alternative for every character, so its matches cover valid text and
    // the pieces come straight from them; only stray bytes fall between.
    for_each_utf8_run(
        piece,
        [&](std::string_view run) {
          pattern_.for_each_match(run, [&](std::size_t start, std::size_t end) {
            if (end > start)
              emit(run.substr(start, end - start),
                   at_input_start && run.data() + start == piece.data());
          });
        },
        [&](std::string_view byte) { emit(byte, false); });
  }

 private:
  bool add_prefix_space_;
  bool use_regex_;
  TextPattern pattern_;
};

class MetaspaceStep : public PreTokenizer::Step {
 public:
  MetaspaceStep(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(replacement),
        scheme_(scheme),
        split_(split),
        pattern_(TextPattern::literal(std::move(replacement))) {}

  void split(std::string_view piece, bool at_input_start,
             PreTokenizer::PieceSink emit) const override {
    std::string text;
    if (prepends(piece, at_input_start)) text = replacement_;
    for (char c : piece) {
      if (c == ' ')
        text += replacement_;
      else
        text += c;
    }
    if (split_)
      emit_groups(text, at_input_start, pattern_, SplitBehavior::kMergedWithNext, false, emit);
    else
      emit(text, at_input_start);
  }

 private:
  bool prepends(std::string_view piece, bool at_input_start) const {
    bool starts_with_it =
        piece.front() == ' ' || piece.substr(0, replacement_.size()) == replacement_;
    return !starts_with_it && (scheme_ == PrependScheme::kAlways ||
                               (scheme_ == PrependScheme::kFirst && at_input_start));
  }

  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
  TextPattern pattern_;
};

}  // namespace

PreTokenizer::PreTokenizer() = default;
PreTokenizer::~PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;

void PreTokenizer::add_byte_level(bool add_prefix_space, bool use_regex) {
  steps_.push_back(std::make_unique<ByteLevelStep>(add_prefix_space, use_regex));
  byte_level_ = true;
}

void PreTokenizer::add_split(TextPattern pattern, SplitBehavior behavior, bool invert) {
  steps_.push_back(std::make_unique<SplitStep>(std::move(pattern), behavior, invert));
}

void PreTokenizer::add_digits(bool individual) {
  // Rust's char::is_numeric, which Digits tests, is the general category N.
  add_split(TextPattern::regex(R"(\p{N})"),
            individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous, /*invert=*/false);
}

void PreTokenizer::add_metaspace(std::string replacement, PrependScheme scheme, bool split) {
  steps_.push_back(std::make_unique<MetaspaceStep>(std::move(replacement), scheme, split));
}

void PreTokenizer::run(std::size_t step, std::string_view piece, bool at_input_start,
                       PieceSink sink) const {
  if (step == steps_.size()) {
    sink(piece, at_input_start);
    return;
  }
  steps_[step]->split(piece, at_input_start, [&](std::string_view sub, bool sub_at_start) {
    run(step + 1, sub, sub_at_start, sink);
  });
}

}  // namespace lmtune
