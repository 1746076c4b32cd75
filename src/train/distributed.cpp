#include "lmtune/train/distributed.h"

#include <cstdlib>
#include <mutex>

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef LMTUNE_WITH_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "lmtune/core/errors.h"

namespace lmtune {
namespace {

using Clock = std::chrono::steady_clock;

std::optional<std::string> env_text(const char* name) {
  const char* value = std::getenv(name);
  if (!value || !*value) return std::nullopt;
  return std::string(value);
}

int64_t env_integer(const char* name, std::optional<int64_t> fallback, int64_t min, int64_t max) {
  std::optional<std::string> text = env_text(name);
  if (!text) {
    if (fallback) return *fallback;
    throw UsageError(std::string(name) +
                     " is not set; lmtune runs data-parallel when launched by torchrun, which sets "
                     "RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT");
  }
  std::size_t used = 0;
  int64_t value = 0;
  try {
    value = std::stoll(*text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text->size() || value < min || value > max)
    throw UsageError(fmt::format("{}={} is not an integer from {} to {}", name, *text, min, max));
  return value;
}

// The first line of a c10d error: the rest is a C++ stack trace.
std::string first_line(const std::string& text) {
  return text.substr(0, text.find('\n'));
}

// A collective that failed because another rank died, hung or lost its connection.
[[noreturn]] void throw_lost_rank(const char* what, const std::exception& e) {
  throw Error(fmt::format(
      "{} failed: another rank died, hung past run.dist_timeout_s, or lost its connection ({}); "
      "the newest complete checkpoint is intact: continue with lmtune train CONFIG --resume",
      what, first_line(e.what())));
}

c10::intrusive_ptr<c10d::Store> join_store(const TorchrunEnv& env, std::chrono::seconds timeout) {
  c10d::TCPStoreOptions options;
  options.port = static_cast<std::uint16_t>(env.master_port);
  options.timeout = timeout;
  // Under torchrun's agent the store already runs (the agent serves it); without the agent rank 0
  // serves one for the others.
  options.isServer = !env.agent_store && env.rank == 0;
  if (options.isServer) options.numWorkers = static_cast<std::size_t>(env.world_size);
  options.waitWorkers = false;
  auto store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, options);
  // Keys of an earlier attempt of a restarted worker group stay in the agent's store: each attempt
  // has its own prefix, as torch.distributed's own rendezvous does it.
  return c10::make_intrusive<c10d::PrefixStore>(
      fmt::format("/worker/attempt_{}/lmtune/", env.restart_count), store);
}

// GLOO_SOCKET_IFNAME (comma-separated interfaces) as torch.distributed reads it; otherwise the
// address the host name resolves to (loopback when it resolves to none).
std::vector<std::shared_ptr<::gloo::transport::Device>> gloo_devices() {
  std::vector<std::shared_ptr<::gloo::transport::Device>> devices;
  if (std::optional<std::string> names = env_text("GLOO_SOCKET_IFNAME")) {
    std::size_t start = 0;
    while (start <= names->size()) {
      const std::size_t end = std::min(names->find(',', start), names->size());
      if (end > start)
        devices.push_back(
            c10d::ProcessGroupGloo::createDeviceForInterface(names->substr(start, end - start)));
      start = end + 1;
    }
  }
  if (devices.empty()) devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  return devices;
}

}  // namespace

std::optional<TorchrunEnv> torchrun_env() {
  if (!env_text("WORLD_SIZE")) return std::nullopt;
  TorchrunEnv env;
  env.world_size = env_integer("WORLD_SIZE", std::nullopt, 1, 1 << 20);
  env.rank = env_integer("RANK", std::nullopt, 0, env.world_size - 1);
  env.local_world_size = env_integer("LOCAL_WORLD_SIZE", int64_t{1}, 1, env.world_size);
  env.local_rank = env_integer("LOCAL_RANK", int64_t{0}, 0, env.local_world_size - 1);
  env.master_port = env_integer("MASTER_PORT", std::nullopt, 1, 65535);
  env.master_addr = env_text("MASTER_ADDR").value_or("");
  if (env.master_addr.empty() && env.world_size > 1)
    throw UsageError("MASTER_ADDR is not set; torchrun sets it, or set it to rank 0's host");
  const std::string agent = env_text("TORCHELASTIC_USE_AGENT_STORE").value_or("");
  env.agent_store = agent == "True" || agent == "true" || agent == "1";
  env.restart_count = env_integer("TORCHELASTIC_RESTART_COUNT", int64_t{0}, 0, INT32_MAX);
  return env;
}

class Distributed::Pending {
 public:
  explicit Pending(c10::intrusive_ptr<c10d::Work> work) : work_(std::move(work)) {}
  c10::intrusive_ptr<c10d::Work> work_;
};

Distributed::Distributed(const TorchrunEnv& env, torch::Device device, std::chrono::seconds timeout)
    : env_(env), device_(device), timeout_(timeout) {
  try {
    store_ = join_store(env, timeout);
    if (device.is_cuda()) {
#ifdef LMTUNE_WITH_NCCL
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(device.index()));
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      backend_ =
          c10::make_intrusive<c10d::ProcessGroupNCCL>(store_, env.rank, env.world_size, options);
      backend_name_ = "nccl";
#else
      throw UsageError(
          "data-parallel training on GPUs needs NCCL, and this lmtune was built without it; "
          "rebuild where the torch wheel's nvidia/nccl headers are installed, or set "
          "run.device: cpu");
#endif
    } else {
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      options->devices = gloo_devices();
      backend_ =
          c10::make_intrusive<c10d::ProcessGroupGloo>(store_, env.rank, env.world_size, options);
      backend_name_ = "gloo";
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(fmt::format(
        "could not join the other {} rank(s) at {}:{} within run.dist_timeout_s ({} s): {}",
        env.world_size - 1, env.master_addr, env.master_port, timeout.count(),
        first_line(e.what())));
  }
}

Distributed::~Distributed() = default;

void Distributed::all_reduce_sum(torch::Tensor& tensor, const char* what) {
  auto pending = start_all_reduce_sum(tensor);
  wait(*pending, what);
}

void Distributed::all_reduce_max(torch::Tensor& tensor, const char* what) {
  std::vector<at::Tensor> tensors{tensor};
  try {
    c10d::AllreduceOptions options;
    options.reduceOp = c10d::ReduceOp::MAX;
    backend_->allreduce(tensors, options)->wait();
  } catch (const std::exception& e) {
    throw_lost_rank(what, e);
  }
}

void Distributed::broadcast_from_main(torch::Tensor& tensor, const char* what) {
  std::vector<at::Tensor> tensors{tensor};
  try {
    backend_->broadcast(tensors, c10d::BroadcastOptions{})->wait();
  } catch (const std::exception& e) {
    throw_lost_rank(what, e);
  }
}

void Distributed::barrier(const char* what) {
  // A one-element all-reduce rather than c10d's barrier, which on NCCL guesses a device.
  auto token = torch::zeros({1}, torch::TensorOptions().device(device_));
  all_reduce_sum(token, what);
}

std::unique_ptr<Distributed::Pending> Distributed::start_all_reduce_sum(torch::Tensor& tensor) {
  std::vector<at::Tensor> tensors{tensor};
  return std::make_unique<Pending>(backend_->allreduce(tensors));
}

void Distributed::wait(Pending& pending, const char* what) {
  try {
    pending.work_->wait();
  } catch (const std::exception& e) {
    throw_lost_rank(what, e);
  }
}

// Parameters (by index into params_) whose gradients share one flat buffer for the all-reduce.
struct GradientSync::Bucket {
  std::vector<std::size_t> params;
  std::size_t ready = 0;  // gradients accumulated this step
  torch::Tensor flat;     // (sum of numel) while in flight
  std::unique_ptr<Distributed::Pending> pending;
};

namespace {

// Called by autograd once a parameter's .grad holds this backward's contribution.
class ReadyHook : public torch::autograd::PostAccumulateGradHook {
 public:
  explicit ReadyHook(std::function<void()> ready) : ready_(std::move(ready)) {}
  void operator()(const torch::autograd::Variable&) override { ready_(); }

