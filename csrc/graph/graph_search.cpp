// Graph search loops on the CPU (engine._C.graph_*): the paper's algorithm and the
// best-first beam search of the default, one query per OpenMP task, each calling the
// fused q-net kernel (PackedQNet, csrc/cpu) on the documents it visits. No Python runs
// between steps. Semantics match engine/graph/paper.py and engine/graph/beam.py exactly:
// every ordering is (score desc, id asc), so the result does not depend on visit order.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "array_check.h"
#include "cpu/qnet_kernel.h"
#include "qnet_args.h"
#include "ranking.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace hyp {

namespace py = pybind11;

namespace {

// ------------------------------------------------------------------ argument parsing

// Flags of the q-net from the dict the Python side passes (every key required).
QNetFlags parse_flags(const py::dict& flags) {
  auto get = [&](const char* key) {
    if (!flags.contains(key)) throw std::invalid_argument(std::string("q-net flags: missing '") + key + "'");
    return flags[key];
  };
  QNetFlags f;
  f.relu = get("relu").cast<bool>();
  f.layer_norm = get("layer_norm").cast<bool>();
  f.residual = get("residual").cast<bool>();
  f.residual_on_last = get("residual_on_last").cast<bool>();
  f.layer_norm_before_residual = get("layer_norm_before_residual").cast<bool>();
  f.eps = get("eps").cast<double>();
  return f;
}

void parse_qnet(QNetArgs& h, const py::list& weights, const py::list& biases, const py::dict& flags) {
  hyp::parse_qnet(h, weights, biases, parse_flags(flags));
  // The Python side converts float16 weights; graph search packs float32 or bfloat16 only.
  if (h.view.wdtype == DType::F16) throw py::type_error("weights: float16 weights must be converted to float32 first");
}

struct Graph {
  const int32_t* nbr = nullptr;
  int64_t n = 0, R = 0;
};

Graph parse_graph(const py::array& a, int64_t n) {
  check_kind(a, "graph", Kind::I32);
  check_shape(a, "graph", {n, -1});
  return Graph{static_cast<const int32_t*>(a.data()), n, a.shape(1)};
}

// Ids handed over for a start: each in [0, n) (or -1 = padding where allowed).
const int64_t* parse_ids(const py::array& a, const char* name, std::vector<int64_t> shape, int64_t n,
                         bool allow_pad) {
  check_kind(a, name, Kind::I64);
  check_shape(a, name, shape);
  const int64_t* p = static_cast<const int64_t*>(a.data());
  for (py::ssize_t i = 0; i < a.size(); ++i)
    if (p[i] >= n || p[i] < (allow_pad ? -1 : 0))
      throw std::invalid_argument(std::string(name) + ": id " + std::to_string(p[i]) + " out of range for " +
                                  std::to_string(n) + " documents");
  return p;
}


// ------------------------------------------------------------------ search state

using Item = Scored;

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
  void set(int64_t i) { mark[i] = epoch; }
};

// Appends the graph neighbours of `doc` not yet visited to `out`, marking them. A
// neighbour outside [-1, n) is a corrupt graph: flagged, never followed.
inline void expand(const Graph& g, int64_t doc, Visited& vis, std::vector<int64_t>& out,
                   std::atomic<bool>& bad) {
  const int32_t* row = g.nbr + doc * g.R;
  for (int64_t j = 0; j < g.R; ++j) {
    const int64_t nb = row[j];
    if (nb < 0) {
      if (nb != -1) bad.store(true, std::memory_order_relaxed);
      continue;
    }
    if (nb >= g.n) {
      bad.store(true, std::memory_order_relaxed);
      continue;
    }
    if (vis.test_set(nb)) out.push_back(nb);
  }
}

void raise_bad_graph(const std::atomic<bool>& bad, int64_t n) {
  if (bad.load())
    throw std::invalid_argument("graph holds a neighbour id outside [-1, " + std::to_string(n) + ")");
}

// Scores ids[0..m) for one packed query on `inner` threads: with fewer queries than
// threads (batch 1), the candidates of a step are split over the threads instead of the
// queries. A document's score does not depend on the chunk it is scored in.
inline void score_split(const PackedQNet& net, const VectorsView& v, const int64_t* ids, int64_t m,
                        float* out, int inner) {
  constexpr int64_t kMinPerThread = 32;  // below this a thread costs more than it saves
  const int64_t parts = std::min<int64_t>(inner, m / kMinPerThread);
  if (parts <= 1) {
    net.score_gather(v, ids, m, out);
    return;
  }
  const int64_t per = (m + parts - 1) / parts;
#pragma omp parallel for num_threads(static_cast<int>(parts)) schedule(static, 1)
  for (int64_t p = 0; p < parts; ++p) {
    const int64_t lo = p * per, hi = std::min(m, lo + per);
    if (lo < hi) net.score_gather(v, ids + lo, hi - lo, out + lo);
  }
}

// Threads over queries when there are enough of them, else over each query's candidates.
struct Split {
  int outer, inner;
};
inline Split split_threads(int64_t Q, int nt) {
  if (Q >= nt) return {nt, 1};
  return {1, nt};
}

