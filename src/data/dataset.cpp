#include "lmtune/data/dataset.h"

#include <chrono>
#include <cmath>
#include <fstream>
#include <utility>

#include <ATen/Parallel.h>
#include <spdlog/spdlog.h>

#include "lmtune/core/errors.h"
#include "lmtune/data/cleaning.h"
#include "lmtune/data/reader.h"
#include "lmtune/data/token_cache.h"
#include "lmtune/io/remove_tree.h"
#include "lmtune/io/tokenizer.h"

namespace lmtune {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Documents are tokenized in parallel in chunks of about this much text: big enough to keep every
// thread busy, small enough that text and tokens of one chunk are all that is held at once.
constexpr std::size_t kChunkBytes = 8 << 20;

constexpr const char* kTrain = "train";
constexpr const char* kValidation = "validation";

// The report's counters, listed once for to_json and from_json.
constexpr std::pair<const char*, int64_t PrepareReport::*> kCounters[] = {
    {"files", &PrepareReport::files},
    {"bytes", &PrepareReport::bytes},
    {"documents", &PrepareReport::documents},
    {"bad_lines_skipped", &PrepareReport::bad_lines_skipped},
    {"urls_stripped", &PrepareReport::urls_stripped},
    {"html_tags_stripped", &PrepareReport::html_tags_stripped},
    {"control_chars_dropped", &PrepareReport::control_chars_dropped},
    {"dropped_short", &PrepareReport::dropped_short},
    {"dropped_duplicates", &PrepareReport::dropped_duplicates},
    {"train_documents", &PrepareReport::train_documents},
    {"validation_documents", &PrepareReport::validation_documents},
    {"train_tokens", &PrepareReport::train_tokens},
    {"validation_tokens", &PrepareReport::validation_tokens},
    {"train_windows", &PrepareReport::train_windows},
    {"validation_windows", &PrepareReport::validation_windows},
};

// "1 duplicate", "2 duplicates".
std::string plural(int64_t count, const std::string& noun) {
  return std::to_string(count) + " " + noun + (count == 1 ? "" : "s");
}

// "1 line was", "2 lines were".
std::string plural_were(int64_t count, const std::string& noun) {
  return plural(count, noun) + (count == 1 ? " was" : " were");
}

// Why a source yielded no documents, from the report's counters before and after reading it:
// "all 12 documents were dropped: 10 shorter than data.min_chars=50, 2 duplicates".
std::string why_empty(const PrepareReport& before, const PrepareReport& after,
                      const DataConfig& config) {
  int64_t documents = after.documents - before.documents;
  int64_t bad_lines = after.bad_lines_skipped - before.bad_lines_skipped;
  if (documents == 0) {
    return bad_lines > 0 ? "no documents: all " + plural_were(bad_lines, "line") +
                               " invalid and skipped (data.skip_bad_lines)"
                         : "no documents: the data is empty";
  }
  std::vector<std::string> reasons;
  if (int64_t short_ones = after.dropped_short - before.dropped_short; short_ones > 0) {
    reasons.push_back(config.min_chars > 0
                          ? std::to_string(short_ones) +
                                " shorter than data.min_chars=" + std::to_string(config.min_chars)
                          : std::to_string(short_ones) + " empty");
  }
  if (int64_t duplicates = after.dropped_duplicates - before.dropped_duplicates; duplicates > 0)
    reasons.push_back(plural(duplicates, "duplicate"));
  std::string why = "all " + plural_were(documents, "document") + " dropped: ";
  for (std::size_t i = 0; i < reasons.size(); ++i) why += (i > 0 ? ", " : "") + reasons[i];
  return why;
}

// Builds one cache directory: reads, cleans and splits the documents, tokenizes them in parallel
// chunks and streams the tokens of each split to its files.
class CacheBuilder {
 public:
  CacheBuilder(const DataConfig& config, const Tokenizer& tokenizer, int64_t eos_id,
               const fs::path& dir)
      : config_(config),
        tokenizer_(tokenizer),
        filter_(config),
        train_(dir, kTrain, config.seq_len, config.packing == Packing::kPad, eos_id,
               tokenizer.framing()),
        validation_(dir, kValidation, config.seq_len, config.packing == Packing::kPad, eos_id,
                    tokenizer.framing()) {}

  // Reads a source; `validation` says it is data.validation rather than data.train.
  void read(const std::vector<fs::path>& files, const std::string& path, bool validation);
  PrepareReport finish();

