// Reads training documents from .txt and .jsonl files one at a time, so that a large file is never
// held whole in memory (except a .txt read as one document per file).
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "lmtune/core/config.h"

namespace lmtune {

// A plain document (text) or a prompt/completion pair (prompt set, text is the completion).
struct Document {
  std::optional<std::string> prompt;
  std::string text;
};

// The files of a data path: the file itself, or a directory's .txt and .jsonl files in name order.
// `key` names the config key in errors ("data.train"). Throws InputError for a missing path, a
// file that is neither .txt nor .jsonl, or a directory without such files.
std::vector<std::filesystem::path> data_files(const std::string& path, const std::string& key);

// Streams the documents of a list of files in order. Errors are InputError "file:line: ...".
class DocumentReader {
 public:
  DocumentReader(std::vector<std::filesystem::path> files, const DataConfig& config);

  // Reads the next document into `doc`; false after the last one.
  bool next(Document& doc);
  int64_t bad_lines_skipped() const { return bad_lines_skipped_; }

 private:
  bool open_next_file();
  // Reads one line without its line ending; false at the end of the file.
  bool read_line(std::string& line);
  bool next_paragraph(Document& doc);
  bool next_whole_file(Document& doc);
  bool next_json_line(Document& doc);
  // Parses one .jsonl line; false when it is bad and data.skip_bad_lines is set.
  bool parse_json_line(const std::string& line, Document& doc);
  // A bad .jsonl line: counted and skipped (returns false) with data.skip_bad_lines, else thrown.
  bool bad_line(const std::string& message);

  std::vector<std::filesystem::path> files_;
  const DataConfig& config_;
  std::size_t next_file_ = 0;
  std::filesystem::path path_;  // the file being read
  std::ifstream in_;
  bool jsonl_ = false;
  int64_t line_ = 0;  // 1-based number of the last line read from path_
  int64_t bad_lines_skipped_ = 0;
};

}  // namespace lmtune