// What a batch of searches returns: the `width` best (score, id) of every query, padded
// with (-inf, -1), and the documents scored and steps taken per query. The pointers are
// taken while the GIL is held; each thread then writes only its own queries' rows.
struct SearchOutput {
  int64_t width;
  py::array_t<float> scores;
  py::array_t<int64_t> ids, scored, steps;
  float* os;
  int64_t *oi, *oscored, *osteps;
  SearchOutput(int64_t Q, int64_t w)
      : width(w), scores({Q, w}), ids({Q, w}), scored(Q), steps(Q), os(scores.mutable_data()),
        oi(ids.mutable_data()), oscored(scored.mutable_data()), osteps(steps.mutable_data()) {}
  // Row q: the first `count` of `items` (best first), then padding.
  template <class T>
  void write(int64_t q, const std::vector<T>& items, int64_t count, int64_t nscored, int64_t nsteps) {
    for (int64_t j = 0; j < width; ++j) {
      const bool f = j < count;
      os[q * width + j] = f ? items[j].s : -std::numeric_limits<float>::infinity();
      oi[q * width + j] = f ? items[j].id : -1;
    }
    oscored[q] = nscored;
    osteps[q] = nsteps;
  }
  py::tuple result() const { return py::make_tuple(scores, ids, scored, steps); }
};

// ------------------------------------------------------------------ the paper's algorithm

py::tuple paper_search(py::list weights, py::list biases, py::dict flags, py::array vectors, py::array graph,
                       py::array entries, int64_t k, int64_t ncandidates, int64_t max_iter, bool early_stop,
                       int num_threads) {
  QNetArgs h;
  parse_qnet(h, weights, biases, flags);
  const VectorsView v = parse_vectors(vectors, h.dims[0]);
  const Graph g = parse_graph(graph, v.n);
  const int64_t E = entries.ndim() == 1 ? entries.shape(0) : -1;
  const int64_t* ent = parse_ids(entries, "entries", {-1}, v.n, false);
  if (k < 1) throw std::invalid_argument("k must be at least 1");
  if (ncandidates < 1) throw std::invalid_argument("ncandidates must be at least 1");
  if (max_iter < 1) throw std::invalid_argument("max_iter must be at least 1");
  const int nt = threads_arg(num_threads);
  const int64_t Q = h.view.num_queries;
  SearchOutput out(Q, k);
  std::atomic<bool> bad{false};
  const Split sp = split_threads(Q, nt);
  {
    py::gil_scoped_release release;
#pragma omp parallel num_threads(sp.outer)
    {
      Visited vis(v.n);
      std::vector<int64_t> cand, next;
      std::vector<float> sc;
      std::vector<Item> items, heap;
#pragma omp for schedule(dynamic, 1)
      for (int64_t q = 0; q < Q; ++q) {
        PackedQNet net(h.view, q);
        vis.next();
        cand.clear();
        for (int64_t i = 0; i < E; ++i)
          if (vis.test_set(ent[i])) cand.push_back(ent[i]);
        heap.clear();
        int64_t scored = 0, steps = 0;
        const int64_t top_n = std::max(ncandidates, k);
        // Heap ordered so that its front is the worst item kept.
        auto heap_cmp = [](const Item& a, const Item& b) { return better(a, b); };
        for (int64_t it = 0; it < max_iter && !cand.empty(); ++it) {
          const int64_t C = static_cast<int64_t>(cand.size());
          sc.resize(C);
          score_split(net, v, cand.data(), C, sc.data(), sp.inner);
          scored += C;
          ++steps;
          items.resize(C);
          for (int64_t i = 0; i < C; ++i) items[i] = Item{sc[i], cand[i]};
          const int64_t T = std::min(top_n, C);
          std::partial_sort(items.begin(), items.begin() + T, items.end(), better<Item>);
          next.clear();
          int64_t added = 0;
          for (int64_t r = 0; r < T; ++r) {
            const Item& x = items[r];
            if (static_cast<int64_t>(heap.size()) < k) {
              heap.push_back(x);
              std::push_heap(heap.begin(), heap.end(), heap_cmp);
              ++added;
            } else if (better(x, heap.front())) {
              std::pop_heap(heap.begin(), heap.end(), heap_cmp);
              heap.back() = x;
              std::push_heap(heap.begin(), heap.end(), heap_cmp);
              ++added;
            }
            if (r < ncandidates) expand(g, x.id, vis, next, bad);
          }
          if (added == 0 && early_stop) break;
          cand.swap(next);
        }
        std::sort(heap.begin(), heap.end(), better<Item>);
        out.write(q, heap, static_cast<int64_t>(heap.size()), scored, steps);
      }
    }
  }
  raise_bad_graph(bad, v.n);
  return out.result();
}

// ------------------------------------------------------------------ best-first beam search

struct Entry {
  float s;
  int64_t id;
  bool expanded;
};

