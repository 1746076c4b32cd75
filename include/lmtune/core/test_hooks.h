// Crash points for tests: the process kills itself (SIGKILL, as a power cut would) at a named
// phase of a chosen step, so tests can prove that resuming from any moment is exact. Inert unless
// LMTUNE_TEST_KILL_AT is set; lmtune never sets it.
#pragma once

#include <cstdint>
#include <string_view>

namespace lmtune {

// LMTUNE_TEST_KILL_AT=PHASE:STEP[,PHASE:STEP...] raises SIGKILL when the process reaches `phase`
// at optimizer step `step` (STEP `*`: at any step). The phases and where they are
// (docs/checkpoints.md):
//   step       right after the optimizer step `step`, before it is logged, evaluated or saved
//   eval       after the evaluation at `step` is written to metrics.jsonl, before anything else
//   save       halfway through writing checkpoint `step` (its weights written, the rest not)
//   rename     right after checkpoint `step` is renamed into place, before anything else
//   retention  after retention removed its first old checkpoint, following checkpoint `step`
//   resume     once a resume restored the state of checkpoint `step`, before its first step
void kill_here_if_testing(std::string_view phase, int64_t step);

}  // namespace lmtune
