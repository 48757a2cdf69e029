// Python entry points of graph search (engine._C.graph_*): every array is validated here
// (dtype, shape, contiguity, id ranges) before an algorithm of csrc/graph sees it, which
// then runs in native_call (GIL released, ISA held). One call runs a whole search of a
// query batch.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "array_check.h"
#include "cpu/isa.h"
#include "cpu/scan_ops.h"
#include "graph/linear.h"
#include "graph/linearize.h"
#include "graph/search.h"
#include "native_call.h"
#include "qnet_args.h"

namespace hyp {

namespace py = pybind11;

namespace {

using graph::CodesView;
using graph::GraphView;
using graph::QueryStats;

GraphView parse_graph(const py::array& a, int64_t n) {
  check_kind(a, "graph", Kind::I32);
  check_shape(a, "graph", {n, -1});
  return GraphView{static_cast<const int32_t*>(a.data()), n, a.shape(1)};
}

// Ids handed over: each in [0, n).
const int64_t* parse_ids(const py::array& a, const char* name, std::vector<int64_t> shape, int64_t n) {
  check_kind(a, name, Kind::I64);
  check_shape(a, name, shape);
  const int64_t* p = static_cast<const int64_t*>(a.data());
  for (py::ssize_t i = 0; i < a.size(); ++i)
    if (p[i] < 0 || p[i] >= n)
      throw std::invalid_argument(std::string(name) + ": id " + std::to_string(p[i]) + " out of range for " +
                                  std::to_string(n) + " documents");
  return p;
}

// The allow bitmap of a batch of Q queries: None, or uint8 (1, n) (all queries) or (Q, n).
graph::AllowView parse_allow(const py::object& a, int64_t Q, int64_t n) {
  graph::AllowView av;
  if (a.is_none()) return av;
  const py::array arr = a.cast<py::array>();
  check_kind(arr, "allow", Kind::U8);
  check_shape(arr, "allow", {-1, n});
  if (arr.shape(0) != 1 && arr.shape(0) != Q)
    throw std::invalid_argument("allow: expected 1 or " + std::to_string(Q) + " rows, got " +
                                std::to_string(arr.shape(0)));
  av.bits = static_cast<const uint8_t*>(arr.data());
  av.n = n;
  av.per_query = arr.shape(0) != 1;
  return av;
}

const float* parse_finite(const py::array& a, const char* name, std::vector<int64_t> shape) {
  check_kind(a, name, Kind::F32);
  check_shape(a, name, shape);
  const float* p = static_cast<const float*>(a.data());
  // The exponent bits of every value, OR-ed by blocks without an early exit, so the loop
  // vectorises: checking the codes' rotations this way costs tens of us, not half a ms.
  constexpr uint32_t kExp = 0x7f800000u;
  const int64_t size = a.size();
  for (int64_t i0 = 0; i0 < size; i0 += 4096) {
    const int64_t i1 = std::min<int64_t>(size, i0 + 4096);
    uint32_t bad = 0;
    for (int64_t i = i0; i < i1; ++i) {
      uint32_t u;
      std::memcpy(&u, p + i, 4);
      bad |= static_cast<uint32_t>((u & kExp) == kExp);
    }
    if (bad) throw std::invalid_argument(std::string(name) + " holds a non-finite value");
  }
  return p;
}

int64_t positive(int64_t v, const char* name, int64_t lo = 1) {
  if (v < lo) throw std::invalid_argument(std::string(name) + " must be at least " + std::to_string(lo));
  return v;
}

// A list length or count that cannot usefully exceed n documents (a top-m, a beam list, a
// re-rank budget): at least lo, and clamped to max(n, 1), which changes no result and
// keeps the sizes derived from it (2m buffers, m-element lists) from overflowing.
int64_t bounded(int64_t v, const char* name, int64_t n, int64_t lo = 1) {
  return std::min(positive(v, name, lo), std::max<int64_t>(n, 1));
}

// The codes tuple of engine/graph/codes.py: (codes, rotation, dims, bits, levels) and,
// with the second level, its (bits, rotation, levels).
CodesView parse_codes(const py::tuple& t, int64_t n, int64_t d) {
  if (t.size() != 5 && t.size() != 8)
    throw std::invalid_argument("codes: expected (codes, rotation, dims, bits, levels[, residual bits, rotation, levels])");
  const py::array codes = t[0].cast<py::array>(), rot = t[1].cast<py::array>(), dims = t[2].cast<py::array>(),
                  bits = t[3].cast<py::array>(), levels = t[4].cast<py::array>();
  check_kind(dims, "codes dims", Kind::I32);
  check_shape(dims, "codes dims", {-1, 4});
  const int64_t nsub = dims.shape(0);
  if (nsub < 4 || nsub % 4 != 0 || nsub > 256)
    throw std::invalid_argument("codes: the number of sub-codes must be a multiple of 4 in 4..256, got " +
                                std::to_string(nsub));
  check_kind(bits, "codes bits", Kind::I32);
  check_shape(bits, "codes bits", {nsub, 4});
  check_kind(rot, "codes rotation", Kind::F32);
  check_shape(rot, "codes rotation", {d, -1});
  const int64_t r = rot.shape(1);
  if (r < 1) throw std::invalid_argument("codes rotation: at least one coordinate");
  parse_finite(rot, "codes rotation", {d, r});
  parse_finite(levels, "codes levels", {r, 16});
  const int32_t* dp = static_cast<const int32_t*>(dims.data());
  const int32_t* bp = static_cast<const int32_t*>(bits.data());
  for (int64_t j = 0; j < nsub; ++j) {
    int total = 0;
    for (int s = 0; s < 4; ++s) {
      const int32_t dim = dp[j * 4 + s], b = bp[j * 4 + s];
      if (dim < -1 || dim >= r) throw std::invalid_argument("codes dims: coordinate out of range");
      if (b < 0 || b > 4 || (dim < 0 && b != 0)) throw std::invalid_argument("codes bits: invalid bit width");
      total += b;
    }
    if (total > 4) throw std::invalid_argument("codes bits: a sub-code holds more than 4 bits");
  }
  check_kind(codes, "codes", Kind::U8);
  check_shape(codes, "codes", {(n + cpu::kCodeBlock - 1) / cpu::kCodeBlock, nsub / 2, cpu::kCodeBlock});
  CodesView c;
  c.codes = static_cast<const uint8_t*>(codes.data());
  c.n = n, c.nsub = nsub, c.d = d, c.r = r;
  c.rotation = static_cast<const float*>(rot.data());
  c.dims = dp, c.bits = bp;
  c.levels = static_cast<const float*>(levels.data());
  if (t.size() == 8) {
    const py::array rb = t[5].cast<py::array>(), rrot = t[6].cast<py::array>(), rlev = t[7].cast<py::array>();
    check_kind(rrot, "residual rotation", Kind::F32);
    check_shape(rrot, "residual rotation", {d, -1});
    const int64_t rr = rrot.shape(1);
    if (rr < 8 || rr % 8 || rr > 8192)
      throw std::invalid_argument("residual rotation: the coordinates must be a multiple of 8 in 8..8192, got " +
                                  std::to_string(rr));
    parse_finite(rrot, "residual rotation", {d, rr});
    parse_finite(rlev, "residual levels", {rr, 2});
    check_kind(rb, "residual bits", Kind::U8);
    check_shape(rb, "residual bits", {n, rr / 8});
    c.res_bits = static_cast<const uint8_t*>(rb.data());
    c.rr = rr;
    c.res_rotation = static_cast<const float*>(rrot.data());
    c.res_levels = static_cast<const float*>(rlev.data());
  }
  return c;
}

// (scores (Q, k), ids (Q, k)) arrays and the view an algorithm writes them through.
struct Output {
  py::array_t<float> scores;
  py::array_t<int64_t> ids;
  py::array_t<int64_t> stats;
  graph::ResultView view;
  std::vector<QueryStats> st;
  Output(int64_t Q, int64_t k) : scores({Q, k}), ids({Q, k}), stats({Q, int64_t(5)}), st(static_cast<size_t>(Q)) {
    view.scores = scores.mutable_data();
    view.ids = ids.mutable_data();
    view.width = k;
  }
  py::tuple result() {
    int64_t* o = stats.mutable_data();
    for (size_t q = 0; q < st.size(); ++q) {
      const QueryStats& s = st[q];
      const int64_t row[5] = {s.scored, s.steps, s.linear_rows, s.coded_rows, s.fallback};
      std::copy(row, row + 5, o + q * 5);
    }
    return py::make_tuple(scores, ids, stats);
  }
};

void raise_bad_graph(bool ok, int64_t n) {
  if (!ok) throw std::invalid_argument("graph holds a neighbour id outside [-1, " + std::to_string(n) + ")");
}

py::tuple py_paper_search(py::list weights, py::list biases, py::dict flags, py::array vectors, py::array graph,
                          py::array entries, int64_t k, int64_t ncandidates, int64_t max_iter, bool early_stop,
                          int num_threads, py::object scales, py::object allow) {
  QNetArgs h;
  parse_qnet(h, weights, biases, flags);
  const VectorsView v = parse_vectors(vectors, h.dims[0], scales);
  const GraphView g = parse_graph(graph, v.n);
  const int64_t* ent = parse_ids(entries, "entries", {-1}, v.n);
  const graph::AllowView av = parse_allow(allow, h.view.num_queries, v.n);
  graph::PaperParams p;
  p.k = k_arg(k);
  p.ncandidates = bounded(ncandidates, "ncandidates", v.n);
  p.max_iter = positive(max_iter, "max_iter");
  p.early_stop = early_stop;
  const int nt = threads_arg(num_threads);
  Output out(h.view.num_queries, p.k);
  const bool ok = native_call([&] {
    h.widen();
    return graph::paper_search(h.view, v, g, ent, entries.shape(0), av, p, nt, out.view, out.st.data());
  });
  raise_bad_graph(ok, v.n);
  return out.result();
}

py::tuple py_default_search(py::list weights, py::list biases, py::dict flags, py::array vectors, py::array graph,
                            py::array mean, py::array samples, py::object codes, int64_t k, int64_t ef,
                            int64_t ef_lin, int64_t width, int64_t max_steps, int64_t passes, int64_t shortlist,
                            int64_t rerank, int64_t residual_rows, bool bf16, int num_threads, py::object scales,
                            py::object allow) {
  QNetArgs h;
  parse_qnet(h, weights, biases, flags);
  const VectorsView v = parse_vectors(vectors, h.dims[0], scales);
  const GraphView g = parse_graph(graph, v.n);
  const float* mp = parse_finite(mean, "mean", {v.d});
  const int64_t* sp = parse_ids(samples, "samples", {-1}, v.n);
  const graph::AllowView av = parse_allow(allow, h.view.num_queries, v.n);
  CodesView cv;
  graph::DefaultParams p;
  if (!codes.is_none()) {
    cv = parse_codes(codes.cast<py::tuple>(), v.n, v.d);
    p.use_codes = true;
  }
  p.k = k_arg(k);
  p.ef = bounded(ef, "ef", v.n);
  p.ef_lin = bounded(ef_lin, "ef_lin", v.n);
  p.width = bounded(width, "width", v.n);
  p.max_steps = positive(max_steps, "max_steps", 0);
  p.passes = positive(passes, "passes");
  if (p.passes > 2) throw std::invalid_argument("passes must be 1 or 2");
  p.shortlist = bounded(shortlist, "shortlist", v.n, 0);
  p.rerank = bounded(rerank, "rerank", v.n, 0);
  p.residual_rows = bounded(residual_rows, "residual_rows", v.n, 0);
  p.bf16 = bf16;
  const int nt = threads_arg(num_threads);
  Output out(h.view.num_queries, p.k);
  const bool ok = native_call([&] {
    h.widen();
    return graph::default_search(h.view, v, g, p.use_codes ? &cv : nullptr, mp, sp, samples.shape(0), av, p, nt,
                                 out.view, out.st.data());
  });
  raise_bad_graph(ok, v.n);
  return out.result();
}

// The interface operations on their own (used by the tests and the torch twin's checks).

py::tuple ranked(const std::vector<std::vector<Scored>>& rows, int64_t width) {
  const int64_t Q = static_cast<int64_t>(rows.size());
  py::array_t<float> s({Q, width});
  py::array_t<int64_t> i({Q, width});
  graph::ResultView rv{s.mutable_data(), i.mutable_data(), width};
  for (int64_t q = 0; q < Q; ++q) rv.write(q, rows[q], static_cast<int64_t>(rows[q].size()));
  return py::make_tuple(s, i);
}

py::tuple py_linear_topk(py::array vectors, py::array w, int64_t m, int num_threads, py::object scales) {
  check_shape(w, "w", {-1, -1});
  const int64_t Q = w.shape(0);
  const VectorsView v = parse_vectors(vectors, w.shape(1), scales);
  const float* wp = parse_finite(w, "w", {Q, v.d});
  m = bounded(m, "m", v.n);
  const int nt = threads_arg(num_threads);
  std::vector<std::vector<Scored>> rows(static_cast<size_t>(Q));
  native_call([&] {
    const cpu::ScanOps& ops = cpu::scan_ops(active_isa());
    for (int64_t q = 0; q < Q; ++q) graph::linear_topk(ops, v, wp + q * v.d, m, nt, rows[q]);
  });
  return ranked(rows, std::min(m, v.n));
}

py::tuple py_rows_topk(py::array vectors, py::array ids, py::array w, int64_t m, int num_threads, py::object scales) {
  check_shape(w, "w", {-1, -1});
  const int64_t Q = w.shape(0);
  const VectorsView v = parse_vectors(vectors, w.shape(1), scales);
  const float* wp = parse_finite(w, "w", {Q, v.d});
  const int64_t* ip = parse_ids(ids, "ids", {Q, -1}, v.n);
  const int64_t S = ids.shape(1);
  for (int64_t q = 0; q < Q; ++q) {
    std::vector<int64_t> row(ip + q * S, ip + (q + 1) * S);
    std::sort(row.begin(), row.end());
    if (std::adjacent_find(row.begin(), row.end()) != row.end())
      throw std::invalid_argument("ids: query " + std::to_string(q) + " lists a document twice");
  }
  m = bounded(m, "m", S);
  const int nt = threads_arg(num_threads);
  std::vector<std::vector<Scored>> rows(static_cast<size_t>(Q));
  native_call([&] {
    const cpu::ScanOps& ops = cpu::scan_ops(active_isa());
    for (int64_t q = 0; q < Q; ++q) graph::rows_topk(ops, v, ip + q * S, S, wp + q * v.d, m, nt, rows[q]);
  });
  return ranked(rows, std::min(m, S));
}

py::tuple py_codes_topk(py::tuple codes, py::array vectors, py::array w, int64_t rerank, int64_t m,
                        int num_threads, py::object scales, int64_t residual_rows) {
  check_shape(w, "w", {-1, -1});
  const int64_t Q = w.shape(0);
  const VectorsView v = parse_vectors(vectors, w.shape(1), scales);
  const float* wp = parse_finite(w, "w", {Q, v.d});
  const CodesView c = parse_codes(codes, v.n, v.d);
  m = bounded(m, "m", v.n);
  rerank = bounded(rerank, "rerank", v.n, 0);
  residual_rows = bounded(residual_rows, "residual_rows", v.n, 0);
  const int nt = threads_arg(num_threads);
  std::vector<std::vector<Scored>> rows(static_cast<size_t>(Q));
  native_call([&] {
    const cpu::ScanOps& ops = cpu::scan_ops(active_isa());
    for (int64_t q = 0; q < Q; ++q) graph::codes_topk(ops, c, v, wp + q * v.d, rerank, residual_rows, m, nt, rows[q]);
  });
  return ranked(rows, std::min(m, v.n));
}

py::array_t<uint8_t> py_codes_lut(py::tuple codes, int64_t n, py::array w) {
  check_shape(w, "w", {-1});
  const float* wp = parse_finite(w, "w", {w.shape(0)});
  const CodesView c = parse_codes(codes, count_arg(n, "n"), w.shape(0));
  py::array_t<uint8_t> lut({c.nsub, int64_t(16)});
  uint8_t* lp = lut.mutable_data();
  native_call([&] { graph::build_lut(c, wp, lp); });
  return lut;
}

py::array_t<uint16_t> py_codes_sums(py::array codes, py::array lut, int64_t n) {
  check_kind(lut, "lut", Kind::U8);
  check_shape(lut, "lut", {-1, 16});
  const int64_t nsub = lut.shape(0);
  if (nsub < 4 || nsub % 4 != 0 || nsub > 256) throw std::invalid_argument("lut: rows must be a multiple of 4 in 4..256");
  check_kind(codes, "codes", Kind::U8);
  count_arg(n, "n");
  const int64_t nb = (n + cpu::kCodeBlock - 1) / cpu::kCodeBlock;
  check_shape(codes, "codes", {nb, nsub / 2, cpu::kCodeBlock});
  py::array_t<uint16_t> out(nb * cpu::kCodeBlock);
  const uint8_t *cp = static_cast<const uint8_t*>(codes.data()), *lp = static_cast<const uint8_t*>(lut.data());
  uint16_t* op = out.mutable_data();
  native_call([&] { cpu::scan_ops(active_isa()).lut_scan(cp, nb, nsub, lp, op); });
  return out;
}

// The second level's table of w and the bits' sums of the documents `rows`.
py::tuple py_residual_sums(py::tuple codes, int64_t n, py::array w, py::array rows) {
  check_shape(w, "w", {-1});
  const float* wp = parse_finite(w, "w", {w.shape(0)});
  const CodesView c = parse_codes(codes, count_arg(n, "n"), w.shape(0));
  if (!c.res_bits) throw std::invalid_argument("codes: no second level (residual bits)");
  const int64_t* rp = parse_ids(rows, "rows", {-1}, c.n);
  const int64_t m = rows.shape(0);
  std::vector<uint8_t> lut(static_cast<size_t>(c.nsub * 16));
  py::array_t<int32_t> g(c.rr), out(m);
  int32_t *gp = g.mutable_data(), *op = out.mutable_data();
  native_call([&] {
    graph::build_residual(c, wp, graph::build_lut(c, wp, lut.data()), gp);
    cpu::scan_ops(active_isa()).bit_sums(c.res_bits, c.rr / 8, rp, m, gp, op);
  });
  return py::make_tuple(g, out);
}

py::tuple py_linearize(py::list weights, py::list biases, py::dict flags, py::array at, bool relaxed) {
  QNetArgs h;
  parse_qnet(h, weights, biases, flags);
  const int64_t Q = h.view.num_queries, d = h.dims[0];
  const float* ap = parse_finite(at, "at", {Q, d});
  py::array_t<float> g({Q, d});
  py::array_t<bool> ok(Q);
  float* gp = g.mutable_data();
  bool* okp = ok.mutable_data();
  native_call([&] {
    h.widen();
    graph::LinearizeScratch s;
    for (int64_t q = 0; q < Q; ++q) okp[q] = graph::linearize(h.view, q, ap + q * d, relaxed, gp + q * d, s);
  });
  return py::make_tuple(g, ok);
}

}  // namespace

void register_graph(py::module_& m) {
  m.def("graph_paper_search", &py_paper_search, py::arg("weights"), py::arg("biases"), py::arg("flags"),
        py::arg("vectors"), py::arg("graph"), py::arg("entries"), py::arg("k"), py::arg("ncandidates"),
        py::arg("max_iter"), py::arg("early_stop"), py::arg("num_threads"), py::arg("scales") = py::none(),
        py::arg("allow") = py::none(), "The paper's graph search: (scores (Q, k), ids (Q, k), stats (Q, 5) int64); allow: None or uint8 (1 or Q, "
        "n), nonzero = a document the query may return.");
  m.def("graph_default_search", &py_default_search, py::arg("weights"), py::arg("biases"), py::arg("flags"),
        py::arg("vectors"), py::arg("graph"), py::arg("mean"), py::arg("samples"), py::arg("codes"), py::arg("k"),
        py::arg("ef"), py::arg("ef_lin"), py::arg("width"), py::arg("max_steps"), py::arg("passes"),
        py::arg("shortlist"), py::arg("rerank"), py::arg("residual_rows"), py::arg("bf16"), py::arg("num_threads"),
        py::arg("scales") = py::none(),
        py::arg("allow") = py::none(),
        "The default graph search of a query batch: (scores (Q, k), ids (Q, k), stats (Q, 5) int64: scored, "
        "steps, linear rows, coded rows, fallback); allow: None or uint8 (1 or Q, n), nonzero = a document the "
        "query may return.");
  m.def("graph_linear_topk", &py_linear_topk, py::arg("vectors"), py::arg("w"), py::arg("m"), py::arg("num_threads"),
        py::arg("scales") = py::none(),
        "Exact top-m by x . w_q over all rows: (scores (Q, min(m, n)), ids), best first, ties to the lower id.");
  m.def("graph_rows_topk", &py_rows_topk, py::arg("vectors"), py::arg("ids"), py::arg("w"), py::arg("m"),
        py::arg("num_threads"), py::arg("scales") = py::none(), "Top-m of the rows ids[q] ((Q, S) distinct) by x . w_q: (scores, ids).");
  m.def("graph_codes_topk", &py_codes_topk, py::arg("codes"), py::arg("vectors"), py::arg("w"), py::arg("rerank"),
        py::arg("m"), py::arg("num_threads"), py::arg("scales") = py::none(), py::arg("residual_rows") = 0,
        "Top-m by x . w_q among the `rerank` best code estimates (with a second level and residual_rows > rerank: "
        "the rerank best two-level estimates of the residual_rows best first-level ones): (scores (Q, min(m, n)), ids).");
  m.def("graph_codes_lut", &py_codes_lut, py::arg("codes"), py::arg("n"), py::arg("w"),
        "The uint8 lookup tables (nsub, 16) of direction w.");
  m.def("graph_residual_sums", &py_residual_sums, py::arg("codes"), py::arg("n"), py::arg("w"), py::arg("rows"),
        "(the second level's int32 table (rr,) of direction w, the int32 sums of its bits over rows (m,)).");
  m.def("graph_codes_sums", &py_codes_sums, py::arg("codes"), py::arg("lut"), py::arg("n"),
        "The uint16 table sums of every document (padded to a multiple of 32).");
  m.def("graph_linearize", &py_linearize, py::arg("weights"), py::arg("biases"), py::arg("flags"), py::arg("at"),
        py::arg("relaxed"),
        "Closed-form gradients (Q, d) of the q-nets at points at (Q, d), and whether each is finite and non-zero.");
}

}  // namespace hyp
