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

void on_signal_during_setup(int) {
  static const char kMessage[] =
      "\nlmtune error: interrupted while setting up the run, before any step: nothing new was "
      "saved; run the same command again\n";
  (void)!::write(STDERR_FILENO, kMessage, sizeof(kMessage) - 1);
  ::_exit(kExitInterrupted);
}

void install(void (*handler)(int), struct sigaction* previous_int,
             struct sigaction* previous_term) {
  struct sigaction action {};
  action.sa_handler = handler;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  ::sigaction(SIGINT, &action, previous_int);
  ::sigaction(SIGTERM, &action, previous_term);
}

void restore(const struct sigaction& previous_int, const struct sigaction& previous_term) {
  ::sigaction(SIGINT, &previous_int, nullptr);
  ::sigaction(SIGTERM, &previous_term, nullptr);
}

}  // namespace

StopSignals::StopSignals() {
  g_stop_signal = 0;
  install(on_stop_signal, &previous_int_, &previous_term_);
}

StopSignals::~StopSignals() {
  restore(previous_int_, previous_term_);
}

ExitOnSignal::ExitOnSignal() {
  install(on_signal_during_setup, &previous_int_, &previous_term_);
}

ExitOnSignal::~ExitOnSignal() {
  restore(previous_int_, previous_term_);
}

int StopSignals::received() const {
  return g_stop_signal.load();
}

}  // namespace lmtune
