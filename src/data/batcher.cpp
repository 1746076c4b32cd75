// Batcher: micro-batches of training windows, shuffled by (seed, epoch), in file order, or paced by
// a curriculum.
#include <algorithm>
#include <cmath>
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

// seed_seq and mt19937_64 are specified to the bit, unlike the distributions.
std::mt19937_64 generator(std::initializer_list<uint64_t> values) {
  std::vector<uint32_t> words;
  for (uint64_t value : values) {
    words.push_back(static_cast<uint32_t>(value));
    words.push_back(static_cast<uint32_t>(value >> 32));
  }
  std::seed_seq seq(words.begin(), words.end());
  return std::mt19937_64(seq);
}

// Tells the curriculum's per-batch draws apart from the epoch shuffles of the same seed.
constexpr uint64_t kPacedDraw = 0x6375727269637531;  // "curricu1"

}  // namespace

std::vector<int64_t> rank_easiest_first(const std::vector<double>& scores) {
  std::vector<int64_t> ranked(scores.size());
  std::iota(ranked.begin(), ranked.end(), int64_t{0});
  std::stable_sort(ranked.begin(), ranked.end(),
                   [&](int64_t a, int64_t b) { return scores[a] < scores[b]; });
  return ranked;
}

Batcher::Batcher(const TokenSplit& split, int64_t batch_size, uint64_t seed, DataOrder order,
                 Curriculum curriculum)
    : split_(split),
      batch_size_(batch_size),
      seed_(seed),
      order_kind_(order),
      curriculum_(std::move(curriculum)) {
  TORCH_CHECK(batch_size > 0, "batch size must be positive, got ", batch_size);
  if (order_kind_ == DataOrder::kCurriculum) {
    TORCH_CHECK(static_cast<int64_t>(curriculum_.ranked.size()) == split_.num_windows(),
                "the curriculum ranks ", curriculum_.ranked.size(), " windows of ",
                split_.num_windows());
    TORCH_CHECK(curriculum_.start_fraction > 0 && curriculum_.start_fraction <= 1,
                "curriculum start fraction outside (0, 1]");
    TORCH_CHECK(curriculum_.batches_per_step > 0, "batches per step must be positive");
  }
  order_epoch();
}

int64_t Batcher::batches_per_epoch() const {
  return split_.num_windows() / batch_size_;
}

int64_t Batcher::optimizer_step() const {
  // Windows drawn before the next batch: full batches of the epochs done, then this one's.
  const int64_t drawn = position_.epoch * batches_per_epoch() * batch_size_ + position_.index;
  return drawn / (batch_size_ * curriculum_.batches_per_step);
}

int64_t Batcher::available_windows() const {
  const int64_t n = split_.num_windows();
  if (order_kind_ != DataOrder::kCurriculum || curriculum_.pace_steps == 0) return n;
  const int64_t step = optimizer_step();
  if (step >= curriculum_.pace_steps) return n;
  const double start = curriculum_.start_fraction;
  const double fraction =
      start + (1 - start) * static_cast<double>(step) / static_cast<double>(curriculum_.pace_steps);
  const auto available = static_cast<int64_t>(std::ceil(static_cast<double>(n) * fraction));
  return std::clamp<int64_t>(available, std::min(batch_size_, n), n);
}

std::vector<int64_t> Batcher::paced_batch(int64_t available) const {
  // Distinct windows drawn uniformly from the easiest `available`, seeded by the position alone.
  std::mt19937_64 rng = generator({seed_, static_cast<uint64_t>(position_.epoch),
                                   static_cast<uint64_t>(position_.index), kPacedDraw});
  std::vector<int64_t> ranks;
  while (static_cast<int64_t>(ranks.size()) < batch_size_) {
    const auto rank = static_cast<int64_t>(uniform_below(rng, static_cast<uint64_t>(available)));
    if (std::find(ranks.begin(), ranks.end(), rank) == ranks.end()) ranks.push_back(rank);
  }
  std::vector<int64_t> windows;
  for (int64_t rank : ranks) windows.push_back(curriculum_.ranked[rank]);
  return windows;
}

std::vector<int64_t> Batcher::peek() const {
  if (batches_per_epoch() == 0)
    throw Error("the training data makes " + std::to_string(split_.num_windows()) +
                " windows, fewer than one micro-batch of " + std::to_string(batch_size_) +
                "; add data or lower train.micro_batch_size or data.seq_len");
  const int64_t available = available_windows();
  if (available < split_.num_windows()) return paced_batch(available);
  return {order_.begin() + position_.index, order_.begin() + position_.index + batch_size_};
}

Batch Batcher::next() {
  std::vector<int64_t> windows = peek();
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
  if (new_epoch) order_epoch();
}

void Batcher::order_epoch() {
  order_.resize(static_cast<std::size_t>(split_.num_windows()));
  std::iota(order_.begin(), order_.end(), int64_t{0});
  if (order_kind_ == DataOrder::kSequential) return;
  std::mt19937_64 rng = generator({seed_, static_cast<uint64_t>(position_.epoch)});
  for (std::size_t i = order_.size(); i > 1; --i)
    std::swap(order_[i - 1], order_[uniform_below(rng, i)]);
}

}  // namespace lmtune
