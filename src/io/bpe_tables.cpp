#include "bpe_tables.h"

#include <cstring>

namespace lmtune {

MergeTable::MergeTable(const std::vector<BpeMerge>& merges) {
  std::size_t capacity = 2;
  while (capacity < 2 * merges.size()) capacity *= 2;
  slots_.assign(capacity, Slot{});
  mask_ = capacity - 1;
  shift_ = 64;
  for (std::size_t c = capacity; c > 1; c /= 2) --shift_;
  for (std::size_t rank = 0; rank < merges.size(); ++rank) {
    const BpeMerge& m = merges[rank];
    uint64_t key = pair_key(m.left, m.right);
    uint64_t i = slot_of(key);
    while (slots_[i].key != kEmpty && slots_[i].key != key) i = (i + 1) & mask_;
    slots_[i] = {key, {static_cast<int32_t>(rank), m.merged}};
  }
}

WordCache::WordCache() {
  clear();
}

bool WordCache::find(std::string_view piece, std::vector<int64_t>& ids) const {
  uint64_t hash = hash_of(piece);
  for (std::size_t i = hash & (slots_.size() - 1);; i = (i + 1) & (slots_.size() - 1)) {
    const Slot& slot = slots_[i];
    if (slot.hash == 0) return false;
    if (slot.hash == hash && slot.key_length == piece.size() &&
        std::memcmp(keys_.data() + slot.key_offset, piece.data(), piece.size()) == 0) {
      ids.insert(ids.end(), ids_.begin() + slot.ids_offset,
                 ids_.begin() + slot.ids_offset + slot.ids_count);
      return true;
    }
  }
}

void WordCache::insert(std::string_view piece, const int64_t* ids, std::size_t count) {
  if (size_ >= kMaxPieces) clear();
  if (2 * (size_ + 1) > slots_.size()) grow();
  uint64_t hash = hash_of(piece);
  std::size_t i = hash & (slots_.size() - 1);
  while (slots_[i].hash != 0) i = (i + 1) & (slots_.size() - 1);
  slots_[i] = {hash, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(piece.size()),
               static_cast<uint32_t>(ids_.size()), static_cast<uint32_t>(count)};
  keys_.append(piece);
  ids_.insert(ids_.end(), ids, ids + count);
  ++size_;
}

void WordCache::clear() {
  slots_.assign(4096, Slot{});
  keys_.clear();
  ids_.clear();
  size_ = 0;
}

// Doubles the table; slots keep their hashes, so no key is hashed again.
void WordCache::grow() {
  std::vector<Slot> old(2 * slots_.size());
  old.swap(slots_);
  for (const Slot& slot : old) {
    if (slot.hash == 0) continue;
    std::size_t i = slot.hash & (slots_.size() - 1);
    while (slots_[i].hash != 0) i = (i + 1) & (slots_.size() - 1);
    slots_[i] = slot;
  }
}

}  // namespace lmtune
