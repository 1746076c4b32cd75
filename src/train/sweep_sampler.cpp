#include "lmtune/train/sweep_sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace lmtune {
namespace {

using nlohmann::json;

// A small generator whose stream is fixed by its seed on every platform (the standard library's
// distributions are not), so a sweep proposes the same trials on any machine.
class Rng {
 public:
  Rng(uint64_t seed, int64_t trial)
      : state_(mix(seed) ^ mix(0x5eedULL + static_cast<uint64_t>(trial))) {}

  uint64_t next() {
    state_ += 0x9E3779B97F4A7C15ULL;
    return mix(state_);
  }
  // Uniform in [0, 1).
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  double normal() {
    const double u1 = 1.0 - uniform();  // (0, 1]
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
  }
  std::size_t below(std::size_t n) { return static_cast<std::size_t>(uniform() * n) % n; }

 private:
  static uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  uint64_t state_;
};

// ---------------------------------------------------------------------------------------------
// Numeric parameters live in an internal space where they are sampled uniformly: the logarithm
// for log scales, and for integers an interval widened by half a unit at each end, so that every
// integer gets the same share of it.

struct Interval {
  double lo = 0;
  double hi = 0;
};

Interval internal_bounds(const SearchParam& p) {
  double lo = p.low, hi = p.high;
  if (p.kind == ParamKind::kInt) lo -= 0.5, hi += 0.5;
  const bool log = p.kind == ParamKind::kLogUniform || (p.kind == ParamKind::kInt && p.log);
  return log ? Interval{std::log(lo), std::log(hi)} : Interval{lo, hi};
}

bool log_scale(const SearchParam& p) {
  return p.kind == ParamKind::kLogUniform || (p.kind == ParamKind::kInt && p.log);
}

double to_internal(const SearchParam& p, double value) {
  return log_scale(p) ? std::log(value) : value;
}

json from_internal(const SearchParam& p, double u) {
  double value = log_scale(p) ? std::exp(u) : u;
  if (p.kind == ParamKind::kInt)
    return static_cast<int64_t>(std::clamp(std::round(value), p.low, p.high));
  return std::clamp(value, p.low, p.high);
}

json random_value(const SearchParam& p, Rng& rng) {
  if (p.kind == ParamKind::kChoice) return p.values[rng.below(p.values.size())];
  const Interval range = internal_bounds(p);
  return from_internal(p, range.lo + (range.hi - range.lo) * rng.uniform());
}

// ---------------------------------------------------------------------------------------------
// Parzen estimators: a mixture of normals truncated to the interval, one per observation plus a
// broad prior at the centre (Optuna's univariate TPE with its default bandwidths).

// Weights of observations in trial order: equal for the newest 25, ramping down linearly for older
// ones.
std::vector<double> observation_weights(std::size_t n) {
  constexpr std::size_t kFlat = 25;
  std::vector<double> weights(n, 1.0);
  if (n <= kFlat) return weights;
  const std::size_t ramp = n - kFlat;
  for (std::size_t i = 0; i < ramp; ++i)
    weights[i] = 1.0 / static_cast<double>(n) +
                 (1.0 - 1.0 / static_cast<double>(n)) * static_cast<double>(i) /
                     static_cast<double>(std::max<std::size_t>(ramp - 1, 1));
  return weights;
}

constexpr double kPriorWeight = 1.0;

struct Mixture {
  Interval range;
  std::vector<double> mu, sigma, weight;  // weights sum to 1
};

Mixture fit_mixture(const std::vector<double>& observed, Interval range) {
  Mixture m;
  m.range = range;
  const double width = range.hi - range.lo;
  m.mu = observed;
  m.weight = observation_weights(observed.size());
  m.mu.push_back(0.5 * (range.lo + range.hi));  // the prior
  m.weight.push_back(kPriorWeight);
  const std::size_t n = m.mu.size();

  // Each bandwidth is the larger gap to its neighbours in sorted order; at either end only the
  // inner gap counts. The prior spans the whole interval.
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return m.mu[a] < m.mu[b]; });
  m.sigma.assign(n, width);
  if (n >= 2) {
    for (std::size_t i = 0; i < n; ++i) {
      const double left = i > 0 ? m.mu[order[i]] - m.mu[order[i - 1]] : 0.0;
      const double right = i + 1 < n ? m.mu[order[i + 1]] - m.mu[order[i]] : 0.0;
      m.sigma[order[i]] = std::max(left, right);
    }
  }
  m.sigma.back() = width;
  const double min_sigma = width / std::min(100.0, 1.0 + static_cast<double>(n));
  for (double& s : m.sigma) s = std::clamp(s, min_sigma, width);

  const double total = std::accumulate(m.weight.begin(), m.weight.end(), 0.0);
  for (double& w : m.weight) w /= total;
  return m;
}

double normal_cdf(double z) {
  return 0.5 * std::erfc(-z / std::sqrt(2.0));
}

double log_density(const Mixture& m, double x) {
  double best = -std::numeric_limits<double>::infinity();
  std::vector<double> terms(m.mu.size());
  for (std::size_t i = 0; i < m.mu.size(); ++i) {
    const double s = m.sigma[i];
    const double z = (x - m.mu[i]) / s;
    const double mass = std::max(
        normal_cdf((m.range.hi - m.mu[i]) / s) - normal_cdf((m.range.lo - m.mu[i]) / s), 1e-300);
    terms[i] = std::log(m.weight[i]) - 0.5 * z * z - std::log(s * std::sqrt(2.0 * M_PI) * mass);
    best = std::max(best, terms[i]);
  }
  double sum = 0;
  for (double t : terms) sum += std::exp(t - best);
  return best + std::log(sum);
}

