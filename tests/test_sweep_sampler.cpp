// Unit tests of the sweep's samplers (random, TPE) and of the successive-halving rule.
#include <algorithm>
#include <cmath>
#include <functional>
#include <set>

#include <gtest/gtest.h>

#include "lmtune/train/sweep_sampler.h"

using lmtune::Observation;
using lmtune::ParamKind;
using lmtune::SamplerKind;
using lmtune::SamplerOptions;
using lmtune::SearchParam;
using nlohmann::json;

namespace {

std::vector<SearchParam> lr_and_warmup() {
  SearchParam lr{"train.lr", ParamKind::kLogUniform, 1e-5, 1e-1, false, {}};
  SearchParam warmup{"train.warmup_steps", ParamKind::kInt, 0, 100, false, {}};
  SearchParam schedule{"train.schedule",
                       ParamKind::kChoice,
                       0,
                       0,
                       false,
                       {json("constant"), json("linear"), json("cosine")}};
  return {lr, warmup, schedule};
}

// Runs `trials` sequential trials of `objective` (lower is better) with the sampler, as a sweep
// does; returns the objective of each trial in order.
std::vector<double> run_study(const SamplerOptions& options, const std::vector<SearchParam>& space,
                              const std::function<double(const json&)>& objective, int trials) {
  std::vector<Observation> history;
  std::vector<double> values;
  for (int t = 1; t <= trials; ++t) {
    json params = lmtune::propose(options, space, history, t);
    const double value = objective(params);
    history.push_back({params, false, 0, value});
    values.push_back(value);
  }
  return values;
}

// A bowl in log10(lr) centred at 1e-3, with a smaller pull towards 50 warmup steps and the
// cosine schedule: the shape of a learning-rate sweep.
double bowl(const json& p) {
  const double x = std::log10(p.at("train.lr").get<double>()) + 3.0;
  const double w = (p.at("train.warmup_steps").get<double>() - 50.0) / 100.0;
  return x * x + w * w + (p.at("train.schedule") == "cosine" ? 0.0 : 0.5);
}

double mean(std::vector<double>::const_iterator begin, std::vector<double>::const_iterator end) {
  double sum = 0;
  for (auto it = begin; it != end; ++it) sum += *it;
  return sum / static_cast<double>(end - begin);
}

}  // namespace

TEST(SweepSampler, RandomProposalsStayInTheirSpaceAndCoverIt) {
  const auto space = lr_and_warmup();
  SamplerOptions options{SamplerKind::kRandom, 7, 10, 24};
  std::set<int64_t> warmups;
  std::set<std::string> schedules;
  int below_geometric_mean = 0;
  const int n = 2000;
  for (int t = 1; t <= n; ++t) {
    json p = lmtune::propose(options, space, {}, t);
    ASSERT_EQ(p.size(), 3u);
    const double lr = p.at("train.lr").get<double>();
    EXPECT_GE(lr, 1e-5);
    EXPECT_LE(lr, 1e-1);
    below_geometric_mean += lr < 1e-3;
    ASSERT_TRUE(p.at("train.warmup_steps").is_number_integer());
    const auto warmup = p.at("train.warmup_steps").get<int64_t>();
    EXPECT_GE(warmup, 0);
    EXPECT_LE(warmup, 100);
    warmups.insert(warmup);
    schedules.insert(p.at("train.schedule").get<std::string>());
  }
  // Log-uniform: half the draws below the geometric mean of the bounds (a uniform draw would
  // put 1% there).
  EXPECT_NEAR(below_geometric_mean / double(n), 0.5, 0.04);
  EXPECT_EQ(warmups.size(), 101u);  // both ends included
  EXPECT_EQ(schedules.size(), 3u);
}

TEST(SweepSampler, ProposalsAreAFunctionOfSeedTrialAndHistory) {
  const auto space = lr_and_warmup();
  SamplerOptions tpe{SamplerKind::kTpe, 3, 4, 24};
  std::vector<Observation> history;
  for (int t = 1; t <= 6; ++t)
    history.push_back({lmtune::propose(tpe, space, {}, t), false, 0, t * 0.1});
  EXPECT_EQ(lmtune::propose(tpe, space, history, 7), lmtune::propose(tpe, space, history, 7));
  EXPECT_NE(lmtune::propose(tpe, space, history, 7), lmtune::propose(tpe, space, history, 8));
  SamplerOptions other_seed = tpe;
  other_seed.seed = 4;
  EXPECT_NE(lmtune::propose(tpe, space, history, 7),
            lmtune::propose(other_seed, space, history, 7));
  // Another history changes TPE's proposal (random sampling ignores it).
  std::vector<Observation> reversed = history;
  for (auto& o : reversed) o.value = 1.0 - o.value;
  EXPECT_NE(lmtune::propose(tpe, space, history, 7), lmtune::propose(tpe, space, reversed, 7));
  SamplerOptions random{SamplerKind::kRandom, 3, 4, 24};
  EXPECT_EQ(lmtune::propose(random, space, history, 7),
            lmtune::propose(random, space, reversed, 7));
}

