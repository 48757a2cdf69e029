// Graph search algorithms over one batch of q-nets (pure C++: views in, caller buffers
// out). engine/graph/native.py reaches them through bindings_graph.cpp in one call per
// search; engine/graph/torch_search.py is their twin in torch ops for any device.
#pragma once

#include <cstdint>

#include "cpu/qnet_kernel.h"
#include "graph/graph_types.h"
#include "graph/linear.h"

namespace hyp {
namespace graph {

// What a search reports per query.
struct QueryStats {
  int64_t scored = 0;       // q-net evaluations
  int64_t steps = 0;        // expansion steps
  int64_t linear_rows = 0;  // stored rows read for exact x . w
  int64_t coded_rows = 0;   // documents whose codes were scanned
  int64_t fallback = 0;     // 1: the linearisation was degenerate and another one was used
};

// The paper's algorithm (Killingback et al., SIGIR 2025, neighbour expansion): score the
// entry points; each step keeps the best `ncandidates` of what it scored, adds them to a
// running top-k, and scores their unvisited neighbours next; stop after max_iter steps,
// when nothing is left, or (early_stop) when a step adds nothing to the top-k.
struct PaperParams {
  int64_t k = 10, ncandidates = 50, max_iter = 16;
  bool early_stop = true;
};

// Returns false when the graph holds a neighbour id outside [-1, n).
// Only documents that `allow` admits enter the results (the walk goes through all).
bool paper_search(const QNetView& qn, const VectorsView& v, const GraphView& g, const int64_t* entries, int64_t E,
                  const AllowView& allow, const PaperParams& p, int threads, const ResultView& out, QueryStats* stats);

// The default: linearise the q-net at the corpus mean in closed form, take the documents
// with the largest x . w (from the codes and an exact re-rank, or an exact scan), score
// the best ef_lin of them with the q-net and refine by a best-first beam search on the
// graph (list ef, `width` expansions per step); with passes = 2, linearise again at the
// best document found and continue from the best ef_lin of the first list (its top
// `shortlist`) under the new direction. See engine/graph/default.py for the rationale.
// With `allow`, the linear candidates are the allowed documents only, the beam walks
// through every document and only allowed ones enter the results.
struct DefaultParams {
  int64_t k = 10, ef = 32, ef_lin = 128, width = 4, max_steps = 256, passes = 2;
  int64_t shortlist = 0;  // rows of the first linear list kept for the second pass
  int64_t rerank = 0;     // codes: approximate candidates re-ranked exactly
  int64_t residual_rows = 0;  // codes with a second level: first-level candidates estimated again
  bool use_codes = false;
  bool bf16 = false;      // score candidates with bf16 weights (then the final list exactly)
};

bool default_search(const QNetView& qn, const VectorsView& v, const GraphView& g, const CodesView* codes,
                    const float* mean, const int64_t* samples, int64_t nsamples, const AllowView& allow,
                    const DefaultParams& p,
                    int threads, const ResultView& out, QueryStats* stats);

}  // namespace graph
}  // namespace hyp
