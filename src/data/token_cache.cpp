#include "lmtune/data/token_cache.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>

#include <spdlog/spdlog.h>

#include "lmtune/core/errors.h"
#include "lmtune/core/hash.h"
#include "lmtune/io/atomic_file.h"
#include "lmtune/io/remove_tree.h"
#include "lmtune/io/tokenizer.h"

namespace lmtune {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Text in many scripts, with digits, runs of white space and special-token spellings: two
// tokenizers that encode it alike (and agree on the vocabulary size and end-of-text) are taken to
// encode the data alike.
constexpr std::string_view kTokenizerProbe =
    "Hello, world! It's 2024: 3.14159 apples cost $12.50 (approx.).\n\n\tIndented,  twice  "
    "spaced.\r\nGr\u00fc\u00dfe aus K\u00f6ln. \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac. "
    "\u0420\u0443\u0441\u0441\u043a\u0438\u0439. \u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8"
    "\u3002\u4e2d\u6587\u3002\ud55c\uad6d\uc5b4. \u0627\u0644\u0639\u0631\u0628\u064a\u0629. "
    "\u0939\u093f\u0928\u094d\u0926\u0940. \U0001f642\U0001f44d <|endoftext|> <s></s> [CLS] "
    "\u00a0\u200b end";

// Buffered bytes written per system call.
constexpr std::size_t kFlushBytes = 1 << 20;

std::string system_error(const std::string& what) {
  return what + ": " + std::strerror(errno);
}

int open_for_writing(const fs::path& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(system_error("cannot create " + path.string()));
  return fd;
}

void sync_and_close(int& fd, const fs::path& path) {
  if (::fsync(fd) != 0) throw Error(system_error("cannot sync " + path.string()));
  ::close(fd);
  fd = -1;
}

json file_key(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path.string(), system_error("cannot read"));
  Hash64 hash;
  std::vector<char> buffer(kFlushBytes);
  int64_t bytes = 0;
  while (in.read(buffer.data(), static_cast<std::streamsize>(buffer.size())) || in.gcount() > 0) {
    hash.update(std::string_view(buffer.data(), static_cast<std::size_t>(in.gcount())));
    bytes += in.gcount();
  }
  if (in.bad()) throw InputError(path.string(), "read error");
  // The extension decides how the file is read, so it is part of what the tokens depend on.
  return {{"type", path.extension().string()}, {"bytes", bytes}, {"hash", hash.hex()}};
}

json files_key(const std::vector<fs::path>& files) {
  json list = json::array();
  for (const auto& file : files) list.push_back(file_key(file));
  return list;
}

json tokenizer_key(const Tokenizer& tokenizer) {
  Hash64 probe;
  for (int64_t id : tokenizer.encode(kTokenizerProbe)) probe.update_int(static_cast<uint64_t>(id));
  auto eos = tokenizer.eos_id();
  const TokenFraming framing = tokenizer.framing();
  return {{"vocab_size", tokenizer.vocab_size()},
          {"eos_id", eos ? json(*eos) : json(nullptr)},
          {"framing", {{"prefix", framing.prefix}, {"suffix", framing.suffix}}},
          {"probe", probe.hex()}};
}

// data.order and the curriculum keys decide the order windows are drawn in, not the tokens, so a
// run that changes only them reuses the cache.
bool orders_windows(const std::string& name) {
  return name == "order" || name.rfind("curriculum_", 0) == 0;
}

// The data options as JSON, except the paths (their files are keyed by content). Visiting the
// config rather than listing keys means a new option is part of the key from the day it is added.
struct OptionsKey {
  json options = json::object();

  template <class T>
  void operator()(T& value, const Field& field) {
    if (field.is_path() || orders_windows(field.name())) return;
    if constexpr (IsConfigEnum<T>::value)
      options[field.name()] = std::string(enum_name(value));
    else
      options[field.name()] = value;
  }
};

}  // namespace

