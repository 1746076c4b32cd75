// Cleaning of documents before tokenization: URL, HTML-tag and control-character removal, and the
// filters that drop short and duplicate documents, each counted in the PrepareReport.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_set>

#include "lmtune/core/config.h"
#include "lmtune/data/dataset.h"
#include "lmtune/data/reader.h"

namespace lmtune {

// Each removes from `text` in place and returns how many it removed.
int64_t strip_urls(std::string& text);          // http://, https:// and www. URLs
int64_t strip_html_tags(std::string& text);     // <tag ...>, </tag>, <!-- comments -->
int64_t drop_control_chars(std::string& text);  // C0 and C1 controls but newline and tab

// Unicode characters (code points) of UTF-8 text.
int64_t count_chars(std::string_view text);

// Applies data.strip_* and drop_control_chars, then data.min_chars and data.dedupe, counting each
// into a report. Documents seen by one filter are de-duplicated against each other.
class DocumentFilter {
 public:
  explicit DocumentFilter(const DataConfig& config) : config_(config) {}

  // Cleans `doc` in place; false when it is to be dropped.
  bool keep(Document& doc, PrepareReport& report);

 private:
  void clean(std::string& text, PrepareReport& report) const;
  bool too_short(const Document& doc) const;

  const DataConfig& config_;
  std::unordered_set<uint64_t> seen_;  // hashes of the documents kept so far
};

}  // namespace lmtune