double sample_mixture(const Mixture& m, Rng& rng) {
  double pick = rng.uniform();
  std::size_t i = 0;
  while (i + 1 < m.weight.size() && pick >= m.weight[i]) pick -= m.weight[i++];
  // Rejection from the component's normal; every component's centre lies in the interval and its
  // bandwidth is at most the interval, so a draw lands inside about a third of the time or more.
  for (int attempt = 0; attempt < 100; ++attempt) {
    const double x = m.mu[i] + m.sigma[i] * rng.normal();
    if (x >= m.range.lo && x <= m.range.hi) return x;
  }
  return std::clamp(m.mu[i], m.range.lo, m.range.hi);
}

// Categorical estimator: observed counts (weighted as above) plus a prior spread evenly.
std::vector<double> category_probabilities(const SearchParam& p,
                                           const std::vector<json>& observed) {
  const std::vector<double> weights = observation_weights(observed.size());
  const double k = static_cast<double>(p.values.size());
  std::vector<double> prob(p.values.size(), kPriorWeight / k);
  for (std::size_t j = 0; j < observed.size(); ++j)
    for (std::size_t c = 0; c < p.values.size(); ++c)
      if (p.values[c] == observed[j]) prob[c] += weights[j];
  const double total = std::accumulate(prob.begin(), prob.end(), 0.0);
  for (double& q : prob) q /= total;
  return prob;
}

std::size_t sample_category(const std::vector<double>& prob, Rng& rng) {
  double pick = rng.uniform();
  std::size_t c = 0;
  while (c + 1 < prob.size() && pick >= prob[c]) pick -= prob[c++];
  return c;
}

// The values of `key` in the observations `which` (in trial order), those that have it.
std::vector<json> observed_values(const std::vector<Observation>& history,
                                  const std::vector<std::size_t>& which, const std::string& key) {
  std::vector<json> values;
  for (std::size_t i : which)
    if (auto it = history[i].params.find(key); it != history[i].params.end()) values.push_back(*it);
  return values;
}

// TPE for one parameter: draws candidates from the good trials' density l and keeps the one
// with the highest l(x) / g(x), g being the other trials' density.
json tpe_value(const SearchParam& p, const std::vector<json>& good, const std::vector<json>& bad,
               int64_t candidates, Rng& rng) {
  if (p.kind == ParamKind::kChoice) {
    const std::vector<double> l = category_probabilities(p, good);
    const std::vector<double> g = category_probabilities(p, bad);
    std::size_t best = 0;
    double best_score = -std::numeric_limits<double>::infinity();
    for (int64_t i = 0; i < candidates; ++i) {
      const std::size_t c = sample_category(l, rng);
      const double score = std::log(l[c]) - std::log(g[c]);
      if (score > best_score) best = c, best_score = score;
    }
    return p.values[best];
  }
  const Interval range = internal_bounds(p);
  auto internal = [&](const std::vector<json>& values) {
    std::vector<double> out;
    for (const auto& v : values)
      if (v.is_number())
        out.push_back(std::clamp(to_internal(p, v.get<double>()), range.lo, range.hi));
    return out;
  };
  const Mixture l = fit_mixture(internal(good), range);
  const Mixture g = fit_mixture(internal(bad), range);
  double best = l.mu.back();
  double best_score = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < candidates; ++i) {
    const double x = sample_mixture(l, rng);
    const double score = log_density(l, x) - log_density(g, x);
    if (score > best_score) best = x, best_score = score;
  }
  return from_internal(p, best);
}

double finite_or_worst(double value) {
  return std::isfinite(value) ? value : std::numeric_limits<double>::infinity();
}

}  // namespace

std::vector<std::size_t> rank_observations(const std::vector<Observation>& history) {
  std::vector<std::size_t> order(history.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    const Observation& x = history[a];
    const Observation& y = history[b];
    if (x.pruned != y.pruned) return !x.pruned;
    if (x.pruned && x.rungs != y.rungs) return x.rungs > y.rungs;
    return finite_or_worst(x.value) < finite_or_worst(y.value);
  });
  return order;
}

json propose(const SamplerOptions& options, const std::vector<SearchParam>& space,
             const std::vector<Observation>& history, int64_t trial) {
  Rng rng(options.seed, trial);
  json params = json::object();
  const auto n = static_cast<int64_t>(history.size());
  if (options.kind == SamplerKind::kRandom || n == 0 || n < options.startup_trials) {
    for (const auto& p : space) params[p.key] = random_value(p, rng);
    return params;
  }
  // Optuna's default split: the best ceil(n / 10) trials, at most 25, are the good ones.
  const std::vector<std::size_t> ranked = rank_observations(history);
  const auto n_good = static_cast<std::size_t>(std::min<int64_t>((n + 9) / 10, 25));
  std::vector<std::size_t> good(ranked.begin(), ranked.begin() + n_good);
  std::vector<std::size_t> bad(ranked.begin() + n_good, ranked.end());
  std::sort(good.begin(), good.end());  // trial order, for the weights
  std::sort(bad.begin(), bad.end());
  for (const auto& p : space)
    params[p.key] = tpe_value(p, observed_values(history, good, p.key),
                              observed_values(history, bad, p.key), options.candidates, rng);
  return params;
}

bool promoted_at_rung(double value, const std::vector<double>& others, int64_t reduction_factor) {
  if (!std::isfinite(value)) return false;
  std::vector<double> all;
  for (double v : others) all.push_back(finite_or_worst(v));
  all.push_back(value);
  std::sort(all.begin(), all.end());
  const std::size_t kept = all.size() / static_cast<std::size_t>(reduction_factor);
  return value <= all[kept == 0 ? 0 : kept - 1];
}

}  // namespace lmtune
