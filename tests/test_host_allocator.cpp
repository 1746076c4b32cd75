// The caching CPU allocator: reuse, its size rule, its memory limit, and LibTorch's tensors on it.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "lmtune/core/host_allocator.h"

namespace lmtune {
namespace {

constexpr std::size_t kBlockMiB = std::size_t{1} << 20;

TEST(HostCache, ReleasedBlockServesTheNextRequestOfItsSize) {
  HostCache cache;
  void* first = cache.take(8 * kBlockMiB);
  std::memset(first, 7, 8 * kBlockMiB);  // the block is writable to its end
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(first) % 4096, 0u);
  ASSERT_TRUE(cache.give_back(first));
  EXPECT_EQ(cache.stats().cached_bytes, static_cast<int64_t>(8 * kBlockMiB));

  void* second = cache.take(8 * kBlockMiB);
  EXPECT_EQ(second, first);
  HostCacheStats stats = cache.stats();
  EXPECT_EQ(stats.hits, 1);
  EXPECT_EQ(stats.misses, 1);
  EXPECT_EQ(stats.live_bytes, static_cast<int64_t>(8 * kBlockMiB));
  EXPECT_EQ(stats.cached_bytes, 0);
  cache.give_back(second);
}

TEST(HostCache, BlockServesRequestsUpToAThirdSmallerOnly) {
  HostCache cache;
  void* block = cache.take(12 * kBlockMiB);
  cache.give_back(block);
  void* fits = cache.take(8 * kBlockMiB);  // 12 MiB is exactly half again 8 MiB
  EXPECT_EQ(fits, block);
  EXPECT_EQ(cache.stats().hits, 1);
  cache.give_back(fits);
  void* too_small = cache.take(7 * kBlockMiB);  // 12 MiB is more than half again 7 MiB
  EXPECT_EQ(cache.stats().hits, 1);
  EXPECT_EQ(cache.stats().misses, 2);
  cache.give_back(too_small);
}

TEST(HostCache, GiveBackRefusesPointersItDidNotHandOut) {
  HostCache cache;
  int on_stack = 0;
  EXPECT_FALSE(cache.give_back(&on_stack));
  void* block = cache.take(kHostCacheMinBytes);
  EXPECT_TRUE(cache.give_back(block));
  EXPECT_FALSE(cache.give_back(static_cast<char*>(block) + 64));
}

TEST(HostCache, EvictsIdleBlocksRatherThanHoldMoreThanTheLivePeak) {
  HostCache cache;
  void* small = cache.take(8 * kBlockMiB);
  cache.give_back(small);
  // 16 MiB live would make 24 MiB held with the idle 8 MiB: more than the new peak of 16 MiB
  // plus a tenth, so the idle block goes back to the kernel first.
  void* large = cache.take(16 * kBlockMiB);
  HostCacheStats stats = cache.stats();
  EXPECT_EQ(stats.evictions, 1);
  EXPECT_EQ(stats.cached_bytes, 0);
  EXPECT_EQ(stats.peak_held_bytes, static_cast<int64_t>(16 * kBlockMiB));
  cache.give_back(large);
}

TEST(HostCache, RandomTrafficNeverHoldsMoreThanATenthAboveTheLivePeak) {
  HostCache cache;
  std::mt19937 rng(1);
  std::uniform_int_distribution<std::size_t> size_mib(1, 40);
  std::vector<void*> live;
  for (int i = 0; i < 2000; ++i) {
    if (!live.empty() && rng() % 2 == 0) {
      std::size_t victim = rng() % live.size();
      ASSERT_TRUE(cache.give_back(live[victim]));
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(victim));
    } else if (live.size() < 12) {
      live.push_back(cache.take(size_mib(rng) * kBlockMiB + rng() % 4096));
    }
  }
  HostCacheStats stats = cache.stats();
  EXPECT_GT(stats.hits, 0);
  EXPECT_GT(stats.evictions, 0);
  EXPECT_LE(stats.peak_held_bytes, stats.peak_live_bytes + stats.peak_live_bytes / 10);
  for (void* block : live) cache.give_back(block);
  cache.trim();
  EXPECT_EQ(cache.stats().cached_bytes, 0);
  EXPECT_EQ(cache.stats().live_bytes, 0);
}

// The test binary installs the cache as the product does (tests/main.cpp).
TEST(HostCache, LibTorchCpuTensorsUseTheInstalledCache) {
  ASSERT_TRUE(host_cache_installed());
  const HostCacheStats before = host_cache_stats();
  void* address = nullptr;
  {
    torch::Tensor large = torch::ones({1 << 20});  // 4 MiB of fp32
    address = large.data_ptr();
  }
  torch::Tensor again = torch::zeros({1 << 20});
  EXPECT_EQ(again.data_ptr(), address);
  EXPECT_EQ(again.sum().item<float>(), 0.0f);
  EXPECT_GE(host_cache_stats().hits, before.hits + 1);

  torch::Tensor small = torch::arange(10);  // malloc's, freed through the same deleter
  EXPECT_EQ(small.sum().item<int64_t>(), 45);
}

}  // namespace
}  // namespace lmtune