 private:
  std::function<void()> ready_;
};

}  // namespace

GradientSync::GradientSync(Distributed& group, std::vector<torch::Tensor> params,
                           int64_t bucket_bytes)
    : group_(group), params_(std::move(params)), bucket_of_(params_.size()) {
  int64_t bytes = 0;
  for (std::size_t i = params_.size(); i-- > 0;) {
    const torch::Tensor& p = params_[i];
    const bool same_kind = !buckets_.empty() &&
                           params_[buckets_.back()->params.front()].dtype() == p.dtype() &&
                           params_[buckets_.back()->params.front()].device() == p.device();
    if (buckets_.empty() || !same_kind || bytes >= bucket_bytes) {
      buckets_.push_back(std::make_unique<Bucket>());
      bytes = 0;
    }
    buckets_.back()->params.push_back(i);
    bucket_of_[i] = buckets_.size() - 1;
    bytes += p.numel() * static_cast<int64_t>(p.element_size());
  }
  for (std::size_t i = 0; i < params_.size(); ++i)
    torch::autograd::impl::set_post_acc_grad_hooks(
        params_[i], std::make_unique<ReadyHook>([this, i] { on_gradient(i); }));
}

GradientSync::~GradientSync() {
  for (const auto& p : params_) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
}

void GradientSync::set_enabled(bool enabled) {
  enabled_ = enabled;
  if (!enabled) return;
  for (auto& bucket : buckets_) bucket->ready = 0;
  next_to_start_ = 0;
  started_in_backward_ = 0;
}

void GradientSync::on_gradient(std::size_t param) {
  if (!enabled_) return;
  Bucket& bucket = *buckets_[bucket_of_[param]];
  ++bucket.ready;
  if (bucket.ready == bucket.params.size()) start_ready_buckets();
}

void GradientSync::start_ready_buckets() {
  while (next_to_start_ < buckets_.size() &&
         buckets_[next_to_start_]->ready >= buckets_[next_to_start_]->params.size()) {
    start(*buckets_[next_to_start_++]);
    ++started_in_backward_;
  }
}

void GradientSync::start(Bucket& bucket) {
  std::vector<torch::Tensor> grads;
  for (std::size_t i : bucket.params) {
    const torch::Tensor& p = params_[i];
    grads.push_back(p.grad().defined() ? p.grad().reshape({-1}) : torch::zeros_like(p).view({-1}));
  }
  bucket.flat = torch::cat(grads);  // (sum of numel)
  bucket.pending = group_.start_all_reduce_sum(bucket.flat);
}

void GradientSync::finish() {
  const auto start_time = Clock::now();
  while (next_to_start_ < buckets_.size()) start(*buckets_[next_to_start_++]);
  torch::NoGradGuard no_grad;
  for (auto& bucket : buckets_) {
    group_.wait(*bucket->pending, "the gradient all-reduce");
    int64_t offset = 0;
    for (std::size_t i : bucket->params) {
      torch::Tensor& p = params_[i];
      torch::Tensor sum = bucket->flat.narrow(0, offset, p.numel()).view_as(p);
      if (p.grad().defined())
        p.mutable_grad().copy_(sum);
      else
        p.mutable_grad() = sum.clone();
      offset += p.numel();
    }
    bucket->flat = torch::Tensor();
    bucket->pending.reset();
  }
  enabled_ = false;
  wait_seconds_ = std::chrono::duration<double>(Clock::now() - start_time).count();
}

}  // namespace lmtune
