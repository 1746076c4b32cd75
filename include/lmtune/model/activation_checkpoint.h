// Activation checkpointing: runs a function of one tensor without keeping its intermediate
// activations, and runs it again in backward to get its gradients. Training only.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include <torch/torch.h>

namespace lmtune {

// A differentiable function of one activation, e.g. a transformer block (B, T, C) -> (B, T, C).
using ActivationFn = std::function<torch::Tensor(const torch::Tensor&)>;

// fn(x), keeping only x. Backward reruns fn with the random generators (CPU, and x's CUDA device)
// and the autocast state as they were in forward, so dropout masks and precisions repeat and the
// gradients are the plain run's. `params` are the tensors fn reads besides x (the block's
// parameters): those that require grad receive their gradients through this node.
torch::Tensor checkpoint_activation(const ActivationFn& fn, const torch::Tensor& x,
                                    const std::vector<torch::Tensor>& params);

// How many times this process has rerun a function in backward (one per checkpointed block and
// micro-batch): what the trainer logs at the end of a run, and what tests count.
int64_t activation_recomputations();

}  // namespace lmtune
