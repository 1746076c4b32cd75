// Unit tests of the chunked distillation terms against the same formula on whole logits.
#include <gtest/gtest.h>

#include "lmtune/model/distill_loss.h"

namespace {

// (2): the CE and KL sums over rows with a target, from full logits, with PyTorch's kl_div.
torch::Tensor whole_logits_distill_terms(const torch::Tensor& hidden, const torch::Tensor& weight,
                                         const torch::Tensor& teacher_hidden,
                                         const torch::Tensor& teacher_weight,
                                         const torch::Tensor& targets, double t, bool reverse) {
  namespace F = torch::nn::functional;
  auto logits = torch::linear(hidden, weight);                          // (N, V)
  auto teacher_logits = torch::linear(teacher_hidden, teacher_weight);  // (N, V)
  auto ce = F::cross_entropy(
      logits, targets, F::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kSum));
  auto log_q = torch::log_softmax(logits / t, -1),
       log_p = torch::log_softmax(teacher_logits / t, -1);
  auto options = F::KLDivFuncOptions().reduction(torch::kNone).log_target(true);
  auto per_row = (reverse ? F::kl_div(log_p, log_q, options) : F::kl_div(log_q, log_p, options))
                     .sum(-1);  // (N)
  return torch::stack({ce, per_row.index({targets.ne(-100)}).sum()});
}

struct DistillInputs {
  torch::Tensor hidden = torch::randn({23, 8}, torch::requires_grad());  // (N, C)
  torch::Tensor weight = torch::randn({30, 8}, torch::requires_grad());  // (V, C)
  torch::Tensor teacher_hidden = torch::randn({23, 12});                 // (N, C')
  torch::Tensor teacher_weight = torch::randn({30, 12});                 // (V, C')
  torch::Tensor targets = torch::randint(30, {23}, torch::kLong);        // (N)
  DistillInputs() { targets.narrow(0, 3, 5).fill_(-100); }
};

TEST(DistillLoss, ChunkedTermsAndGradientsEqualTheWholeLogitsFormulaInBothDirections) {
  torch::manual_seed(0);
  DistillInputs in;
  for (bool reverse : {false, true}) {
    auto expected = whole_logits_distill_terms(in.hidden, in.weight, in.teacher_hidden,
                                               in.teacher_weight, in.targets, 2.0, reverse);
    auto scale = torch::tensor({0.3f, 2.8f});  // (1 - alpha), alpha T^2
    auto expected_grads = torch::autograd::grad({(expected * scale).sum()}, {in.hidden, in.weight});
    auto terms = lmtune::chunked_distill_terms(in.hidden, in.weight, in.teacher_hidden,
                                               in.teacher_weight, in.targets,
                                               {/*temperature=*/2.0, reverse}, /*chunk_tokens=*/5);
    EXPECT_TRUE(torch::allclose(terms, expected, 1e-5, 1e-5)) << reverse;
    EXPECT_GT(terms[1].item<double>(), 0) << reverse;
    auto grads = torch::autograd::grad({(terms * scale).sum()}, {in.hidden, in.weight});
    EXPECT_TRUE(torch::allclose(grads[0], expected_grads[0], 1e-5, 1e-6)) << reverse;
    EXPECT_TRUE(torch::allclose(grads[1], expected_grads[1], 1e-5, 1e-6)) << reverse;
  }
}

TEST(DistillLoss, AStudentEqualToItsTeacherHasNoKlAndMaskedRowsCountInNeitherTerm) {
  torch::manual_seed(1);
  DistillInputs in;
  auto terms = lmtune::chunked_distill_terms(in.hidden, in.weight, in.hidden, in.weight, in.targets,
                                             {}, /*chunk_tokens=*/4);
  EXPECT_NEAR(terms[1].item<double>(), 0.0, 1e-5);
  auto all_masked = torch::full({23}, -100, torch::kLong);
  auto none = lmtune::chunked_distill_terms(in.hidden, in.weight, in.teacher_hidden,
                                            in.teacher_weight, all_masked, {}, 4);
  EXPECT_EQ(none[0].item<double>(), 0.0);
  EXPECT_EQ(none[1].item<double>(), 0.0);
}

TEST(DistillLoss, AFrozenOutputWeightGetsNoGradient) {
  torch::manual_seed(2);
  DistillInputs in;
  auto frozen = in.weight.detach();
  auto terms = lmtune::chunked_distill_terms(in.hidden, frozen, in.teacher_hidden,
                                             in.teacher_weight, in.targets, {}, 6);
  terms.sum().backward();
  EXPECT_TRUE(in.hidden.grad().defined());
  EXPECT_FALSE(frozen.grad().defined());
}

}  // namespace
