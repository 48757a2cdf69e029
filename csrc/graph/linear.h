// Linear stages of the default graph search: for a direction w, the documents with the
// largest x . w, exactly (a pass over the stored rows, or over a given set of rows) or
// approximately from the compressed codes and then exactly over what those keep.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/qnet_kernel.h"
#include "cpu/scan_ops.h"
#include "ranking.h"

namespace hyp {
namespace graph {

// The best m items offered under (score desc, id asc): a buffer cut back to m by
// nth_element whenever it reaches 2m, amortised O(1) per offer.
template <class S>
struct TopM {
  struct Item {
    S s;
    int64_t id;
  };
  std::vector<Item> h;
  int64_t m = 0;
  bool cut = false;
  Item worst{S(), 0};
  explicit TopM(int64_t m_ = 0) : m(m_) {}
  bool wants(S s, int64_t id) const { return !cut || better(Item{s, id}, worst); }
  void offer(S s, int64_t id) {
    if (!wants(s, id)) return;
    h.push_back(Item{s, id});
    if (static_cast<int64_t>(h.size()) >= 2 * m) shrink();
  }
  void shrink() {
    if (static_cast<int64_t>(h.size()) <= m) return;
    std::nth_element(h.begin(), h.begin() + (m - 1), h.end(), better<Item>);
    h.resize(m);
    worst = h[m - 1];
    cut = true;
  }
};

// Exact top-m by x . w over all n rows of v, best first, ties to the lower id (`threads`
// threads over row chunks). Every row's value is ops.dots's.
// `allow` (optional, (n,) nonzero = allowed): only allowed rows are offered.
void linear_topk(const cpu::ScanOps& ops, const VectorsView& v, const float* w, int64_t m, int threads,
                 std::vector<Scored>& out, const uint8_t* allow = nullptr);

// As linear_topk over the rows ids[0..S) only (distinct, in [0, n)).
void rows_topk(const cpu::ScanOps& ops, const VectorsView& v, const int64_t* ids, int64_t S, const float* w,
               int64_t m, int threads, std::vector<Scored>& out);

// The compressed candidate codes (engine/graph/codes.py builds them): every document's
// rotated, centred vector quantised per coordinate with 1, 2 or 4 bits, the codes of up
// to four coordinates sharing one 4-bit sub-code. Sub-code j's bits are the slots
// s = 0..3 in order: slot s holds coordinate dims[j][s] (-1: unused) in bits[j][s] bits;
// levels[c][0..2^bits) are coordinate c's reconstruction values.
struct CodesView {
  const uint8_t* codes = nullptr;  // (ceil(n / 32), nsub / 2, 32), see cpu::kCodeBlock
  int64_t n = 0, nsub = 0;
  const float* rotation = nullptr;  // (d, r): column c maps x - mean to coordinate c
  int64_t d = 0, r = 0;
  const int32_t* dims = nullptr;   // (nsub, 4)
  const int32_t* bits = nullptr;   // (nsub, 4)
  const float* levels = nullptr;   // (r, 16)
  // The optional second level (ResidualBits in engine/graph/codes.py): one bit per
  // coordinate of the residual, row by row; absent when res_bits is null.
  const uint8_t* res_bits = nullptr;      // (n, rr / 8)
  int64_t rr = 0;
  const float* res_rotation = nullptr;    // (d, rr)
  const float* res_levels = nullptr;      // (rr, 2): the values of bit 0 and bit 1
};

// Units of the second level's integers per table unit (RESIDUAL_UNITS in codes.py).
constexpr int kResidualUnits = 64;

// Approximate top-m: the `rerank` documents with the largest code estimate of x . w
// (ties to the lower id), then the exact x . w of those, keeping the best m, best first.
// With the second level and residual_rows > rerank: the `residual_rows` best first-level
// estimates are estimated again with both levels (kResidualUnits * table sum + bit sum,
// integers) and the `rerank` best of those re-ranked exactly (n < 2^33; beyond, the
// first level alone).
// `allow` (optional): only allowed documents are selected.
void codes_topk(const cpu::ScanOps& ops, const CodesView& c, const VectorsView& v, const float* w,
                int64_t rerank, int64_t residual_rows, int64_t m, int threads, std::vector<Scored>& out,
                const uint8_t* allow = nullptr);

// The uint8 lookup tables of w (nsub x 16): sub-code j's entry e estimates the part of
// (x - mean) . w of the coordinates it holds, shifted and scaled so that every entry is in
// [0, 255] with one scale for all tables (the sum then ranks like the estimate). Returns
// the scale (table units per unit of x . w; 0 when every table is flat).
double build_lut(const CodesView& c, const float* w, uint8_t* lut);

// The second level's table of w (rr int32): what bit k adds to an estimate, in units of
// 1 / kResidualUnits of a table unit at `scale`, each bounded so the sum fits in int32.
void build_residual(const CodesView& c, const float* w, double scale, int32_t* g);

}  // namespace graph
}  // namespace hyp