json cache_key(const DataConfig& config, const std::vector<fs::path>& train_files,
               const std::vector<fs::path>& validation_files, const Tokenizer& tokenizer) {
  OptionsKey options;
  DataConfig copy = config;
  copy.visit(options);
  return {{"format", kCacheFormat},
          {"train", files_key(train_files)},
          {"validation", files_key(validation_files)},
          {"tokenizer", tokenizer_key(tokenizer)},
          {"options", options.options}};
}

std::string cache_dir_name(const json& key) {
  std::string name = "tokens-";  // appended, not "a" + b: GCC 12 warns falsely on that form here
  name += Hash64().update(key.dump()).hex();
  return name;
}

fs::path tokens_file(const fs::path& dir, const std::string& split) {
  return dir / (split + ".tokens");
}

fs::path mask_file(const fs::path& dir, const std::string& split) {
  return dir / (split + ".mask");
}

SplitWriter::SplitWriter(const fs::path& dir, const std::string& split, int64_t seq_len,
                         bool pad_documents, int64_t eos_id, TokenFraming framing)
    : tokens_path_(tokens_file(dir, split)),
      mask_path_(mask_file(dir, split)),
      seq_len_(seq_len),
      pad_documents_(pad_documents),
      eos_id_(eos_id),
      framing_(std::move(framing)) {
  tokens_fd_ = open_for_writing(tokens_path_);
  mask_fd_ = open_for_writing(mask_path_);
  push(eos_id_, /*loss=*/false);
}

SplitWriter::~SplitWriter() {
  if (tokens_fd_ >= 0) ::close(tokens_fd_);
  if (mask_fd_ >= 0) ::close(mask_fd_);
}

void SplitWriter::add(const std::vector<int64_t>& prompt, const std::vector<int64_t>& text,
                      bool prompt_loss) {
  const int64_t before = length_;
  for (int64_t id : framing_.prefix) push(id, /*loss=*/false);
  for (int64_t id : prompt) push(id, prompt_loss);
  for (int64_t id : text) push(id, /*loss=*/true);
  for (int64_t id : framing_.suffix) push(id, /*loss=*/true);
  // The model learns where a document ends.
  if (framing_.suffix.empty() || framing_.suffix.back() != eos_id_) push(eos_id_, /*loss=*/true);
  tokens_ += length_ - before;
  if (pad_documents_) pad_to_window();
}

void SplitWriter::finish() {
  pad_to_window();
  flush();
  sync_and_close(tokens_fd_, tokens_path_);
  sync_and_close(mask_fd_, mask_path_);
}

void SplitWriter::push(int64_t id, bool loss) {
  if (id < 0 || id > int64_t{0xffffffff})
    throw Error("the tokenizer produced id " + std::to_string(id) +
                ", outside the token cache's uint32 range");
  for (int shift = 0; shift < 32; shift += 8)
    token_bytes_.push_back(static_cast<uint8_t>((static_cast<uint64_t>(id) >> shift) & 0xff));
  mask_bytes_.push_back(loss ? 1 : 0);
  ++length_;
  if (token_bytes_.size() >= kFlushBytes) flush();
}

void SplitWriter::pad_to_window() {
  while ((length_ - 1) % seq_len_ != 0) push(eos_id_, /*loss=*/false);
}

void SplitWriter::flush() {
  write_all(tokens_fd_, token_bytes_.data(), token_bytes_.size(), tokens_path_);
  write_all(mask_fd_, mask_bytes_.data(), mask_bytes_.size(), mask_path_);
  token_bytes_.clear();
  mask_bytes_.clear();
}

void write_synced(const fs::path& path, const std::string& text) {
  int fd = open_for_writing(path);
  try {
    write_all(fd, text.data(), text.size(), path);
    sync_and_close(fd, path);
  } catch (...) {
    ::close(fd);
    throw;
  }
}

fs::path score_file(const fs::path& dir, const std::string& split, const std::string& score,
                    const json& what) {
  return dir / (split + "." + score + "-" + Hash64().update(what.dump()).hex() + ".f64");
}

