#include "parallel.h"

#include <pthread.h>

#include <atomic>
#include <cstdlib>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>

namespace hyp {

namespace {

// Pool threads beyond this are not started: a call then gets fewer helpers.
constexpr int kMaxPoolThreads = 256;

// One parallel_tasks call. Lives on the caller's stack; the pool refers to it only
// while it is in the open list or has helpers inside (both under the pool mutex).
struct Job {
  void (*body)(void*, int, int64_t) = nullptr;
  void* ctx = nullptr;
  int64_t ntasks = 0;
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  // Guarded by the pool mutex:
  int wanted = 0;  // helpers still wanted
  int joined = 0;  // helpers that joined: their participant ids are 1..joined
  int active = 0;  // helpers inside drain()
  std::exception_ptr error;
  std::condition_variable done;
};

class Pool {
 public:
  void run(int threads, int64_t ntasks, void (*body)(void*, int, int64_t), void* ctx);
  std::mutex& mutex() { return mu_; }

 private:
  void worker();
  void drain(Job& j, int participant);

  std::mutex mu_;
  std::condition_variable work_;
  std::deque<Job*> open_;  // jobs that still want helpers
  int started_ = 0;
  int starting_ = 0;  // started, not yet waiting for work
  int idle_ = 0;
};

void Pool::drain(Job& j, int participant) {
  for (;;) {
    if (j.failed.load(std::memory_order_relaxed)) return;
    const int64_t t = j.next.fetch_add(1, std::memory_order_relaxed);
    if (t >= j.ntasks) return;
    try {
      j.body(j.ctx, participant, t);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!j.error) j.error = std::current_exception();
      j.failed.store(true, std::memory_order_relaxed);
      return;
    }
  }
}

void Pool::worker() {
  std::unique_lock<std::mutex> lock(mu_);
  --starting_;
  for (;;) {
    while (open_.empty()) {
      ++idle_;
      work_.wait(lock);
      --idle_;
    }
    Job* j = open_.front();
    const int id = ++j->joined;
    if (--j->wanted == 0) open_.pop_front();
    ++j->active;
    lock.unlock();
    drain(*j, id);
    lock.lock();
    if (--j->active == 0) j->done.notify_one();
  }
}

void Pool::run(int threads, int64_t ntasks, void (*body)(void*, int, int64_t), void* ctx) {
  Job j;
  j.body = body;
  j.ctx = ctx;
  j.ntasks = ntasks;
  j.wanted = static_cast<int>(std::min<int64_t>(threads - 1, ntasks - 1));
  {
    std::lock_guard<std::mutex> lock(mu_);
    open_.push_back(&j);
    // Enough sleeping threads for this job's helpers, counting those other open jobs
    // already wait for.
    int waiting = 0;
    for (const Job* o : open_) waiting += o->wanted;
    for (int s = idle_ + starting_; s < waiting && started_ < kMaxPoolThreads; ++s) {
      try {
        std::thread([this] { worker(); }).detach();
      } catch (const std::system_error&) {  // no more threads: the call gets fewer helpers
        break;
      }
      ++started_;
      ++starting_;
    }
    for (int h = 0; h < j.wanted; ++h) work_.notify_one();
  }
  try {
    drain(j, 0);
  } catch (...) {  // drain catches the tasks' exceptions; nothing else throws
  }
  std::unique_lock<std::mutex> lock(mu_);
  for (auto it = open_.begin(); it != open_.end(); ++it)
    if (*it == &j) {
      open_.erase(it);
      break;
    }
  j.done.wait(lock, [&] { return j.active == 0; });
  if (j.error) std::rethrow_exception(j.error);
}

// The process's pool, made at first use. After fork() the child has only the forking
// thread: its copy of the pool (threads that do not exist, perhaps a locked mutex) is
// abandoned and a new one made at the child's first use. The parent holds the pool
// mutex across fork() so that the child never copies it in the middle of a change.
std::atomic<Pool*> g_pool{nullptr};
std::mutex g_pool_made;

void before_fork() {
  g_pool_made.lock();
  if (Pool* p = g_pool.load()) p->mutex().lock();
}
void after_fork_parent() {
  if (Pool* p = g_pool.load()) p->mutex().unlock();
  g_pool_made.unlock();
}
void after_fork_child() {
  g_pool.store(nullptr);  // the old one is leaked on purpose
  g_pool_made.unlock();
}

Pool& pool() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p) return *p;
  static const int hooked = pthread_atfork(before_fork, after_fork_parent, after_fork_child);
  (void)hooked;
  std::lock_guard<std::mutex> lock(g_pool_made);
  p = g_pool.load();
  if (!p) {
    p = new Pool();
    g_pool.store(p, std::memory_order_release);
  }
  return *p;
}

}  // namespace

double min_part_micros() {
  static const double v = [] {
    const char* e = std::getenv("HYPENCODER_HANDOFF_US");
    if (!e || !*e) return kMinPartMicros;
    char* end = nullptr;
    const double x = std::strtod(e, &end);
    return (end && *end == 0 && x >= 0 && x < 1e9) ? x : kMinPartMicros;
  }();
  return v;
}

void run_tasks(int threads, int64_t ntasks, void (*body)(void*, int, int64_t), void* ctx) {
  pool().run(threads, ntasks, body, ctx);
}

}  // namespace hyp
