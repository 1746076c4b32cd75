// Unit tests of the GGUF writer: the byte layout of a small file worked out by hand from the
// format, ggml's F16, BF16 and Q8_0 encodings at their rounding edges, and that a failed write
// leaves no file. (tests/e2e/test_export_gguf.py reads whole exports with the gguf package.)
#include <cstring>
#include <fstream>
#include <iterator>

#include <gtest/gtest.h>

#include "lmtune/io/gguf_writer.h"
#include "temp_dir_test.h"

namespace fs = std::filesystem;
using lmtune::GgmlType;
using lmtune::GgufWriter;

namespace {

std::string file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

// Reads little-endian values from a byte string, in order.
class ByteCursor {
 public:
  explicit ByteCursor(const std::string& bytes) : bytes_(bytes) {}
  template <class T>
  T next() {
    T value;
    EXPECT_LE(at_ + sizeof(T), bytes_.size());
    std::memcpy(&value, bytes_.data() + at_, sizeof(T));
    at_ += sizeof(T);
    return value;
  }
  std::string text() {
    const auto length = next<uint64_t>();
    std::string out = bytes_.substr(at_, length);
    at_ += length;
    return out;
  }
  std::size_t at() const { return at_; }

 private:
  const std::string& bytes_;
  std::size_t at_ = 0;
};

std::vector<uint8_t> encoded(const torch::Tensor& values, GgmlType type) {
  torch::Tensor bytes = lmtune::encode_ggml(values, type);
  return {bytes.data_ptr<uint8_t>(), bytes.data_ptr<uint8_t>() + bytes.numel()};
}

uint16_t first_half(const std::vector<uint8_t>& bytes, std::size_t index = 0) {
  return static_cast<uint16_t>(bytes[2 * index] | bytes[2 * index + 1] << 8);
}

using GgufWriterTest = TempDirTest;

TEST_F(GgufWriterTest, WritesHeaderMetadataTensorInfosAndAlignedDataAsGgufV3) {
  GgufWriter gguf;
  gguf.add_uint32("a.count", 7);
  gguf.add_string("a.name", "xy");
  gguf.add_int32_array("a.types", {1, -3});
  torch::Tensor values = torch::arange(6, torch::kFloat32).reshape({2, 3});  // (rows 2, row 3)
  gguf.add_tensor("t.weight", {2, 3}, GgmlType::kF32,
                  [values] { return lmtune::encode_ggml(values, GgmlType::kF32); });
  const fs::path path = dir_ / "x.gguf";
  const int64_t size = gguf.write(path);

  const std::string bytes = file_bytes(path);
  ASSERT_EQ(static_cast<int64_t>(bytes.size()), size);
  ByteCursor cursor(bytes);
  EXPECT_EQ(bytes.substr(0, 4), "GGUF");
  cursor.next<uint32_t>();
  EXPECT_EQ(cursor.next<uint32_t>(), 3u);  // version
  EXPECT_EQ(cursor.next<uint64_t>(), 1u);  // tensors
  EXPECT_EQ(cursor.next<uint64_t>(), 3u);  // key-value pairs
  EXPECT_EQ(cursor.text(), "a.count");
  EXPECT_EQ(cursor.next<uint32_t>(), 4u);  // uint32
  EXPECT_EQ(cursor.next<uint32_t>(), 7u);
  EXPECT_EQ(cursor.text(), "a.name");
  EXPECT_EQ(cursor.next<uint32_t>(), 8u);  // string
  EXPECT_EQ(cursor.text(), "xy");
  EXPECT_EQ(cursor.text(), "a.types");
  EXPECT_EQ(cursor.next<uint32_t>(), 9u);  // array
  EXPECT_EQ(cursor.next<uint32_t>(), 5u);  // of int32
  EXPECT_EQ(cursor.next<uint64_t>(), 2u);
  EXPECT_EQ(cursor.next<int32_t>(), 1);
  EXPECT_EQ(cursor.next<int32_t>(), -3);
  EXPECT_EQ(cursor.text(), "t.weight");
  EXPECT_EQ(cursor.next<uint32_t>(), 2u);  // dims
  EXPECT_EQ(cursor.next<uint64_t>(), 3u);  // ne[0]: the row, innermost first
  EXPECT_EQ(cursor.next<uint64_t>(), 2u);
  EXPECT_EQ(cursor.next<uint32_t>(), 0u);  // F32
  EXPECT_EQ(cursor.next<uint64_t>(), 0u);  // offset in the data section
  const std::size_t data = (cursor.at() + 31) / 32 * 32;
  EXPECT_EQ(bytes.substr(cursor.at(), data - cursor.at()), std::string(data - cursor.at(), '\0'));
  for (int i = 0; i < 6; ++i) {
    float value;
    std::memcpy(&value, bytes.data() + data + 4 * i, 4);
    EXPECT_EQ(value, static_cast<float>(i));
  }
  EXPECT_EQ(bytes.size(), data + 32);  // 24 bytes of data, padded to the alignment
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

TEST_F(GgufWriterTest, AnotherAlignmentIsWrittenAsGeneralAlignmentAndPadsEachTensor) {
  GgufWriter gguf(/*alignment=*/64);
  for (const char* name : {"a", "b"})
    gguf.add_tensor(name, {3}, GgmlType::kF32,
                    [] { return lmtune::encode_ggml(torch::ones({3}), GgmlType::kF32); });
  const fs::path path = dir_ / "x.gguf";
  gguf.write(path);
  const std::string bytes = file_bytes(path);
  EXPECT_NE(bytes.find("general.alignment"), std::string::npos);
  EXPECT_EQ(bytes.size() % 64, 0u);
  // Tensor b's info gives offset 64: a's 12 bytes padded to the alignment.
  const std::string b_name = std::string(1, '\x01') + std::string(7, '\0') + "b";  // length 1, "b"
  const std::size_t b_info = bytes.rfind(b_name);
  ASSERT_NE(b_info, std::string::npos);
  uint64_t offset;
  std::memcpy(&offset, bytes.data() + b_info + 9 + 4 + 8 + 4, 8);
  EXPECT_EQ(offset, 64u);
  EXPECT_THROW(GgufWriter(/*alignment=*/48), std::invalid_argument);
}

TEST(GgmlEncoding, Q8_0ScalesByTheBlockMaximumAndRoundsHalvesAwayFromZero) {
  torch::Tensor block = torch::zeros({2, 32});
  const float row[] = {127.0f, 0.5f, -0.5f, 1.5f, 2.5f, -2.5f, 63.5f, -127.0f};
  for (int j = 0; j < 8; ++j) block[0][j] = row[j];
  block[1][3] = -0.25f;  // d = 0.25 / 127
  const std::vector<uint8_t> bytes = encoded(block, GgmlType::kQ8_0);
  ASSERT_EQ(bytes.size(), 2u * 34u);
  EXPECT_EQ(first_half(bytes), 0x3C00);  // d = 127 / 127 = 1.0 in F16
  const int8_t expected[] = {127, 1, -1, 2, 3, -3, 64, -127};
  for (int j = 0; j < 8; ++j) EXPECT_EQ(static_cast<int8_t>(bytes[2 + j]), expected[j]) << j;
  for (int j = 8; j < 32; ++j) EXPECT_EQ(bytes[2 + j], 0);
  EXPECT_EQ(static_cast<int8_t>(bytes[34 + 2 + 3]), -127);  // the maximum maps to 127
  EXPECT_EQ(encoded(torch::zeros({32}), GgmlType::kQ8_0), std::vector<uint8_t>(34, 0));
}

TEST(GgmlEncoding, F16AndBF16RoundToNearestEven) {
  // Halfway cases: 1 + 2^-11 lies between F16's 1 and 1 + 2^-10, 1 + 3 * 2^-11 between
  // 1 + 2^-10 and 1 + 2^-9; BF16's spacing at 1 is 2^-7.
  torch::Tensor f16_cases = torch::tensor({1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f});
  const auto f16 = encoded(f16_cases, GgmlType::kF16);
  EXPECT_EQ(first_half(f16, 0), 0x3C00);
  EXPECT_EQ(first_half(f16, 1), 0x3C02);
  torch::Tensor bf16_cases = torch::tensor({1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, -2.0f});
  const auto bf16 = encoded(bf16_cases, GgmlType::kBF16);
  EXPECT_EQ(first_half(bf16, 0), 0x3F80);
  EXPECT_EQ(first_half(bf16, 1), 0x3F82);
  EXPECT_EQ(first_half(bf16, 2), 0xC000);
}

TEST_F(GgufWriterTest, RefusesRowsOfNoWholeQ8BlocksDuplicatesAndEmptyArrays) {
  GgufWriter gguf;
  EXPECT_THROW(gguf.add_tensor("t", {4, 48}, GgmlType::kQ8_0, nullptr), std::invalid_argument);
  gguf.add_tensor("t", {4, 64}, GgmlType::kQ8_0, nullptr);
  EXPECT_THROW(gguf.add_tensor("t", {4, 64}, GgmlType::kQ8_0, nullptr), std::invalid_argument);
  gguf.add_bool("k", true);
  EXPECT_THROW(gguf.add_float32("k", 1.0f), std::invalid_argument);
  EXPECT_THROW(gguf.add_string_array("empty", {}), std::invalid_argument);
  EXPECT_EQ(lmtune::ggml_nbytes(GgmlType::kQ8_0, 4 * 64), 4 * 2 * 34);
}

TEST_F(GgufWriterTest, AFailedWriteLeavesNeitherTheFileNorItsTemporary) {
  GgufWriter gguf;
  gguf.add_string("general.name", "x");
  gguf.add_tensor("ok", {32}, GgmlType::kF32,
                  [] { return lmtune::encode_ggml(torch::ones({32}), GgmlType::kF32); });
  gguf.add_tensor("fails", {32}, GgmlType::kF32,
                  []() -> torch::Tensor { throw std::runtime_error("out of memory"); });
  const fs::path path = dir_ / "x.gguf";
  EXPECT_THROW(gguf.write(path), std::runtime_error);
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(fs::is_empty(dir_));  // no temporary file left either
}

}  // namespace
