// Training output: metrics.jsonl records, train.log, and the progress line on the console.
// Writes only inside the run directory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include <spdlog/logger.h>
#include <nlohmann/json.hpp>

namespace lmtune {

// Appends one JSON object per line to metrics.jsonl, flushed at once so a crash loses nothing.
class MetricsFile {
 public:
  explicit MetricsFile(const std::filesystem::path& path);
  void write(const nlohmann::json& record);

 private:
  std::filesystem::path path_;
  std::ofstream out_;
};

// Progress of a run. On a terminal the step line is redrawn in place; otherwise (a batch job's
// log file) every step line is a plain line. Everything also goes to train.log.
class Progress {
 public:
  explicit Progress(const std::filesystem::path& log_file);
  // A rank other than 0 of a data-parallel run: its progress is rank 0's, so nothing is shown.
  Progress();
  ~Progress();

  void step_line(const std::string& text);  // the latest step's status
  void message(const std::string& text);    // a line that stays (evaluation, saving, ...)

 private:
  void end_step_line();

  bool terminal_;
  bool line_open_ = false;
  std::shared_ptr<spdlog::logger> file_;
};

// "1h02m03s", "4m05s", "12s".
std::string format_duration(double seconds);

}  // namespace lmtune
