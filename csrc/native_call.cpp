#include "native_call.h"

#include <pthread.h>

#include <condition_variable>
#include <mutex>

#include "cpu/isa.h"

namespace hyp {

namespace {

std::mutex g_mu;
std::condition_variable g_cv;
int g_in_flight = 0;
bool g_switching = false;

// fork() copies only the forking thread: the child starts with no call in flight and a
// mutex that no other thread held at the moment of the copy.
void before_fork() { g_mu.lock(); }
void after_fork_parent() { g_mu.unlock(); }
void after_fork_child() {
  g_in_flight = 0;
  g_switching = false;
  g_mu.unlock();
}
[[maybe_unused]] const int g_fork_hooks = pthread_atfork(before_fork, after_fork_parent, after_fork_child);

}  // namespace

IsaUse::IsaUse() {
  std::unique_lock<std::mutex> lock(g_mu);
  g_cv.wait(lock, [] { return !g_switching; });
  ++g_in_flight;
}

IsaUse::~IsaUse() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (--g_in_flight == 0) g_cv.notify_all();
}

void set_isa_between_calls(const std::string& name) {
  std::unique_lock<std::mutex> lock(g_mu);
  g_cv.wait(lock, [] { return !g_switching; });
  g_switching = true;  // new calls wait from here on
  g_cv.wait(lock, [] { return g_in_flight == 0; });
  try {
    set_active_isa(name);
  } catch (...) {
    g_switching = false;
    g_cv.notify_all();
    throw;
  }
  g_switching = false;
  g_cv.notify_all();
}

}  // namespace hyp
