// The search side of `lmtune sweep`: the search space, the samplers that propose a trial's
// hyperparameters (random, and the tree-structured Parzen estimator with Optuna's defaults), and
// the rule of asynchronous successive halving that stops poor trials at rungs. Pure functions of
// their inputs: a sweep replays the same proposals after a resume.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace lmtune {

enum class ParamKind { kLogUniform, kUniform, kInt, kChoice };

// One dimension of the search space: a dotted config key and the values it may take.
struct SearchParam {
  std::string key;  // "train.lr"
  ParamKind kind = ParamKind::kUniform;
  double low = 0;  // kLogUniform, kUniform, kInt: the bounds, both included
  double high = 0;
  bool log = false;                    // kInt: sampled on a log scale (low >= 1)
  std::vector<nlohmann::json> values;  // kChoice
};

// A finished trial as the samplers see it.
struct Observation {
  nlohmann::json params;  // an object: key -> value
  bool pruned = false;
  int64_t rungs = 0;  // pruned: the rungs it reached (it was stopped at the last of them)
  double value = 0;   // complete: the final eval loss; pruned: its eval loss at its last rung
};

enum class SamplerKind { kRandom, kTpe };

struct SamplerOptions {
  SamplerKind kind = SamplerKind::kTpe;
  uint64_t seed = 0;
  int64_t startup_trials = 10;  // TPE: random proposals until this many trials finished
  int64_t candidates = 24;      // TPE: draws from the good trials' density scored per proposal
};

// The hyperparameters of trial number `trial` (an object key -> value, in `space`'s order), from
// the trials that finished before it (complete or pruned; failed ones are left out by the
// caller). The same inputs always give the same proposal.
nlohmann::json propose(const SamplerOptions& options, const std::vector<SearchParam>& space,
                       const std::vector<Observation>& history, int64_t trial);

// Observations ranked best first, as TPE splits them: complete trials by value, then pruned ones,
// those that reached more rungs first, each group by value. Returns indices into `history`.
std::vector<std::size_t> rank_observations(const std::vector<Observation>& history);

// Asynchronous successive halving (Optuna's SuccessiveHalvingPruner, minimum early-stopping rate
// 0): a trial continues past a rung when its value there is among the best
// floor(n / reduction_factor) of the n values recorded at that rung, its own included; while that
// is none, only when it is the best so far.
bool promoted_at_rung(double value, const std::vector<double>& others, int64_t reduction_factor);

}  // namespace lmtune
