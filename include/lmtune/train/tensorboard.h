// TensorBoard event files written without TensorFlow or protobuf: TFRecord framing around Event
// messages encoded by hand. Writes only inside the directory it is given, and never fails a run.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace lmtune {

// CRC-32C (Castagnoli), the checksum of TFRecord framing.
uint32_t crc32c(std::string_view bytes);
// What a TFRecord stores of a CRC: rotated right by 15 bits, plus 0xa282ead8.
uint32_t masked_crc32c(std::string_view bytes);
// One TFRecord: the data's length (uint64, little-endian), the masked CRC of those 8 bytes, the
// data, the masked CRC of the data.
std::string tf_record(std::string_view data);

// `text` as a Markdown code block (TensorBoard renders text summaries as Markdown), fenced with
// more backticks than any run inside it.
std::string markdown_code_block(std::string_view text);

// A new event file in a directory: events.out.tfevents.<seconds>.<host>.<pid>, named to sort
// after the files already there, as TensorBoard reads a directory's files in name order.
// Events are buffered and written whole by flush(), so a killed process leaves whole records.
// A directory or file that cannot be written gives one warning; the writer then does nothing.
class EventFileWriter {
 public:
  explicit EventFileWriter(const std::filesystem::path& dir);
  ~EventFileWriter();  // flushes

  EventFileWriter(const EventFileWriter&) = delete;
  EventFileWriter& operator=(const EventFileWriter&) = delete;

  // A SessionLog START at `step`: TensorBoard's reader drops the points at `step` and later that
  // it read before (earlier files), as a resumed run re-runs the steps after its checkpoint.
  void session_start(int64_t step);
  void scalar(const std::string& tag, int64_t step, double value);  // stored as float32
  void text(const std::string& tag, int64_t step, const std::string& markdown);
  // Writes the events added since the last flush.
  void flush();

  bool ok() const { return !failed_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  void add(int64_t step, const std::string& payload);  // Event fields after wall_time and step
  void fail(const std::string& why);

  std::filesystem::path path_;
  std::ofstream out_;
  std::string pending_;  // whole records not yet written
  bool failed_ = false;
};

}  // namespace lmtune