std::optional<std::vector<double>> read_scores(const fs::path& path, int64_t windows) {
  std::error_code error;
  const auto size = fs::file_size(path, error);
  if (error || size != static_cast<uintmax_t>(windows) * 8) return std::nullopt;
  std::ifstream in(path, std::ios::binary);
  std::vector<uint8_t> bytes(size);
  if (!in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size)))
    return std::nullopt;
  std::vector<double> scores(static_cast<std::size_t>(windows));
  for (std::size_t i = 0; i < scores.size(); ++i) {
    uint64_t word = 0;
    for (int b = 0; b < 8; ++b) word |= static_cast<uint64_t>(bytes[8 * i + b]) << (8 * b);
    std::memcpy(&scores[i], &word, 8);
  }
  return scores;
}

void write_scores(const fs::path& path, const std::vector<double>& scores) {
  std::string bytes(8 * scores.size(), '\0');
  for (std::size_t i = 0; i < scores.size(); ++i) {
    uint64_t word = 0;
    std::memcpy(&word, &scores[i], 8);
    for (int b = 0; b < 8; ++b) bytes[8 * i + b] = static_cast<char>((word >> (8 * b)) & 0xff);
  }
  fs::path temporary = path;
  temporary += ".tmp-" + std::to_string(::getpid());
  write_synced(temporary, bytes);
  fs::rename(temporary, path);
}

namespace {

// "<host>-<pid>": the process building a cache. The host keeps builds on a cache directory shared
// between machines (a home directory on NFS) apart, and out of each other's clean-up.
std::string builder_id() {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') std::strcpy(host, "host");
  for (char* c = host; *c; ++c)
    if (*c == '-' || *c == '/') *c = '_';
  return std::string(host) + "-" + std::to_string(::getpid());
}

void create_cache_root(const fs::path& cache_root) {
  std::error_code error;
  fs::create_directories(cache_root, error);
  if (error)
    throw Error("cannot create the cache directory " + cache_root.string() + ": " +
                error.message());
}

// Build directories of prepares that were killed would pile up in a cache every run shares: one
// of this host whose process is gone is removed.
void remove_abandoned_builds(const fs::path& cache_root) {
  const std::string ours = builder_id();
  const std::string host_prefix = ours.substr(0, ours.rfind('-') + 1);
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(cache_root, error)) {
    const std::string dir_name = entry.path().filename().string();
    if (dir_name.rfind(".build-", 0) != 0) continue;
    const std::size_t id_start = dir_name.rfind(host_prefix);
    if (id_start == std::string::npos) continue;  // another host's, or an old name
    const std::string pid_text = dir_name.substr(id_start + host_prefix.size());
    if (pid_text.empty() || pid_text.size() > 9 ||
        pid_text.find_first_not_of("0123456789") != std::string::npos)
      continue;
    const auto pid = static_cast<pid_t>(std::stol(pid_text));
    if (::kill(pid, 0) != 0 && errno == ESRCH) remove_tree(entry.path());
  }
}

}  // namespace

FileLock lock_cache_build(const fs::path& final_dir) {
  create_cache_root(final_dir.parent_path());
  return FileLock::lock(
      final_dir.parent_path() / ("." + final_dir.filename().string() + ".lock"), [&](pid_t holder) {
        spdlog::info("waiting for {} to finish preparing the token cache {}",
                     holder > 0 ? "lmtune pid " + std::to_string(holder) : "another lmtune process",
                     final_dir.string());
      });
}

fs::path make_build_dir(const fs::path& cache_root, const std::string& name) {
  create_cache_root(cache_root);
  remove_abandoned_builds(cache_root);
  // The host and process id keep two concurrent prepares of the same data apart.
  fs::path dir = cache_root / (".build-" + name + "-" + builder_id());
  remove_tree(dir);
  fs::create_directory(dir);
  return dir;
}

void publish_cache(const fs::path& build_dir, const fs::path& final_dir) {
  if (::rename(build_dir.c_str(), final_dir.c_str()) != 0) {
    if (errno != EEXIST && errno != ENOTEMPTY)
      throw Error(
          system_error("cannot rename " + build_dir.string() + " to " + final_dir.string()));
    remove_tree(build_dir);  // another prepare published the same cache first
    return;
  }
  // Syncing the parent makes the rename itself durable; a failure only risks a rebuild.
  int fd = ::open(final_dir.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

}  // namespace lmtune
