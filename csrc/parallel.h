// The engine's threads: a persistent pool of helper threads that sleep on a condition
// variable (no spinning), shared by every native call and every calling thread, and
// rebuilt after fork() in the child (the parent's threads do not exist there).
//
// parallel_tasks(threads, n, fn) runs fn(participant, task) for every task in [0, n):
// the calling thread is participant 0 and works from the start; up to threads - 1 idle
// pool threads join as participants 1, 2, ... Tasks are claimed one at a time from a
// shared counter in increasing order, so a participant sees its tasks in increasing
// order, and a helper that is slow to wake up (its core busy with another process) only
// takes what the others have not yet taken: the call waits for a helper only while that
// helper runs a task it already claimed. With no idle pool thread (other calls use them
// all) the caller runs every task itself. An exception thrown by a task stops the
// hand-out of further tasks and is rethrown to the caller once every participant is out.
//
// Hand-off threshold. Waking a helper costs tens of microseconds on a quiet machine, and
// on a loaded one the helper may sit preempted in the middle of the task it took while
// the caller waits for it. Work is therefore handed to helpers only in parts of at least
// kMinPartMicros of estimated work; callers convert their items to that unit with
// the per-item costs below (measured on Zen 4 at one thread, see bench/RESULTS.md,
// section "Serving"). Smaller calls, among them every step of a batch-1 graph search
// over a corpus of up to some 100K documents, run on the calling thread alone.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

namespace hyp {

// Estimated work, in microseconds of one core, below which a part is not handed off
// (HYPENCODER_HANDOFF_US overrides it, read once: for measuring the threshold).
constexpr double kMinPartMicros = 400.0;
double min_part_micros();

// One-core costs, in microseconds per item, that callers size parts with (measured on
// Zen 4 with AVX-512 by bench/bench_handoff.py; slower CPUs split a little more often).
constexpr double kMicrosPerFlop = 1.0 / 90e3;      // fused q-net kernel, ~90 GFLOP/s
constexpr double kMicrosPerRowByte = 1.0 / 16e3;   // x . w over stored rows, ~16 GB/s
// x . w over rows read at random from a corpus beyond the last-level cache (every row a
// DRAM and TLB miss): ~5 GB/s, 16,384 rows of 1.5 KB at 1M x 768 bf16.
constexpr double kMicrosPerRandomRowByte = 1.0 / 5e3;
constexpr int64_t kCachedCorpusBytes = int64_t(64) << 20;
constexpr double kMicrosPerCodeByte = 1.0 / 11e3;  // 4-bit table scan and its top list, ~11 GB/s
constexpr double kMicrosPerPackByte = 1.0 / 4e3;   // packing q-net weights, bytes read + written

// Parts of min_part_micros() that `micros` of work makes (any number when it is 0).
inline double parts_of(double micros) {
  const double limit = min_part_micros();
  return limit > 0 ? micros / limit : 1e18;
}

// Participants worth `micros` of estimated work in all: one per min_part_micros(), at
// most `threads`, at least one.
inline int threads_worth(int threads, double micros) {
  return static_cast<int>(std::max(1.0, std::min<double>(threads, parts_of(micros))));
}

// How a call of `items` items costing `item_micros` each is split: `tasks` parts (equal,
// or the caller's fixed chunks) on `threads` participants. One part on the calling thread
// unless every part holds min_part_micros() of work and at least `min_items` items; at
// most 4 parts per thread, so that a helper that stalls holds up little of the call.
struct Parts {
  int threads = 1;
  int64_t tasks = 1;
};
inline Parts plan_parts(int threads, int64_t items, double item_micros, int64_t min_items = 1) {
  if (threads <= 1 || items < 2 * std::max<int64_t>(1, min_items)) return {};
  const double by_work = parts_of(static_cast<double>(items) * item_micros);
  int64_t tasks = static_cast<int64_t>(
      std::min<double>({by_work, static_cast<double>(items / std::max<int64_t>(1, min_items)), 4.0 * threads}));
  if (tasks < 2) return {};
  // Equal parts in a multiple of the threads: 3 parts on 2 threads leave one thread a
  // third of the call idle at the end.
  if (tasks > threads) tasks -= tasks % threads;
  return {static_cast<int>(std::min<int64_t>(threads, tasks)), tasks};
}

// Runs body(ctx, participant, task) for every task in [0, ntasks) on up to `threads`
// participants (see above). Throws what a task threw.
void run_tasks(int threads, int64_t ntasks, void (*body)(void*, int, int64_t), void* ctx);

template <class F>
void parallel_tasks(int threads, int64_t ntasks, F&& fn) {
  if (ntasks <= 0) return;
  if (threads <= 1 || ntasks == 1) {
    for (int64_t t = 0; t < ntasks; ++t) fn(0, t);
    return;
  }
  using Fn = typename std::remove_reference<F>::type;
  run_tasks(static_cast<int>(std::min<int64_t>(threads, ntasks)), ntasks,
            [](void* c, int p, int64_t t) { (*static_cast<Fn*>(c))(p, t); }, &fn);
}

// One state per participant of a parallel_tasks call, made by init() the first time that
// participant needs it (on the participant's own thread).
template <class S>
class PerParticipant {
 public:
  explicit PerParticipant(int threads) : s_(static_cast<size_t>(std::max(1, threads))) {}
  template <class Init>
  S& get(int p, Init& init) {
    if (!s_[p]) s_[p].reset(new S(init()));
    return *s_[p];
  }
  std::vector<std::unique_ptr<S>>& all() { return s_; }

 private:
  std::vector<std::unique_ptr<S>> s_;
};

}  // namespace hyp
