// SIGINT/SIGTERM: while a run is set up, they exit at once (nothing to save yet); during training,
// the first asks the loop to save and stop, a second exits at once.
#pragma once

#include <csignal>

namespace lmtune {

// Installs the handlers for its lifetime and restores the previous ones after.
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // The signal that asked to stop (SIGINT or SIGTERM), or 0.
  int received() const;

 private:
  struct sigaction previous_int_ {};
  struct sigaction previous_term_ {};
};

// For the setup of a run (loading the model, preparing the data): a signal exits at once with 130
// and one line saying nothing was saved. Installs the handlers for its lifetime.
class ExitOnSignal {
 public:
  ExitOnSignal();
  ~ExitOnSignal();
  ExitOnSignal(const ExitOnSignal&) = delete;
  ExitOnSignal& operator=(const ExitOnSignal&) = delete;

 private:
  struct sigaction previous_int_ {};
  struct sigaction previous_term_ {};
};

}  // namespace lmtune