 private:
  struct Pending {
    Document doc;
    bool validation;
  };

  // Whether the i-th kept training document (from 0) is held out: validation_split spread
  // evenly, so the choice is deterministic and the count is floor(n * validation_split).
  bool held_out(int64_t i) const {
    double split = config_.validation_split;
    return std::floor(static_cast<double>(i + 1) * split) >
           std::floor(static_cast<double>(i) * split);
  }
  void enqueue(Document&& doc, bool validation);
  void tokenize_pending();

  const DataConfig& config_;
  const Tokenizer& tokenizer_;
  DocumentFilter filter_;
  SplitWriter train_, validation_;
  std::vector<Pending> pending_;
  std::size_t pending_bytes_ = 0;
  PrepareReport report_;
};

void CacheBuilder::read(const std::vector<fs::path>& files, const std::string& path,
                        bool validation) {
  const PrepareReport before = report_;
  DocumentReader reader(files, config_);
  Document doc;
  int64_t kept = 0;
  while (reader.next(doc)) {
    ++report_.documents;
    if (!filter_.keep(doc, report_)) continue;
    enqueue(std::move(doc), validation || held_out(kept));
    ++kept;
  }
  report_.bad_lines_skipped += reader.bad_lines_skipped();
  report_.files += static_cast<int64_t>(files.size());
  for (const auto& file : files) report_.bytes += static_cast<int64_t>(fs::file_size(file));
  if (kept == 0) throw InputError(path, why_empty(before, report_, config_));
}

void CacheBuilder::enqueue(Document&& doc, bool validation) {
  pending_bytes_ += doc.text.size() + (doc.prompt ? doc.prompt->size() : 0);
  ++(validation ? report_.validation_documents : report_.train_documents);
  pending_.push_back({std::move(doc), validation});
  if (pending_bytes_ >= kChunkBytes) tokenize_pending();
}

void CacheBuilder::tokenize_pending() {
  const auto n = static_cast<int64_t>(pending_.size());
  std::vector<std::vector<int64_t>> prompts(n), texts(n);
  at::parallel_for(0, n, /*grain_size=*/1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const Document& doc = pending_[i].doc;
      if (doc.prompt) prompts[i] = tokenizer_.encode(*doc.prompt);
      texts[i] = tokenizer_.encode(doc.text);
    }
  });
  // Written in reading order, so the cache does not depend on the thread count.
  for (int64_t i = 0; i < n; ++i)
    (pending_[i].validation ? validation_ : train_)
        .add(prompts[i], texts[i], config_.loss_on_prompt);
  pending_.clear();
  pending_bytes_ = 0;
}

PrepareReport CacheBuilder::finish() {
  tokenize_pending();
  train_.finish();
  validation_.finish();
  report_.train_tokens = train_.tokens();
  report_.validation_tokens = validation_.tokens();
  report_.train_windows = train_.windows();
  report_.validation_windows = validation_.windows();
  return report_;
}

double mb_per_sec(const PrepareReport& report) {
  return report.seconds > 0 ? static_cast<double>(report.bytes) / 1e6 / report.seconds : 0.0;
}

json read_meta(const fs::path& dir) {
  std::ifstream in(dir / kCacheMetaFile);
  return json::parse(in);
}

int64_t require_eos(const Tokenizer& tokenizer) {
  auto eos = tokenizer.eos_id();
  if (!eos)
    throw Error(
        "the tokenizer has no end-of-text token; preparing data needs one to separate "
        "documents");
  return *eos;
}

PreparedData open_splits(const fs::path& dir, int64_t seq_len, PrepareReport report) {
  PreparedData data;
  data.train = TokenSplit(tokens_file(dir, kTrain), mask_file(dir, kTrain), seq_len);
  data.validation = TokenSplit(tokens_file(dir, kValidation), mask_file(dir, kValidation), seq_len);
  data.report = std::move(report);
  data.report.cache_dir = dir.string();
  return data;
}

}  // namespace

std::optional<PreparedData> open_token_cache(const fs::path& dir, const json& key,
                                             int64_t seq_len) {
  if (!fs::exists(dir / kCacheMetaFile)) {
    remove_tree(dir);  // not published by prepare_data, which renames complete caches only
    return std::nullopt;
  }
  try {
    json meta = read_meta(dir);
    if (meta.at("key") != key) throw Error("its meta.json was made for other data");
    PrepareReport report = PrepareReport::from_json(meta.at("report"));
    report.from_cache = true;
    report.seconds = 0;
    return open_splits(dir, seq_len, std::move(report));
  } catch (const std::exception& e) {
    spdlog::warn("rebuilding the token cache {}: {}", dir.string(), e.what());
    remove_tree(dir);
    return std::nullopt;
  }
}

