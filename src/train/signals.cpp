#include "lmtune/train/signals.h"

#include <unistd.h>

#include <atomic>

#include "lmtune/core/errors.h"

namespace lmtune {
namespace {

std::atomic<int> g_stop_signal{0};

void on_stop_signal(int signal) {
  int expected = 0;
  if (!g_stop_signal.compare_exchange_strong(expected, signal)) {
    // Second signal: the user does not want to wait for the checkpoint.
    static const char kMessage[] = "\nlmtune: second signal, exiting without saving\n";
    (void)!::write(STDERR_FILENO, kMessage, sizeof(kMessage) - 1);
    ::_exit(kExitInterrupted);
  }
  static const char kMessage[] =
      "\nlmtune: stopping after this step and saving a checkpoint (signal again to exit at once)\n";
  (void)!::write(STDERR_FILENO, kMessage, sizeof(kMessage) - 1);
}

}  // namespace

StopSignals::StopSignals() {
  g_stop_signal = 0;
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  ::sigaction(SIGINT, &action, &previous_int_);
  ::sigaction(SIGTERM, &action, &previous_term_);
}

StopSignals::~StopSignals() {
  ::sigaction(SIGINT, &previous_int_, nullptr);
  ::sigaction(SIGTERM, &previous_term_, nullptr);
}

int StopSignals::received() const {
  return g_stop_signal.load();
}

}  // namespace lmtune
