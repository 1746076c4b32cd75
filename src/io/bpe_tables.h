// The two lookups on BPE's hot path, as flat open-addressing tables: merge rules by pair of ids,
// and the ids of pieces already encoded.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lmtune {

// One merge rule, as token ids: left + right -> merged.
struct BpeMerge {
  int32_t left = 0;
  int32_t right = 0;
  int32_t merged = 0;
};

class MergeTable {
 public:
  struct Rule {
    int32_t rank;    // position in the merge list: the lowest applies first
    int32_t merged;  // the token the pair becomes
  };

  MergeTable() = default;
  // A rule listed twice keeps its later rank, as Hugging Face's tokenizers do.
  explicit MergeTable(const std::vector<BpeMerge>& merges);

  // The rule joining `left` and `right`, or nullptr.
  const Rule* find(int32_t left, int32_t right) const {
    uint64_t key = pair_key(left, right);
    for (uint64_t i = slot_of(key);; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.key == key) return &slot.rule;
      if (slot.key == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};  // ids are never negative, so no pair has it
  struct Slot {
    uint64_t key = kEmpty;
    Rule rule{};
  };

  static uint64_t pair_key(int32_t left, int32_t right) {
    return static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32 | static_cast<uint32_t>(right);
  }
  // Fibonacci hashing: the top bits of key * 2^64/phi spread neighbouring ids over the table.
  uint64_t slot_of(uint64_t key) const { return (key * 0x9E3779B97F4A7C15ull) >> shift_; }

  std::vector<Slot> slots_ = std::vector<Slot>(2);  // a power of two, at most half full
  uint64_t mask_ = 1;
  int shift_ = 63;  // 64 - log2(slots)
};

// Ids of the pieces already encoded. Text reuses few distinct words, so after its first pages
// almost every piece is found here and BPE never runs. Keys and ids live in two arenas, so a hit
// allocates nothing and touches few cache lines.
class WordCache {
 public:
  WordCache();

  // Appends the cached ids of `piece` to `ids`; false when it is not cached.
  bool find(std::string_view piece, std::vector<int64_t>& ids) const;
  // Caches `count` ids for `piece` (at most kMaxPieceLength bytes); past kMaxPieces distinct pieces
  // the cache starts again, which bounds its memory on text that never repeats itself.
  void insert(std::string_view piece, const int64_t* ids, std::size_t count);

  // Longer pieces (runs of spaces or symbols) are rare and not worth keeping.
  static constexpr std::size_t kMaxPieceLength = 256;

 private:
  static constexpr std::size_t kMaxPieces = std::size_t{1} << 18;  // tens of MB of arenas at most
  struct Slot {
    uint64_t hash = 0;  // 0 marks an empty slot; stored hashes always have the top bit set
    uint32_t key_offset = 0;
    uint32_t key_length = 0;
    uint32_t ids_offset = 0;
    uint32_t ids_count = 0;
  };

  static uint64_t hash_of(std::string_view piece) {
    return std::hash<std::string_view>{}(piece) | uint64_t{1} << 63;
  }
  void clear();
  void grow();

  std::vector<Slot> slots_;
  std::string keys_;
  std::vector<int64_t> ids_;
  std::size_t size_ = 0;
};

}  // namespace lmtune
