#include <algorithm>
#include <atomic>
#include <memory>
#include <vector>

#include "cpu/isa.h"
#include "cpu/kernel_ops.h"
#include "graph/linearize.h"
#include "graph/search.h"

namespace hyp {
namespace graph {

namespace {

// A best-first beam: a list of at most `ef` scored documents, best first; each step
// takes the `width` best unexpanded ones and scores their unvisited neighbours. With an
// allow bitmap the walk still goes through every document, and the results are a second
// list of the best `ef` allowed documents scored.
class Beam {
 public:
  Beam(const GraphView& g, Visited& vis, int64_t ef, int64_t width, const uint8_t* allow)
      : g_(g), vis_(vis), ef_(ef), width_(width), allow_(allow) {}

  // Scores the documents of ids[0..m) not yet visited and merges them into the list.
  template <class Score>
  void add(const int64_t* ids, int64_t m, Score& score) {
    fresh_.clear();
    for (int64_t j = 0; j < m; ++j)
      if (vis_.test_set(ids[j])) fresh_.push_back(ids[j]);
    merge(score);
  }

  template <class Score>
  void run(int64_t max_steps, Score& score) {
    for (int64_t st = 0; st < max_steps; ++st) {
      fresh_.clear();
      int64_t picked = 0;
      for (auto& e : list_) {
        if (e.expanded) continue;
        e.expanded = true;
        ok_ &= expand(g_, e.id, vis_, fresh_);
        if (++picked == width_) break;
      }
      if (picked == 0) break;
      ++steps_;
      merge(score);
    }
  }

  // Scores every entry of the results again (with an exact q-net after a bf16 search)
  // and sorts them again.
  template <class Score>
  void rescore(Score& score) {
    std::vector<Entry>& r = allow_ ? res_ : list_;
    const int64_t m = static_cast<int64_t>(r.size());
    if (m == 0) return;
    fresh_.resize(m);
    sc_.resize(m);
    for (int64_t j = 0; j < m; ++j) fresh_[j] = r[j].id;
    score(fresh_.data(), m, sc_.data());
    for (int64_t j = 0; j < m; ++j) r[j].s = sc_[j];
    std::sort(r.begin(), r.end(), better<Entry>);
  }

  const std::vector<Entry>& list() const { return list_; }
  // What the search returns: the walk's list, or the allowed documents met.
  const std::vector<Entry>& results() const { return allow_ ? res_ : list_; }
  int64_t scored() const { return scored_; }
  int64_t steps() const { return steps_; }
  bool graph_ok() const { return ok_; }

 private:
  template <class Score>
  void merge(Score& score) {
    const int64_t m = static_cast<int64_t>(fresh_.size());
    if (m == 0) return;
    sc_.resize(m);
    score(fresh_.data(), m, sc_.data());
    scored_ += m;
    for (int64_t j = 0; j < m; ++j) list_.push_back(Entry{sc_[j], fresh_[j], false});
    cut(list_);
    if (allow_) {
      for (int64_t j = 0; j < m; ++j)
        if (allow_[fresh_[j]]) res_.push_back(Entry{sc_[j], fresh_[j], false});
      cut(res_);
    }
  }

  void cut(std::vector<Entry>& l) const {
    const int64_t keep = std::min<int64_t>(ef_, static_cast<int64_t>(l.size()));
    std::partial_sort(l.begin(), l.begin() + keep, l.end(), better<Entry>);
    l.resize(keep);
  }

