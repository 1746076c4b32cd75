#include "lmtune/data/reader.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "lmtune/core/errors.h"

namespace lmtune {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

bool is_data_file(const fs::path& path) {
  return path.extension() == ".txt" || path.extension() == ".jsonl";
}

bool is_blank(const std::string& line) {
  return line.find_first_not_of(" \t\r\f\v") == std::string::npos;
}

// nlohmann's message without its exception id, and without "line 1" (a .jsonl line is one line;
// the file's line number is already in the error's prefix).
std::string json_message(const json::exception& error) {
  std::string message = error.what();
  auto id_end = message.find("] ");
  if (id_end != std::string::npos) message.erase(0, id_end + 2);
  const std::string first_line = "at line 1, column";
  auto at = message.find(first_line);
  if (at != std::string::npos) message.replace(at, first_line.size(), "at column");
  return message;
}

// The string `name` of `object`, or nullptr with `problem` saying what is wrong.
const std::string* string_field(const json& object, const std::string& name, std::string& problem) {
  auto it = object.find(name);
  if (it == object.end()) {
    problem = "missing field \"" + name + "\"";
    return nullptr;
  }
  if (!it->is_string()) {
    problem = "field \"" + name + "\" is " + it->type_name() + ", not a string";
    return nullptr;
  }
  return &it->get_ref<const std::string&>();
}

std::vector<fs::path> directory_files(const fs::path& dir) {
  std::vector<fs::path> files;
  try {
    for (const auto& entry : fs::directory_iterator(dir)) {
      bool hidden = entry.path().filename().string().rfind('.', 0) == 0;
      if (!hidden && entry.is_regular_file() && is_data_file(entry.path()))
        files.push_back(entry.path());
    }
  } catch (const fs::filesystem_error& e) {
    throw InputError(dir.string(), std::string("cannot list the directory: ") + e.what());
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

std::vector<fs::path> data_files(const std::string& path, const std::string& key) {
  std::error_code error;
  fs::file_status status = fs::status(path, error);
  if (!fs::exists(status)) throw InputError(path, "no such file or directory (" + key + ")");
  if (fs::is_directory(status)) {
    std::vector<fs::path> files = directory_files(path);
    if (files.empty())
      throw InputError(path, "the directory holds no .txt or .jsonl files (" + key + ")");
    return files;
  }
  if (!is_data_file(path))
    throw InputError(path, "expected a .txt or .jsonl file, or a directory of them (" + key + ")");
  return {fs::path(path)};
}

DocumentReader::DocumentReader(std::vector<fs::path> files, const DataConfig& config)
    : files_(std::move(files)), config_(config) {}

bool DocumentReader::next(Document& doc) {
  doc.prompt.reset();
  doc.text.clear();
  while (true) {
    if (in_.is_open()) {
      bool found = jsonl_                                         ? next_json_line(doc)
                   : config_.txt_documents == TxtDocuments::kFile ? next_whole_file(doc)
                                                                  : next_paragraph(doc);
      if (found) return true;
      in_.close();
    }
    if (!open_next_file()) return false;
  }
}

bool DocumentReader::open_next_file() {
  if (next_file_ == files_.size()) return false;
  path_ = files_[next_file_++];
  in_ = std::ifstream(path_, std::ios::binary);
  if (!in_) throw InputError(path_.string(), std::string("cannot read: ") + std::strerror(errno));
  jsonl_ = path_.extension() == ".jsonl";
  line_ = 0;
  return true;
}

bool DocumentReader::read_line(std::string& line) {
  if (!std::getline(in_, line)) {
    if (in_.bad())
      throw InputError(path_.string(), "read error after line " + std::to_string(line_));
    return false;
  }
  ++line_;
  if (!line.empty() && line.back() == '\r') line.pop_back();  // CRLF files
  return true;
}

bool DocumentReader::next_paragraph(Document& doc) {
  std::string line;
  while (read_line(line)) {
    if (is_blank(line)) {
      if (!doc.text.empty()) return true;
      continue;
    }
    if (!doc.text.empty()) doc.text += '\n';
    doc.text += line;
  }
  return !doc.text.empty();
}

bool DocumentReader::next_whole_file(Document& doc) {
  std::error_code error;
  auto size = fs::file_size(path_, error);
  if (error) throw InputError(path_.string(), "cannot read: " + error.message());
  doc.text.resize(size);
  if (!in_.read(doc.text.data(), static_cast<std::streamsize>(size)))
    throw InputError(path_.string(), "read error (did the file change while reading?)");
  in_.close();  // the file is one document: the next call opens the next file
  return true;
}

bool DocumentReader::next_json_line(Document& doc) {
  std::string line;
  while (read_line(line)) {
    if (is_blank(line)) continue;
    if (parse_json_line(line, doc)) return true;
  }
  return false;
}

bool DocumentReader::parse_json_line(const std::string& line, Document& doc) {
  json value;
  try {
    value = json::parse(line);
  } catch (const json::parse_error& e) {
    return bad_line("invalid JSON: " + json_message(e));
  } catch (const json::out_of_range& e) {
    // A number too large for a double ("1e500") is reported as out_of_range, not parse_error
    // (tests/fuzz/data_lines/review-*).
    return bad_line("invalid JSON: " + json_message(e));
  }
  if (!value.is_object())
    return bad_line(std::string("expected a JSON object, got ") + value.type_name());
  std::string problem;
  if (!value.contains(config_.prompt_field) && !value.contains(config_.completion_field)) {
    const std::string* text = string_field(value, config_.text_field, problem);
    if (!text)
      return bad_line(problem + " (or \"" + config_.prompt_field + "\" and \"" +
                      config_.completion_field + "\")");
    doc.text = *text;
    return true;
  }
  const std::string* prompt = string_field(value, config_.prompt_field, problem);
  const std::string* completion =
      prompt ? string_field(value, config_.completion_field, problem) : nullptr;
  if (!completion) return bad_line(problem);
  doc.prompt = *prompt;
  doc.text = *completion;
  return true;
}

bool DocumentReader::bad_line(const std::string& message) {
  std::string where = path_.string() + ":" + std::to_string(line_);
  if (!config_.skip_bad_lines) throw InputError(where, message);
  ++bad_lines_skipped_;
  spdlog::debug("{}: skipped: {}", where, message);
  return false;
}

}  // namespace lmtune
