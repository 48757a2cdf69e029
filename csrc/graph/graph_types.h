// State shared by the graph search algorithms (paper.cpp, default_search.cpp): the
// neighbour graph, visited marks, the candidate list entries and how a query's heavy
// steps are split over threads. Pure C++: no Python types.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/qnet_kernel.h"
#include "ranking.h"

namespace hyp {
namespace graph {

// (n, R) row-major neighbour ids; -1 pads a row.
struct GraphView {
  const int32_t* nbr = nullptr;
  int64_t n = 0, R = 0;
};

// Visited marks by epoch: a new query bumps the epoch instead of clearing n entries.
struct Visited {
  std::vector<uint32_t> mark;
  uint32_t epoch = 0;
  explicit Visited(int64_t n) : mark(static_cast<size_t>(n), 0) {}
  void next() {
    if (++epoch == 0) {  // wrapped: clear once every 2^32 queries
      std::fill(mark.begin(), mark.end(), 0);
      epoch = 1;
    }
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

// Runs fn(lo, hi) over [0, m) split into at most `threads` equal parts of at least
// `min_part` items (one part, on the calling thread, when that is all it is worth).
template <class F>
void split_range(int threads, int64_t m, int64_t min_part, F fn) {
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(threads, m / std::max<int64_t>(1, min_part)));
  if (parts <= 1) {
    if (m > 0) fn(int64_t(0), m);
    return;
  }
  const int64_t per = (m + parts - 1) / parts;
#pragma omp parallel for num_threads(static_cast<int>(parts)) schedule(static, 1)
  for (int64_t p = 0; p < parts; ++p) {
    const int64_t lo = p * per, hi = std::min(m, lo + per);
    if (lo < hi) fn(lo, hi);
  }
}

// Scores ids[0..m) with one packed query on `threads` threads (a document's score does
// not depend on the part it is scored in).
inline void score_ids(const PackedQNet& net, const VectorsView& v, const int64_t* ids, int64_t m, float* out,
                      int threads) {
  split_range(threads, m, 32, [&](int64_t lo, int64_t hi) { net.score_gather(v, ids + lo, hi - lo, out + lo); });
}

// Threads over queries when there are enough of them, else over each query's steps.
struct Split {
  int outer, inner;
};
inline Split split_threads(int64_t Q, int nt) {
  if (Q >= nt) return {nt, 1};
  return {1, nt};
}

// Runs body(state, q) for every query q, each thread with its own state = init(): on
// `outer` threads over the queries, or on the calling thread alone when outer is 1 (no
// enclosing parallel region, so the steps of a query may open their own).
template <class Init, class Body>
void for_queries(int64_t Q, int outer, Init init, Body body) {
  if (outer <= 1) {
    auto state = init();
    for (int64_t q = 0; q < Q; ++q) body(state, q);
    return;
  }
#pragma omp parallel num_threads(outer)
  {
    auto state = init();
#pragma omp for schedule(dynamic, 1)
    for (int64_t q = 0; q < Q; ++q) body(state, q);
  }
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
