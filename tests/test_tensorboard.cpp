// Unit tests of TensorBoard event files: CRC-32C and its masking against known vectors, TFRecord
// framing against a record TensorBoard's own writer produced, and the event file writer.
#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include <gtest/gtest.h>

#include "lmtune/train/tensorboard.h"
#include "temp_dir_test.h"

namespace {

namespace fs = std::filesystem;
using lmtune::crc32c;
using lmtune::masked_crc32c;

std::string bytes_from_hex(const std::string& hex) {
  std::string out;
  for (std::size_t i = 0; i < hex.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

uint64_t read_le(const std::string& bytes, std::size_t at, int size) {
  uint64_t value = 0;
  for (int i = 0; i < size; ++i)
    value |= uint64_t{static_cast<unsigned char>(bytes[at + i])} << (8 * i);
  return value;
}

// The records of an event file, each checked against its length and data CRCs.
std::vector<std::string> read_records(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string bytes = buffer.str();
  std::vector<std::string> records;
  for (std::size_t at = 0; at < bytes.size();) {
    EXPECT_LE(at + 12, bytes.size());
    const uint64_t length = read_le(bytes, at, 8);
    EXPECT_EQ(read_le(bytes, at + 8, 4), masked_crc32c(bytes.substr(at, 8)));
    std::string data = bytes.substr(at + 12, length);
    EXPECT_EQ(read_le(bytes, at + 12 + length, 4), masked_crc32c(data));
    records.push_back(std::move(data));
    at += 12 + length + 4;
  }
  return records;
}

std::vector<fs::path> event_files(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir)) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

class TensorBoard : public TempDirTest {};

// RFC 3720 (iSCSI), appendix B.4, and the common check value of "123456789".
TEST(TensorBoardCrc, Crc32cMatchesKnownVectors) {
  EXPECT_EQ(crc32c(""), 0u);
  EXPECT_EQ(crc32c("123456789"), 0xe3069283u);
  EXPECT_EQ(crc32c(std::string(32, '\0')), 0x8a9136aau);
  EXPECT_EQ(crc32c(std::string(32, '\xff')), 0x62a8ab43u);
  std::string ascending(32, '\0');
  for (int i = 0; i < 32; ++i) ascending[i] = static_cast<char>(i);
  EXPECT_EQ(crc32c(ascending), 0x46dd794eu);
}

// Values from tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c.
TEST(TensorBoardCrc, MaskingRotatesAndAddsTheConstant) {
  EXPECT_EQ(masked_crc32c(""), 0xa282ead8u);
  EXPECT_EQ(masked_crc32c("123456789"), 0xc78ab0e5u);
  EXPECT_EQ(masked_crc32c(std::string(32, '\0')), 0x0fd7fffau);
}

// The bytes tensorboard.summary.writer.record_writer.RecordWriter writes for this data.
TEST(TensorBoardCrc, RecordFramingMatchesTensorBoardsWriter) {
  EXPECT_EQ(lmtune::tf_record("brain.Event:2"),
            bytes_from_hex("0d000000000000003c37b834627261696e2e4576656e743a32ee01067c"));
  const std::string empty = lmtune::tf_record("");
  ASSERT_EQ(empty.size(), 16u);
  EXPECT_EQ(empty.substr(0, 8), std::string(8, '\0'));
  EXPECT_EQ(read_le(empty, 8, 4), masked_crc32c(std::string(8, '\0')));
  EXPECT_EQ(read_le(empty, 12, 4), 0xa282ead8u);
}

TEST(TensorBoardCrc, CodeBlocksAreFencedLongerThanAnyBacktickRun) {
  EXPECT_EQ(lmtune::markdown_code_block("a"), "```\na\n```");
  EXPECT_EQ(lmtune::markdown_code_block("x ```` y"), "`````\nx ```` y\n`````");
}

TEST_F(TensorBoard, EventsAreWholeRecordsAfterFlushAndLaterFilesSortAfter) {
  {
    lmtune::EventFileWriter writer(dir_ / "tb");
    ASSERT_TRUE(writer.ok());
    EXPECT_EQ(writer.path().filename().string().rfind("events.out.tfevents.", 0), 0u);
    writer.session_start(1);
    writer.scalar("train/loss", 5, 2.5);
    writer.text("config", 1, "hello");
    EXPECT_EQ(read_records(writer.path()).size(), 1u);  // the file version, flushed at once
    writer.flush();
    const auto records = read_records(writer.path());
    ASSERT_EQ(records.size(), 4u);
    EXPECT_NE(records[0].find("brain.Event:2"), std::string::npos);
    const float loss = 2.5f;
    EXPECT_NE(records[2].find(std::string(reinterpret_cast<const char*>(&loss), 4)),
              std::string::npos);
    EXPECT_NE(records[3].find("hello"), std::string::npos);
  }
  lmtune::EventFileWriter second(dir_ / "tb");  // in the same second: still sorts after
  const auto files = event_files(dir_ / "tb");
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files.back(), second.path());
}

TEST_F(TensorBoard, AnUnwritableDirectoryWarnsOnceAndWritesNothing) {
  std::ofstream(dir_ / "file") << "not a directory";
  lmtune::EventFileWriter writer(dir_ / "file" / "tb");
  EXPECT_FALSE(writer.ok());
  writer.scalar("train/loss", 1, 1.0);
  writer.flush();
  EXPECT_EQ(event_files(dir_).size(), 1u);
}

}  // namespace