TEST(SweepSampler, TpeConcentratesNearTheOptimumWhereRandomDoesNot) {
  const auto space = lr_and_warmup();
  int tpe_wins = 0;
  double tpe_total = 0, random_total = 0;
  for (uint64_t seed = 0; seed < 6; ++seed) {
    const auto tpe = run_study({SamplerKind::kTpe, seed, 10, 24}, space, bowl, 50);
    const auto random = run_study({SamplerKind::kRandom, seed, 10, 24}, space, bowl, 50);
    // The first 10 trials are the same random start-up; what TPE proposes after is compared.
    EXPECT_EQ(std::vector<double>(tpe.begin(), tpe.begin() + 10),
              std::vector<double>(random.begin(), random.begin() + 10));
    const double tpe_late = mean(tpe.begin() + 30, tpe.end());
    const double random_late = mean(random.begin() + 30, random.end());
    tpe_wins += tpe_late < random_late;
    tpe_total += tpe_late;
    random_total += random_late;
  }
  EXPECT_GE(tpe_wins, 5) << "TPE's last 20 trials should beat random's for nearly every seed";
  EXPECT_LT(tpe_total, 0.5 * random_total);
}

TEST(SweepSampler, TpeFavoursTheChoiceOfTheBestTrials) {
  SearchParam choice{"lora.r", ParamKind::kChoice, 0, 0, false, {json(8), json(16), json(32)}};
  const auto values = run_study(
      {SamplerKind::kTpe, 1, 5, 24}, {choice},
      [](const json& p) { return p.at("lora.r") == 16 ? 0.0 : 1.0; }, 40);
  const auto late_hits =
      std::count_if(values.begin() + 20, values.end(), [](double v) { return v == 0.0; });
  EXPECT_GE(late_hits, 14) << "of the last 20 proposals, most should be the best choice";
}

TEST(SweepSampler, RankingPutsCompleteTrialsFirstThenDeeperPrunedOnes) {
  std::vector<Observation> history = {
      {json::object(), true, 1, 0.5},   // 0: pruned at its first rung, best value of all
      {json::object(), false, 0, 2.0},  // 1: complete
      {json::object(), true, 2, 1.5},   // 2: pruned one rung later
      {json::object(), false, 0, 1.0},  // 3: complete, best complete
      {json::object(), true, 2, 0.9},   // 4: pruned one rung later, better than 2
  };
  EXPECT_EQ(lmtune::rank_observations(history), (std::vector<std::size_t>{3, 1, 4, 2, 0}));
}

TEST(SweepSampler, SuccessiveHalvingKeepsTheBestThirdAtARung) {
  // Fewer values than the reduction factor: only a new best continues.
  EXPECT_TRUE(lmtune::promoted_at_rung(1.0, {}, 3));
  EXPECT_FALSE(lmtune::promoted_at_rung(1.2, {1.0}, 3));
  EXPECT_TRUE(lmtune::promoted_at_rung(0.8, {1.0}, 3));
  EXPECT_TRUE(lmtune::promoted_at_rung(1.0, {1.0}, 3));  // a tie with the best continues
  // Three values: the best one (floor(3/3) = 1).
  EXPECT_FALSE(lmtune::promoted_at_rung(1.1, {1.0, 2.0}, 3));
  EXPECT_TRUE(lmtune::promoted_at_rung(0.9, {1.0, 2.0}, 3));
  // Six values: the best two.
  const std::vector<double> five = {1.0, 2.0, 3.0, 4.0, 5.0};
  EXPECT_TRUE(lmtune::promoted_at_rung(1.5, five, 3));
  EXPECT_FALSE(lmtune::promoted_at_rung(2.5, five, 3));
  // Halving: the better half.
  EXPECT_TRUE(lmtune::promoted_at_rung(2.5, five, 2));
  EXPECT_FALSE(lmtune::promoted_at_rung(3.5, five, 2));
  // A non-finite loss never continues, and does not hold back others.
  EXPECT_FALSE(lmtune::promoted_at_rung(std::nan(""), {}, 3));
  EXPECT_TRUE(lmtune::promoted_at_rung(1.5, {std::nan(""), 1.0, std::nan(""), 2.0, 3.0}, 3));
}