namespace {

// Builds the cache in a private directory and publishes it complete under `dir`.
void build_cache(const DataConfig& config, const Tokenizer& tokenizer, const json& key,
                 const std::vector<fs::path>& train_files,
                 const std::vector<fs::path>& validation_files, const fs::path& dir,
                 std::chrono::steady_clock::time_point start) {
  int64_t eos_id = require_eos(tokenizer);
  fs::path build_dir = make_build_dir(dir.parent_path(), dir.filename().string());
  try {
    CacheBuilder builder(config, tokenizer, eos_id, build_dir);
    builder.read(train_files, config.train, /*validation=*/false);
    if (!validation_files.empty()) builder.read(validation_files, config.validation, true);
    PrepareReport report = builder.finish();
    report.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    json meta = {{"key", key}, {"report", report.to_json()}};
    write_synced(build_dir / kCacheMetaFile, meta.dump(2) + "\n");
  } catch (...) {
    remove_tree(build_dir);
    throw;
  }
  publish_cache(build_dir, dir);
}

}  // namespace

json PrepareReport::to_json() const {
  json out = {{"cache_dir", cache_dir}, {"from_cache", from_cache}};
  for (const auto& [name, counter] : kCounters) out[name] = this->*counter;
  out["seconds"] = seconds;
  out["mb_per_sec"] = mb_per_sec(*this);
  return out;
}

PrepareReport PrepareReport::from_json(const json& in) {
  PrepareReport report;
  report.cache_dir = in.at("cache_dir").get<std::string>();
  report.from_cache = in.at("from_cache").get<bool>();
  for (const auto& [name, counter] : kCounters) report.*counter = in.at(name).get<int64_t>();
  report.seconds = in.at("seconds").get<double>();
  return report;
}

void log_prepare_report(const PrepareReport& r) {
  if (r.from_cache) spdlog::info("token cache: reusing {}", r.cache_dir);
  spdlog::info("read {} files, {:.1f} MB, {} documents ({} bad lines skipped)", r.files,
               static_cast<double>(r.bytes) / 1e6, r.documents, r.bad_lines_skipped);
  spdlog::info("cleaned: {} URLs, {} HTML tags, {} control characters removed", r.urls_stripped,
               r.html_tags_stripped, r.control_chars_dropped);
  spdlog::info("dropped: {} short or empty, {} duplicate documents", r.dropped_short,
               r.dropped_duplicates);
  spdlog::info("train: {} documents, {} tokens, {} windows", r.train_documents, r.train_tokens,
               r.train_windows);
  spdlog::info("validation: {} documents, {} tokens, {} windows", r.validation_documents,
               r.validation_tokens, r.validation_windows);
  if (!r.from_cache) {
    spdlog::info("prepared in {:.2f} s ({:.1f} MB/s) into {}", r.seconds, mb_per_sec(r),
                 r.cache_dir);
  }
}

PreparedData prepare_data(const DataConfig& config, const Tokenizer& tokenizer,
                          const fs::path& cache_root) {
  auto start = std::chrono::steady_clock::now();
  std::vector<fs::path> train_files = data_files(config.train, "data.train");
  std::vector<fs::path> validation_files;
  if (!config.validation.empty())
    validation_files = data_files(config.validation, "data.validation");
  json key = cache_key(config, train_files, validation_files, tokenizer);
  fs::path dir = cache_root / cache_dir_name(key);
  spdlog::debug("token cache for {} train and {} validation file(s): {}", train_files.size(),
                validation_files.size(), dir.string());
  if (auto cached = open_token_cache(dir, key, config.seq_len)) return std::move(*cached);
  FileLock building = lock_cache_build(dir);
  // Another process may have built it while this one waited for the lock.
  if (auto cached = open_token_cache(dir, key, config.seq_len)) return std::move(*cached);
  build_cache(config, tokenizer, key, train_files, validation_files, dir, start);
  return open_splits(dir, config.seq_len, PrepareReport::from_json(read_meta(dir).at("report")));
}

}  // namespace lmtune
