#include <algorithm>
#include <atomic>
#include <vector>

#include "graph/search.h"

namespace hyp {
namespace graph {

bool paper_search(const QNetView& qn, const VectorsView& v, const GraphView& g, const int64_t* entries, int64_t E,
                  const AllowView& allow, const PaperParams& p, int threads, const ResultView& out, QueryStats* stats) {
  const int64_t Q = qn.num_queries;
  std::atomic<bool> ok{true};
  const Split sp = split_threads(Q, threads);
  struct State {
    Visited* vis;
    std::vector<int64_t> cand, next;
    std::vector<float> sc;
    std::vector<Scored> items, heap;
  };
  for_queries(
      Q, sp.outer, [&] { return State{&Visited::local(v.n), {}, {}, {}, {}, {}}; },
      [&](State& S, int64_t q) {
      Visited& vis = *S.vis;
      std::vector<int64_t>&cand = S.cand, &next = S.next;
      std::vector<float>& sc = S.sc;
      std::vector<Scored>&items = S.items, &heap = S.heap;
      PackedQNet net(qn, q);
      const uint8_t* al = allow.row(q);
      vis.next();
      cand.clear();
      for (int64_t i = 0; i < E; ++i)
        if (vis.test_set(entries[i])) cand.push_back(entries[i]);
      heap.clear();
      QueryStats st;
      const int64_t top_n = std::max(p.ncandidates, p.k);
      // A heap whose front is the worst item kept.
      auto heap_cmp = [](const Scored& a, const Scored& b) { return better(a, b); };
      for (int64_t it = 0; it < p.max_iter && !cand.empty(); ++it) {
        const int64_t C = static_cast<int64_t>(cand.size());
        sc.resize(C);
        score_ids(net, v, cand.data(), C, sc.data(), sp.inner);
        st.scored += C;
        ++st.steps;
        items.resize(C);
        for (int64_t i = 0; i < C; ++i) items[i] = Scored{sc[i], cand[i]};
        const int64_t T = std::min(top_n, C);
        std::partial_sort(items.begin(), items.begin() + T, items.end(), better<Scored>);
        next.clear();
        int64_t added = 0;
        for (int64_t r = 0; r < T; ++r) {
          const Scored& x = items[r];
          if (al && !al[x.id]) {
            // not a result, but still a way through the graph
          } else if (static_cast<int64_t>(heap.size()) < p.k) {
            heap.push_back(x);
            std::push_heap(heap.begin(), heap.end(), heap_cmp);
            ++added;
          } else if (better(x, heap.front())) {
            std::pop_heap(heap.begin(), heap.end(), heap_cmp);
            heap.back() = x;
            std::push_heap(heap.begin(), heap.end(), heap_cmp);
            ++added;
          }
          if (r < p.ncandidates && !expand(g, x.id, vis, next)) ok.store(false, std::memory_order_relaxed);
        }
        if (added == 0 && p.early_stop) break;
        cand.swap(next);
      }
      std::sort(heap.begin(), heap.end(), better<Scored>);
      out.write(q, heap, static_cast<int64_t>(heap.size()));
      stats[q] = st;
      });
  return ok.load();
}

}  // namespace graph
}  // namespace hyp