py::tuple beam_search(py::list weights, py::list biases, py::dict flags, py::array vectors, py::array graph,
                      py::array shared_entries, py::array entries, py::array init_scores, py::array init_ids,
                      int64_t ef, int64_t width, int64_t max_steps, int num_threads) {
  QNetArgs h;
  parse_qnet(h, weights, biases, flags);
  const int64_t Q = h.view.num_queries;
  const VectorsView v = parse_vectors(vectors, h.dims[0]);
  const Graph g = parse_graph(graph, v.n);
  const int64_t* sh = parse_ids(shared_entries, "shared_entries", {-1}, v.n, false);
  const int64_t S = shared_entries.shape(0);
  const int64_t* en = parse_ids(entries, "entries", {Q, -1}, v.n, true);
  const int64_t M = entries.shape(1);
  check_kind(init_scores, "init_scores", Kind::F32);
  check_shape(init_scores, "init_scores", {Q, -1});
  const int64_t I = init_scores.shape(1);
  const int64_t* ii = parse_ids(init_ids, "init_ids", {Q, I}, v.n, true);
  const float* is = static_cast<const float*>(init_scores.data());
  if (S > 0 && I > 0) throw std::invalid_argument("pass shared_entries or init, not both");
  if (ef < 1) throw std::invalid_argument("ef must be at least 1");
  if (width < 1) throw std::invalid_argument("width must be at least 1");
  if (max_steps < 0) throw std::invalid_argument("max_steps must be non-negative");
  const int nt = threads_arg(num_threads);
  SearchOutput out(Q, ef);
  std::atomic<bool> bad{false};
  const Split sp = split_threads(Q, nt);
  {
    py::gil_scoped_release release;
#pragma omp parallel num_threads(sp.outer)
    {
      Visited vis(v.n);
      std::vector<int64_t> ids;
      std::vector<float> sc;
      std::vector<Entry> list;
#pragma omp for schedule(dynamic, 1)
      for (int64_t q = 0; q < Q; ++q) {
        PackedQNet net(h.view, q);
        vis.next();
        list.clear();
        int64_t scored = 0, steps = 0;
        // Already scored documents: kept, never scored again.
        for (int64_t j = 0; j < I; ++j) {
          const int64_t id = ii[q * I + j];
          if (id >= 0 && vis.test_set(id)) list.push_back(Entry{is[q * I + j], id, false});
        }
        ids.clear();
        for (int64_t j = 0; j < S; ++j)
          if (vis.test_set(sh[j])) ids.push_back(sh[j]);
        for (int64_t j = 0; j < M; ++j) {
          const int64_t id = en[q * M + j];
          if (id >= 0 && vis.test_set(id)) ids.push_back(id);
        }
        auto score_into_list = [&]() {
          const int64_t m = static_cast<int64_t>(ids.size());
          if (m == 0) return;
          sc.resize(m);
          score_split(net, v, ids.data(), m, sc.data(), sp.inner);
          scored += m;
          for (int64_t j = 0; j < m; ++j) list.push_back(Entry{sc[j], ids[j], false});
          const int64_t keep = std::min<int64_t>(ef, static_cast<int64_t>(list.size()));
          std::partial_sort(list.begin(), list.begin() + keep, list.end(), better<Entry>);
          list.resize(keep);
        };
        score_into_list();
        {
          const int64_t keep = std::min<int64_t>(ef, static_cast<int64_t>(list.size()));
          std::partial_sort(list.begin(), list.begin() + keep, list.end(), better<Entry>);
          list.resize(keep);
        }
        for (int64_t st = 0; st < max_steps; ++st) {
          ids.clear();
          int64_t picked = 0;
          for (auto& e : list) {  // the `width` best unexpanded entries
            if (e.expanded) continue;
            e.expanded = true;
            expand(g, e.id, vis, ids, bad);
            if (++picked == width) break;
          }
          if (picked == 0) break;
          ++steps;
          score_into_list();
        }
        out.write(q, list, static_cast<int64_t>(list.size()), scored, steps);
      }
    }
  }
  raise_bad_graph(bad, v.n);
  return out.result();
}

}  // namespace

void register_graph_scan(py::module_& m);  // linear_scan.cpp

void register_graph(py::module_& m) {
  register_graph_scan(m);
  m.def("graph_paper_search", &paper_search, py::arg("weights"), py::arg("biases"), py::arg("flags"),
        py::arg("vectors"), py::arg("graph"), py::arg("entries"), py::arg("k"), py::arg("ncandidates"),
        py::arg("max_iter"), py::arg("early_stop"), py::arg("num_threads"),
        "The paper's graph search: (scores (Q, k), ids (Q, k), scored (Q,), steps (Q,)).");
  m.def("graph_beam_search", &beam_search, py::arg("weights"), py::arg("biases"), py::arg("flags"),
        py::arg("vectors"), py::arg("graph"), py::arg("shared_entries"), py::arg("entries"),
        py::arg("init_scores"), py::arg("init_ids"), py::arg("ef"), py::arg("width"), py::arg("max_steps"),
        py::arg("num_threads"),
        "Best-first beam search: (scores (Q, ef), ids (Q, ef), scored (Q,), steps (Q,)).");
}

}  // namespace hyp