  const GraphView& g_;
  Visited& vis_;
  int64_t ef_, width_;
  const uint8_t* allow_;
  std::vector<Entry> list_, res_;
  std::vector<int64_t> fresh_;
  std::vector<float> sc_;
  int64_t scored_ = 0, steps_ = 0;
  bool ok_ = true;
};

// The direction of query q at `at`: the gradient, or where it vanishes (a relu inactive
// around the point) the relaxed one; false when both are degenerate.
bool direction(const QNetView& qn, int64_t q, const float* at, float* w, LinearizeScratch& s, int64_t& fallback) {
  if (linearize(qn, q, at, false, w, s)) return true;
  fallback = 1;
  return linearize(qn, q, at, true, w, s);
}

}  // namespace

bool default_search(const QNetView& qn, const VectorsView& v, const GraphView& g, const CodesView* codes,
                    const float* mean, const int64_t* samples, int64_t nsamples, const AllowView& allow,
                    const DefaultParams& p, int threads, const ResultView& out, QueryStats* stats) {
  const int64_t Q = qn.num_queries, d = v.d;
  const cpu::ScanOps& ops = cpu::scan_ops(active_isa());
  const cpu::KernelOps& kops = cpu::kernel_ops(active_isa());
  const int64_t ef_q = std::max(p.ef, p.k);
  const int64_t keep = std::max(p.shortlist, p.ef_lin);
  std::atomic<bool> ok{true};
  const Split sp = split_threads(Q, threads);
  struct State {
    Visited* vis;
    LinearizeScratch ls;
    std::vector<float> w, at;
    std::vector<Scored> lin, lin2;
    std::vector<int64_t> ids;
    std::unique_ptr<PackedQNet> net, exact;  // repacked per query: one buffer per participant
  };
  auto init = [&] {
    return State{&Visited::local(v.n), {}, std::vector<float>(static_cast<size_t>(d)), std::vector<float>(static_cast<size_t>(d)),
                 {}, {}, {}, nullptr, nullptr};
  };
  // Query q packed into `slot` (made on first use, then repacked in place).
  auto packed = [&](std::unique_ptr<PackedQNet>& slot, int64_t q, bool bf16) -> PackedQNet& {
    if (slot) slot->repack(qn, q, bf16, sp.inner);
    else slot.reset(new PackedQNet(qn, q, bf16, sp.inner));
    return *slot;
  };
  for_queries(Q, sp.outer, init, [&](State& S, int64_t q) {
      Visited& vis = *S.vis;
      LinearizeScratch& ls = S.ls;
      std::vector<float>&w = S.w, &at = S.at;
      std::vector<Scored>&lin = S.lin, &lin2 = S.lin2;
      std::vector<int64_t>& ids = S.ids;
      const PackedQNet& net = packed(S.net, q, p.bf16);
      auto score = [&](const int64_t* x, int64_t m, float* o) { score_ids(net, v, x, m, o, sp.inner); };
      vis.next();
      QueryStats st;
      const uint8_t* al = allow.row(q);
      Beam beam(g, vis, ef_q, p.width, al);
      lin.clear();
      if (direction(qn, q, mean, w.data(), ls, st.fallback)) {
        if (p.use_codes) {
          codes_topk(ops, *codes, v, w.data(), p.rerank, p.residual_rows, keep, sp.inner, lin, al);
          st.coded_rows += v.n;
          st.linear_rows += std::min(std::max(p.rerank, keep), v.n);
        } else {
          linear_topk(ops, v, w.data(), keep, sp.inner, lin, al);
          st.linear_rows += v.n;
        }
        ids.clear();
        for (size_t j = 0; j < lin.size() && static_cast<int64_t>(j) < p.ef_lin; ++j) ids.push_back(lin[j].id);
        beam.add(ids.data(), static_cast<int64_t>(ids.size()), score);
      } else {  // no direction at all: start from the fixed sample of documents
        beam.add(samples, nsamples, score);
      }
      beam.run(p.max_steps, score);
      if (p.passes > 1 && !beam.list().empty() && !lin.empty()) {
        const int64_t best = beam.list()[0].id;
        cpu::read_row(kops, v, best, at.data());
        int64_t again = 0;
        if (direction(qn, q, at.data(), w.data(), ls, again)) {
          ids.clear();
          for (const Scored& s : lin) ids.push_back(s.id);
          rows_topk(ops, v, ids.data(), static_cast<int64_t>(ids.size()), w.data(), p.ef_lin, sp.inner, lin2);
          st.linear_rows += static_cast<int64_t>(ids.size());
          ids.clear();
          for (const Scored& s : lin2) ids.push_back(s.id);
          beam.add(ids.data(), static_cast<int64_t>(ids.size()), score);
          beam.run(p.max_steps, score);
        }
      }
      if (net.bf16() && qn.wdtype != DType::BF16) {  // the results carry their exact scores
        const PackedQNet& exact = packed(S.exact, q, false);
        auto exact_score = [&](const int64_t* x, int64_t m, float* o) { score_ids(exact, v, x, m, o, sp.inner); };
        beam.rescore(exact_score);
      }
      if (!beam.graph_ok()) ok.store(false, std::memory_order_relaxed);
      st.scored = beam.scored();
      st.steps = beam.steps();
      out.write(q, beam.results(), std::min<int64_t>(p.k, static_cast<int64_t>(beam.results().size())));
      stats[q] = st;
  });
  return ok.load();
}

}  // namespace graph
}  // namespace hyp
