// Data-parallel training on PyTorch's c10d: torchrun's environment, the process group (Gloo on
// CPUs, NCCL on GPUs) and gradients all-reduced in buckets while backward still runs.
// Never reads or writes files: which rank writes the run directory is the trainer's business.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace c10d {
class Backend;
class Store;
}  // namespace c10d

namespace lmtune {

// What torchrun (or a SLURM script that sets the same variables) tells each worker.
struct TorchrunEnv {
  int64_t rank = 0;
  int64_t local_rank = 0;
  int64_t world_size = 1;
  int64_t local_world_size = 1;
  std::string master_addr;
  int64_t master_port = 0;
  bool agent_store = false;   // TORCHELASTIC_USE_AGENT_STORE: join torchrun's own store
  int64_t restart_count = 0;  // TORCHELASTIC_RESTART_COUNT: > 0 in a restarted worker group
};

// The environment of a torchrun worker; nullopt when WORLD_SIZE is unset (a plain `lmtune train`).
// Throws UsageError naming the variable when one is missing or malformed.
std::optional<TorchrunEnv> torchrun_env();

// One process group for the run: every rank calls the collectives in the same order.
class Distributed {
 public:
  // Joins the group (blocks until every rank has joined, at most `timeout`). A collective that
  // waits longer than `timeout` for another rank (dead or hung) throws Error.
  Distributed(const TorchrunEnv& env, torch::Device device, std::chrono::seconds timeout);
  ~Distributed();
  Distributed(const Distributed&) = delete;
  Distributed& operator=(const Distributed&) = delete;

  int64_t rank() const { return env_.rank; }
  int64_t world_size() const { return env_.world_size; }
  bool is_main() const { return env_.rank == 0; }
  const TorchrunEnv& env() const { return env_; }
  const std::string& backend_name() const { return backend_name_; }

  // In place, blocking; `what` names the collective in the error a lost rank causes.
  void all_reduce_sum(torch::Tensor& tensor, const char* what);
  void all_reduce_max(torch::Tensor& tensor, const char* what);
  void broadcast_from_main(torch::Tensor& tensor, const char* what);
  void barrier(const char* what);

  // Started now, waited for by wait(); used by GradientSync for its buckets.
  class Pending;
  std::unique_ptr<Pending> start_all_reduce_sum(torch::Tensor& tensor);
  void wait(Pending& pending, const char* what);

 private:
  TorchrunEnv env_;
  torch::Device device_;
  std::chrono::seconds timeout_;
  std::string backend_name_;
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::Backend> backend_;
};

// Sums the gradients of `params` over the ranks. Hooks on each parameter's gradient accumulation
// collect parameters into buckets of about `bucket_bytes` (in reverse order of `params`, which is
// roughly the order backward produces them); a bucket is all-reduced as soon as its last gradient
// is in, while backward goes on with earlier layers. Buckets start strictly in order, so every rank
// issues the same collectives in the same sequence.
class GradientSync {
 public:
  GradientSync(Distributed& group, std::vector<torch::Tensor> params, int64_t bucket_bytes);
  ~GradientSync();
  GradientSync(const GradientSync&) = delete;
  GradientSync& operator=(const GradientSync&) = delete;

  // Only a step's last micro-batch communicates: earlier ones just accumulate locally.
  void set_enabled(bool enabled);
  // After backward: starts the buckets backward did not complete (parameters without a gradient
  // this step count as zeros), waits for all, and writes the sums into the gradients.
  void finish();

  int64_t buckets() const { return static_cast<int64_t>(buckets_.size()); }
  // Of the last finish(): buckets started by hooks during backward, and seconds spent waiting.
  int64_t started_in_backward() const { return started_in_backward_; }
  double wait_seconds() const { return wait_seconds_; }

 private:
  struct Bucket;
  void on_gradient(std::size_t param);
  void start_ready_buckets();
  void start(Bucket& bucket);

  Distributed& group_;
  std::vector<torch::Tensor> params_;
  std::vector<std::unique_ptr<Bucket>> buckets_;
  std::vector<std::size_t> bucket_of_;  // per parameter
  std::size_t next_to_start_ = 0;
  bool enabled_ = false;
  int64_t started_in_backward_ = 0;
  double wait_seconds_ = 0;
};

}  // namespace lmtune
