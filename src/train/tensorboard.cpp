#include "lmtune/train/tensorboard.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace lmtune {
namespace fs = std::filesystem;

namespace {

constexpr const char* kEventFilePrefix = "events.out.tfevents.";
constexpr const char* kFileVersion = "brain.Event:2";  // TensorBoard honours SessionLog from 2 on

// Field numbers and enum values of TensorBoard's protos (tensorboard/compat/proto: event.proto,
// summary.proto, tensor.proto, tensor_shape.proto, types.proto).
constexpr uint32_t kEventWallTime = 1;     // double
constexpr uint32_t kEventStep = 2;         // int64
constexpr uint32_t kEventFileVersion = 3;  // string
constexpr uint32_t kEventSummary = 5;      // Summary
constexpr uint32_t kEventSessionLog = 7;   // SessionLog
constexpr uint32_t kSessionLogStatus = 1;  // enum SessionStatus
constexpr uint64_t kSessionStart = 1;      // SessionLog.START
constexpr uint32_t kSummaryValue = 1;      // repeated Summary.Value
constexpr uint32_t kValueTag = 1;          // string
constexpr uint32_t kValueSimpleValue = 2;  // float
constexpr uint32_t kValueTensor = 8;       // TensorProto
constexpr uint32_t kValueMetadata = 9;     // SummaryMetadata
constexpr uint32_t kMetadataPluginData = 1;
constexpr uint32_t kMetadataDataClass = 4;  // enum DataClass
constexpr uint64_t kDataClassTensor = 2;    // DATA_CLASS_TENSOR
constexpr uint32_t kPluginName = 1;         // string
constexpr uint32_t kTensorDtype = 1;        // enum DataType
constexpr uint64_t kDtString = 7;           // DT_STRING
constexpr uint32_t kTensorShape = 2;        // TensorShapeProto; empty = a scalar
constexpr uint32_t kTensorStringVal = 8;    // repeated bytes

// Protocol buffer wire format: every field is a key (field number << 3 | wire type), then its
// value: a varint, 8 or 4 little-endian bytes, or a varint length and that many bytes.
enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

void append_le_bytes(std::string& out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

void append_varint(std::string& out, uint64_t value) {
  for (; value >= 0x80; value >>= 7) out.push_back(static_cast<char>((value & 0x7f) | 0x80));
  out.push_back(static_cast<char>(value));
}

void append_key(std::string& out, uint32_t field, WireType type) {
  append_varint(out, (uint64_t{field} << 3) | type);
}

void proto_varint(std::string& out, uint32_t field, uint64_t value) {
  append_key(out, field, kVarint);
  append_varint(out, value);
}

void proto_double(std::string& out, uint32_t field, double value) {
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(bits));
  append_key(out, field, kFixed64);
  append_le_bytes(out, bits, 8);
}

void proto_float(std::string& out, uint32_t field, float value) {
  uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof(bits));
  append_key(out, field, kFixed32);
  append_le_bytes(out, bits, 4);
}

// A string, bytes or an embedded message (already encoded).
void proto_bytes(std::string& out, uint32_t field, std::string_view bytes) {
  append_key(out, field, kLengthDelimited);
  append_varint(out, bytes.size());
  out.append(bytes);
}

const std::array<uint32_t, 256>& crc32c_table() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t crc = i;
      for (int bit = 0; bit < 8; ++bit) crc = (crc & 1) ? (crc >> 1) ^ 0x82f63b78u : crc >> 1;
      t[i] = crc;  // 0x82f63b78: the Castagnoli polynomial, bit-reversed
    }
    return t;
  }();
  return table;
}

double unix_seconds() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

// The seconds in a new event file's name: now, or one more than the newest file's already in
// `dir`, so that a process started within the same second as the last still sorts after it.
int64_t event_file_seconds(const fs::path& dir) {
  auto seconds = static_cast<int64_t>(unix_seconds());
  const std::size_t prefix = std::strlen(kEventFilePrefix);
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.compare(0, prefix, kEventFilePrefix) == 0)
      seconds = std::max<int64_t>(seconds, std::strtoll(name.c_str() + prefix, nullptr, 10) + 1);
  }
  return seconds;
}

std::string host_name() {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') return "localhost";
  return host;
}

}  // namespace

