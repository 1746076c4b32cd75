#include "lmtune/train/metrics.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/spdlog.h>

#include "lmtune/core/errors.h"

namespace lmtune {
namespace fs = std::filesystem;

MetricsFile::MetricsFile(const fs::path& path) : path_(path), out_(path, std::ios::app) {
  if (!out_) throw Error(path.string() + ": cannot open for writing");
}

void MetricsFile::write(const nlohmann::json& record) {
  out_ << record.dump() << '\n';
  out_.flush();
  if (!out_) throw Error(path_.string() + ": write failed (is the disk full?)");
}

Progress::Progress(const fs::path& log_file) : terminal_(::isatty(STDERR_FILENO) == 1) {
  auto sink =
      std::make_shared<spdlog::sinks::basic_file_sink_mt>(log_file.string(), /*truncate=*/false);
  sink->set_pattern("[%Y-%m-%d %H:%M:%S] %l: %v");
  file_ = std::make_shared<spdlog::logger>("train.log", sink);
  file_->flush_on(spdlog::level::info);
  // Everything the default logger prints (warnings, errors) lands in train.log too.
  spdlog::default_logger()->sinks().push_back(sink);
}

Progress::Progress() : terminal_(false) {}

Progress::~Progress() {
  end_step_line();
  if (!file_) return;
  auto& sinks = spdlog::default_logger()->sinks();
  if (!sinks.empty() && sinks.back() == file_->sinks().front()) sinks.pop_back();
}

void Progress::step_line(const std::string& text) {
  if (!file_) return;
  if (!terminal_) {
    spdlog::info(text);
    return;
  }
  std::fprintf(stderr, "\r\033[K%s", text.c_str());
  std::fflush(stderr);
  line_open_ = true;
  file_->info(text);
}

void Progress::message(const std::string& text) {
  if (!file_) return;
  end_step_line();
  spdlog::info(text);
}

void Progress::end_step_line() {
  if (!line_open_) return;
  std::fputc('\n', stderr);
  line_open_ = false;
}

std::string format_duration(double seconds) {
  auto total = static_cast<int64_t>(std::llround(std::max(0.0, seconds)));
  int64_t h = total / 3600, m = total / 60 % 60, s = total % 60;
  char text[32];
  if (h > 0) {
    std::snprintf(text, sizeof(text), "%lldh%02lldm%02llds", (long long)h, (long long)m,
                  (long long)s);
  } else if (m > 0) {
    std::snprintf(text, sizeof(text), "%lldm%02llds", (long long)m, (long long)s);
  } else {
    std::snprintf(text, sizeof(text), "%llds", (long long)s);
  }
  return text;
}

}  // namespace lmtune
