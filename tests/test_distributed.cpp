// train/distributed: torchrun's environment, and GradientSync's buckets on a real two-rank Gloo
// group (two threads of this process, each its own rank, meeting on the loopback address).
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <functional>
#include <thread>

#include <gtest/gtest.h>

#include "lmtune/core/errors.h"
#include "lmtune/train/distributed.h"

using namespace lmtune;

namespace {

// Sets the variables torchrun sets for the test's lifetime, then restores the environment.
class TorchrunVariables {
 public:
  explicit TorchrunVariables(std::vector<std::pair<std::string, std::string>> values) {
    for (const char* name : kNames) ::unsetenv(name);
    for (const auto& [name, value] : values) ::setenv(name.c_str(), value.c_str(), 1);
  }
  ~TorchrunVariables() {
    for (const char* name : kNames) ::unsetenv(name);
  }

 private:
  static constexpr const char* kNames[] = {"WORLD_SIZE",
                                           "RANK",
                                           "LOCAL_RANK",
                                           "LOCAL_WORLD_SIZE",
                                           "MASTER_ADDR",
                                           "MASTER_PORT",
                                           "TORCHELASTIC_USE_AGENT_STORE",
                                           "TORCHELASTIC_RESTART_COUNT"};
};

std::string usage_error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const UsageError& e) {
    return e.what();
  }
  return "";
}

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t size = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &size);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// Runs `body(group)` on two ranks at once, each in its own thread with its own process group.
void on_two_ranks(const std::function<void(Distributed&)>& body) {
  const int port = free_port();
  auto rank = [&](int64_t r) {
    TorchrunEnv env;
    env.rank = env.local_rank = r;
    env.world_size = env.local_world_size = 2;
    env.master_addr = "127.0.0.1";
    env.master_port = port;
    Distributed group(env, torch::kCPU, std::chrono::seconds(30));
    body(group);
  };
  std::exception_ptr failure;
  std::thread other([&] {
    try {
      rank(1);
    } catch (...) {
      failure = std::current_exception();
    }
  });
  rank(0);
  other.join();
  if (failure) std::rethrow_exception(failure);
}

}  // namespace

TEST(Distributed, WithoutWorldSizeThereIsNoTorchrunEnvironment) {
  TorchrunVariables vars({});
  EXPECT_FALSE(torchrun_env().has_value());
}

TEST(Distributed, ReadsTorchrunsVariables) {
  TorchrunVariables vars({{"WORLD_SIZE", "4"},
                          {"RANK", "3"},
                          {"LOCAL_RANK", "1"},
                          {"LOCAL_WORLD_SIZE", "2"},
                          {"MASTER_ADDR", "node0"},
                          {"MASTER_PORT", "29400"},
                          {"TORCHELASTIC_USE_AGENT_STORE", "True"},
                          {"TORCHELASTIC_RESTART_COUNT", "2"}});
  auto env = torchrun_env();
  ASSERT_TRUE(env.has_value());
  EXPECT_EQ(env->world_size, 4);
  EXPECT_EQ(env->rank, 3);
  EXPECT_EQ(env->local_rank, 1);
  EXPECT_EQ(env->local_world_size, 2);
  EXPECT_EQ(env->master_addr, "node0");
  EXPECT_EQ(env->master_port, 29400);
  EXPECT_TRUE(env->agent_store);
  EXPECT_EQ(env->restart_count, 2);
}

TEST(Distributed, AMissingOrMalformedVariableIsAUsageErrorNamingIt) {
  {
    TorchrunVariables vars({{"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}});
    EXPECT_NE(usage_error_of([] { torchrun_env(); }).find("RANK is not set"), std::string::npos);
  }
  {
    TorchrunVariables vars(
        {{"WORLD_SIZE", "2"}, {"RANK", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}});
    EXPECT_NE(usage_error_of([] { torchrun_env(); }).find("RANK=2 is not an integer from 0 to 1"),
              std::string::npos);
  }
  {
    TorchrunVariables vars(
        {{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}});
    EXPECT_NE(usage_error_of([] { torchrun_env(); }).find("MASTER_PORT=70000"), std::string::npos);
  }
}

TEST(Distributed, CollectivesSumTakeTheMaximumAndBroadcastRankZerosValue) {
  on_two_ranks([](Distributed& group) {
    const auto r = static_cast<double>(group.rank());
    auto sum = torch::tensor({1.0 + r, 10.0 * r}, torch::kFloat64);
    group.all_reduce_sum(sum, "test");
    EXPECT_TRUE(torch::equal(sum, torch::tensor({3.0, 10.0}, torch::kFloat64)));
    auto max = torch::tensor({r, 1.0 - r});
    group.all_reduce_max(max, "test");
    EXPECT_TRUE(torch::equal(max, torch::tensor({1.0, 1.0})));
    auto value = torch::tensor({7 + group.rank()}, torch::kInt64);
    group.broadcast_from_main(value, "test");
    EXPECT_EQ(value.item<int64_t>(), 7);
  });
}

// Four parameters of 1000 floats in buckets of 8000 bytes: two buckets, (p3, p2) then (p1, p0).
// Each rank's gradient of p_i is (rank + 1) * (i + 1); the sums are 3 * (i + 1).
TEST(Distributed, GradientSyncSumsEveryBucketAndStartsThemDuringBackward) {
  on_two_ranks([](Distributed& group) {
    std::vector<torch::Tensor> params;
    for (int i = 0; i < 4; ++i) params.push_back(torch::zeros({1000}).requires_grad_(true));
    GradientSync sync(group, params, /*bucket_bytes=*/8000);
    EXPECT_EQ(sync.buckets(), 2);
    const double scale = static_cast<double>(group.rank() + 1);
    auto loss = [&] {
      torch::Tensor total = torch::zeros({});
      for (int i = 0; i < 4; ++i) total = total + (params[i] * scale * (i + 1)).sum();
      return total;
    };
    // Accumulation: the first micro-step stays local, the second communicates.
    sync.set_enabled(false);
    loss().backward();
    sync.set_enabled(true);
    loss().backward();
    sync.finish();
    EXPECT_EQ(sync.started_in_backward(), 2);
    for (int i = 0; i < 4; ++i)
      EXPECT_TRUE(torch::allclose(params[i].grad(), torch::full({1000}, 2.0 * 3.0 * (i + 1))))
          << "parameter " << i << " on rank " << group.rank();
  });
}

TEST(Distributed, AParameterWithoutAGradientCountsAsZeroAndItsBucketStartsAtTheEnd) {
  on_two_ranks([](Distributed& group) {
    auto used = torch::ones({10}).requires_grad_(true);
    auto unused = torch::ones({10}).requires_grad_(true);
    // Bucket 0 holds `unused` (the last parameter), which backward never reaches; bucket 1 waits
    // for it, as buckets start in order.
    GradientSync sync(group, {used, unused}, /*bucket_bytes=*/1);
    sync.set_enabled(true);
    (used * static_cast<double>(group.rank() + 1)).sum().backward();
    sync.finish();
    EXPECT_EQ(sync.started_in_backward(), 0);
    EXPECT_TRUE(torch::allclose(used.grad(), torch::full({10}, 3.0)));
    ASSERT_TRUE(unused.grad().defined());
    EXPECT_TRUE(torch::equal(unused.grad(), torch::zeros({10})));
  });
}