uint32_t crc32c(std::string_view bytes) {
  const auto& table = crc32c_table();
  uint32_t crc = 0xffffffffu;
  for (unsigned char byte : bytes) crc = table[(crc ^ byte) & 0xff] ^ (crc >> 8);
  return ~crc;
}

uint32_t masked_crc32c(std::string_view bytes) {
  const uint32_t crc = crc32c(bytes);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

std::string tf_record(std::string_view data) {
  std::string length;
  append_le_bytes(length, data.size(), 8);
  std::string record = length;
  append_le_bytes(record, masked_crc32c(length), 4);
  record.append(data);
  append_le_bytes(record, masked_crc32c(data), 4);
  return record;
}

std::string markdown_code_block(std::string_view text) {
  std::size_t longest = 0, run = 0;
  for (char c : text) {
    run = c == '`' ? run + 1 : 0;
    longest = std::max(longest, run);
  }
  const std::string fence(std::max<std::size_t>(3, longest + 1), '`');
  return fence + "\n" + std::string(text) + "\n" + fence;
}

EventFileWriter::EventFileWriter(const fs::path& dir) {
  try {
    fs::create_directories(dir);
    path_ = dir / fmt::format("{}{:010d}.{}.{}", kEventFilePrefix, event_file_seconds(dir),
                              host_name(), ::getpid());
  } catch (const fs::filesystem_error& e) {
    fail(e.what());
    return;
  }
  out_.open(path_, std::ios::binary | std::ios::app);
  if (!out_) {
    fail("cannot open " + path_.string() + " for writing");
    return;
  }
  std::string version;
  proto_bytes(version, kEventFileVersion, kFileVersion);
  add(/*step=*/0, version);
  flush();
}

EventFileWriter::~EventFileWriter() {
  flush();
}

void EventFileWriter::session_start(int64_t step) {
  std::string session_log;
  proto_varint(session_log, kSessionLogStatus, kSessionStart);
  std::string payload;
  proto_bytes(payload, kEventSessionLog, session_log);
  add(step, payload);
}

void EventFileWriter::scalar(const std::string& tag, int64_t step, double value) {
  std::string summary_value;
  proto_bytes(summary_value, kValueTag, tag);
  proto_float(summary_value, kValueSimpleValue, static_cast<float>(value));
  std::string summary;
  proto_bytes(summary, kSummaryValue, summary_value);
  std::string payload;
  proto_bytes(payload, kEventSummary, summary);
  add(step, payload);
}

// As TensorBoard's own text summaries: a scalar DT_STRING tensor tagged for the text plugin.
void EventFileWriter::text(const std::string& tag, int64_t step, const std::string& markdown) {
  std::string plugin;
  proto_bytes(plugin, kPluginName, "text");
  std::string metadata;
  proto_bytes(metadata, kMetadataPluginData, plugin);
  proto_varint(metadata, kMetadataDataClass, kDataClassTensor);
  std::string tensor;
  proto_varint(tensor, kTensorDtype, kDtString);
  proto_bytes(tensor, kTensorShape, "");
  proto_bytes(tensor, kTensorStringVal, markdown);
  std::string summary_value;
  proto_bytes(summary_value, kValueTag, tag);
  proto_bytes(summary_value, kValueTensor, tensor);
  proto_bytes(summary_value, kValueMetadata, metadata);
  std::string summary;
  proto_bytes(summary, kSummaryValue, summary_value);
  std::string payload;
  proto_bytes(payload, kEventSummary, summary);
  add(step, payload);
}

void EventFileWriter::flush() {
  if (failed_ || pending_.empty()) return;
  out_.write(pending_.data(), static_cast<std::streamsize>(pending_.size()));
  out_.flush();
  if (!out_) {
    fail("writing " + path_.string() + " failed (is the disk full?)");
    return;
  }
  pending_.clear();
}

void EventFileWriter::add(int64_t step, const std::string& payload) {
  if (failed_) return;
  std::string event;
  proto_double(event, kEventWallTime, unix_seconds());
  proto_varint(event, kEventStep, static_cast<uint64_t>(step));  // int64 as two's complement
  event += payload;
  pending_ += tf_record(event);
}

void EventFileWriter::fail(const std::string& why) {
  spdlog::warn("TensorBoard: {}; training carries on without TensorBoard event files", why);
  failed_ = true;
  pending_.clear();
  out_.close();
}

}  // namespace lmtune
