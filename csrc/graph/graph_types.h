// State shared by the graph search algorithms (paper.cpp, default_search.cpp): the
// neighbour graph, visited marks, the candidate list entries and how a query's heavy
// steps are split over threads. Pure C++: no Python types.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/qnet_kernel.h"
#include "parallel.h"
#include "ranking.h"

namespace hyp {
namespace graph {

// (n, R) row-major neighbour ids; -1 pads a row.
struct GraphView {
  const int32_t* nbr = nullptr;
  int64_t n = 0, R = 0;
};

// Which documents a query may return: none (every one), one bitmap (n,) for all queries,
// or one per query ((Q, n) row-major); nonzero = allowed.
struct AllowView {
  const uint8_t* bits = nullptr;
  int64_t n = 0;
  bool per_query = false;
  const uint8_t* row(int64_t q) const { return bits ? bits + (per_query ? q * n : 0) : nullptr; }
};

// Visited marks by epoch: a new query bumps the epoch instead of clearing n entries.
struct Visited {
  std::vector<uint32_t> mark;
  uint32_t epoch = 0;
  explicit Visited(int64_t n = 0) : mark(static_cast<size_t>(n), 0) {}
  void next() {
    if (++epoch == 0) {  // wrapped: clear once every 2^32 queries
      std::fill(mark.begin(), mark.end(), 0);
      epoch = 1;
    }
  }
  // This thread's marks for a corpus of n documents, kept across searches: allocating and
  // zeroing n marks per search (35 MB at 8.8M) would cost more than a small search.
  static Visited& local(int64_t n) {
    thread_local Visited v;
    if (static_cast<int64_t>(v.mark.size()) != n) {
      v.mark.assign(static_cast<size_t>(n), 0);
      v.epoch = 0;
    }
    return v;
  }
  bool test_set(int64_t i) {
    if (mark[i] == epoch) return false;
    mark[i] = epoch;
    return true;
  }
};

// Appends the neighbours of `doc` not yet visited to `out`, marking them. Returns false
// when the row holds an id outside [-1, n) (a corrupt graph: never followed).
inline bool expand(const GraphView& g, int64_t doc, Visited& vis, std::vector<int64_t>& out) {
  const int32_t* row = g.nbr + doc * g.R;
  bool ok = true;
  for (int64_t j = 0; j < g.R; ++j) {
    const int64_t nb = row[j];
    if (nb < 0 || nb >= g.n) {
      ok &= nb == -1;
      continue;
    }
    if (vis.test_set(nb)) out.push_back(nb);
  }
  return ok;
}

// An entry of a candidate list: a scored document, and whether its neighbours were taken.
struct Entry {
  float s;
  int64_t id;
  bool expanded;
};

// Runs fn(lo, hi) over [0, m) split into equal parts on up to `threads` threads when
// the work (`item_micros` per item) pays for handing parts off (see parallel.h), each
// part at least `min_part` items; else one part, on the calling thread.
template <class F>
void split_range(int threads, int64_t m, int64_t min_part, double item_micros, F fn) {
  const Parts pp = plan_parts(threads, m, item_micros, min_part);
  if (pp.tasks <= 1) {
    if (m > 0) fn(int64_t(0), m);
    return;
  }
  const int64_t per = (m + pp.tasks - 1) / pp.tasks;
  parallel_tasks(pp.threads, pp.tasks, [&](int, int64_t p) {
    const int64_t lo = p * per, hi = std::min(m, lo + per);
    if (lo < hi) fn(lo, hi);
  });
}

// Scores ids[0..m) with one packed query on up to `threads` threads (a document's score
// does not depend on the part it is scored in; parts of at least 16 rows keep the
// kernel's blocks full).
inline void score_ids(const PackedQNet& net, const VectorsView& v, const int64_t* ids, int64_t m, float* out,
                      int threads) {
  split_range(threads, m, 16, static_cast<double>(net.flops_per_row()) * kMicrosPerFlop,
              [&](int64_t lo, int64_t hi) { net.score_gather(v, ids + lo, hi - lo, out + lo); });
}

// Threads over queries when there are enough of them, else over each query's steps.
struct Split {
  int outer, inner;
};
inline Split split_threads(int64_t Q, int nt) {
  if (Q >= nt) return {nt, 1};
  return {1, nt};
}

// Runs body(state, q) for every query q, each participant with its own state = init():
// on `outer` threads over the queries, or on the calling thread alone when outer is 1
// (the steps of a query may then split their own work).
template <class Init, class Body>
void for_queries(int64_t Q, int outer, Init init, Body body) {
  if (outer <= 1) {
    auto state = init();
    for (int64_t q = 0; q < Q; ++q) body(state, q);
    return;
  }
  PerParticipant<decltype(init())> states(outer);
  parallel_tasks(outer, Q, [&](int p, int64_t q) { body(states.get(p, init), q); });
}

// Where a batch search writes: (Q, width) scores and ids, padded with (-inf, -1).
struct ResultView {
  float* scores = nullptr;
  int64_t* ids = nullptr;
  int64_t width = 0;
  template <class T>
  void write(int64_t q, const std::vector<T>& items, int64_t count) const {
    for (int64_t j = 0; j < width; ++j) {
      const bool f = j < count;
      scores[q * width + j] = f ? items[j].s : -std::numeric_limits<float>::infinity();
      ids[q * width + j] = f ? items[j].id : -1;
    }
  }
};

}  // namespace graph
}  // namespace hyp
