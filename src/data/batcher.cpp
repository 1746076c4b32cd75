// Batcher: micro-batches of training windows in an order shuffled by (seed, epoch).
#include <numeric>
#include <random>

#include "lmtune/core/errors.h"
#include "lmtune/data/dataset.h"

namespace lmtune {
namespace {

// Uniform in [0, n) from the generator's raw output. std::uniform_int_distribution and
// std::shuffle differ between standard libraries; the order must be the same on every machine.
uint64_t uniform_below(std::mt19937_64& rng, uint64_t n) {
  // Rejecting the lowest 2^64 mod n values leaves a range that is a multiple of n.
  const uint64_t rejected = (0 - n) % n;
  uint64_t x = rng();
  while (x < rejected) x = rng();
  return x % n;
}

}  // namespace

Batcher::Batcher(const TokenSplit& split, int64_t batch_size, uint64_t seed)
    : split_(split), batch_size_(batch_size), seed_(seed) {
  TORCH_CHECK(batch_size > 0, "batch size must be positive, got ", batch_size);
  shuffle_for_epoch();
}

int64_t Batcher::batches_per_epoch() const {
  return split_.num_windows() / batch_size_;
}

Batch Batcher::next() {
  if (batches_per_epoch() == 0)
    throw Error("the training data makes " + std::to_string(split_.num_windows()) +
                " windows, fewer than one micro-batch of " + std::to_string(batch_size_) +
                "; add data or lower train.micro_batch_size or data.seq_len");
  std::vector<int64_t> windows(order_.begin() + position_.index,
                               order_.begin() + position_.index + batch_size_);
  position_.index += batch_size_;
  set_position(position_);
  return split_.batch(windows);
}

void Batcher::set_position(BatchPosition position) {
  if (position.epoch < 0 || position.index < 0 || position.index > split_.num_windows())
    throw Error("batch position (epoch " + std::to_string(position.epoch) + ", index " +
                std::to_string(position.index) + ") is outside the " +
                std::to_string(split_.num_windows()) +
                " training windows; did the data change since the checkpoint?");
  // An epoch ends where a full batch no longer fits; the rest of it is dropped.
  if (batches_per_epoch() > 0 && position.index + batch_size_ > split_.num_windows()) {
    ++position.epoch;
    position.index = 0;
  }
  const bool new_epoch = position.epoch != position_.epoch;
  position_ = position;
  if (new_epoch) shuffle_for_epoch();
}

void Batcher::shuffle_for_epoch() {
  order_.resize(static_cast<std::size_t>(split_.num_windows()));
  std::iota(order_.begin(), order_.end(), int64_t{0});
  // seed_seq and mt19937_64 are specified to the bit, unlike the distributions.
  std::seed_seq seq{static_cast<uint32_t>(seed_), static_cast<uint32_t>(seed_ >> 32),
                    static_cast<uint32_t>(position_.epoch),
                    static_cast<uint32_t>(static_cast<uint64_t>(position_.epoch) >> 32)};
  std::mt19937_64 rng(seq);
  for (std::size_t i = order_.size(); i > 1; --i)
    std::swap(order_[i - 1], order_[uniform_below(rng, i)]);
}

}  // namespace lmtune
