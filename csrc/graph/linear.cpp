#include "graph/linear.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>

#include "cpu/kernel_ops.h"
#include "cpu/vector_rows.h"
#include "graph/graph_types.h"

namespace hyp {
namespace graph {

namespace {

// x[rows[r]] . w of stored rows. Quantised rows: their stored values are converted (the
// ISA's convert_row) a few rows at a time, dotted by the float32 scan kernel and the dot
// multiplied by the row's scale; a row's result depends on nothing but the row, so the
// full scan and the shortlist re-rank agree bit for bit.
void row_dots(const cpu::ScanOps& ops, const VectorsView& v, const int64_t* rows, int64_t m, const float* w,
              float* out) {
  if (!v.scales) {
    ops.dots(v.dtype, v.data, v.d, rows, m, w, out);
    return;
  }
  const cpu::KernelOps& kops = cpu::kernel_ops(ops.isa);
  constexpr int64_t kRows = 16;
  std::vector<float> buf(static_cast<size_t>(kRows * v.d));
  int64_t local[kRows];
  const char* base = static_cast<const char*>(v.data);
  for (int64_t r0 = 0; r0 < m; r0 += kRows) {
    const int64_t c = std::min(kRows, m - r0);
    for (int64_t i = 0; i < c; ++i) {
      kops.convert_row(v.dtype, base + static_cast<size_t>(rows[r0 + i]) * static_cast<size_t>(v.d),
                       buf.data() + i * v.d, v.d);
      local[i] = i;
    }
    ops.dots(DType::F32, buf.data(), v.d, local, c, w, out + r0);
    for (int64_t i = 0; i < c; ++i) out[r0 + i] *= v.scales[rows[r0 + i]];
  }
}

// Sorts the union of per-thread keepers and writes the best m, best first.
template <class Item>
void best_of(std::vector<Item>& all, int64_t m, std::vector<Scored>& out) {
  const int64_t keep = std::min<int64_t>(m, static_cast<int64_t>(all.size()));
  // Selection, then a sort of the kept part: cheaper than partial_sort's heap of m items
  // when m is a large share (16k candidates, m = 4k: about 0.5 ms less on Zen 4).
  // `better` is a total order (ids distinct), so the result is the same.
  if (keep < static_cast<int64_t>(all.size()))
    std::nth_element(all.begin(), all.begin() + keep, all.end(), better<Item>);
  std::sort(all.begin(), all.begin() + keep, better<Item>);
  out.resize(static_cast<size_t>(keep));
  for (int64_t j = 0; j < keep; ++j) out[j] = Scored{static_cast<float>(all[j].s), all[j].id};
}

// rotation^T w in float64: a direction in the coordinates of a level of the codes
// (rotation: (d, r) row-major).
std::vector<double> rotated(const float* rotation, int64_t d, int64_t r, const float* w) {
  std::vector<double> wr(static_cast<size_t>(r), 0.0);
  for (int64_t i = 0; i < d; ++i) {
    const float* row = rotation + i * r;
    for (int64_t k = 0; k < r; ++k) wr[k] += static_cast<double>(row[k]) * w[i];
  }
  return wr;
}

}  // namespace

void linear_topk(const cpu::ScanOps& ops, const VectorsView& v, const float* w, int64_t m, int threads,
                 std::vector<Scored>& out, const uint8_t* allow) {
  out.clear();
  if (v.n == 0 || m <= 0) return;
  constexpr int64_t kChunk = 2048;  // rows per scheduled task: many per thread at 1M rows
  const int64_t chunks = (v.n + kChunk - 1) / kChunk;
  const int nt = std::min<int64_t>(
      chunks, threads_worth(threads, static_cast<double>(v.n * v.d * vector_dtype_size(v.dtype)) * kMicrosPerRowByte));
  struct Mine {
    TopM<float> top;
    std::vector<int64_t> rows;
    std::vector<float> sc;
  };
  auto init = [&] { return Mine{TopM<float>(m), std::vector<int64_t>(kChunk), std::vector<float>(kChunk)}; };
  PerParticipant<Mine> mine(nt);
  parallel_tasks(nt, chunks, [&](int p, int64_t c) {
    Mine& me = mine.get(p, init);
    const int64_t lo = c * kChunk, hi = std::min(v.n, lo + kChunk);
    std::iota(me.rows.begin(), me.rows.begin() + (hi - lo), lo);
    row_dots(ops, v, me.rows.data(), hi - lo, w, me.sc.data());
    for (int64_t r = 0; r < hi - lo; ++r)
      if (!allow || allow[lo + r]) me.top.offer(me.sc[r], lo + r);
  });
  std::vector<TopM<float>::Item> all;
  for (auto& t : mine.all())
    if (t) all.insert(all.end(), t->top.h.begin(), t->top.h.end());
  best_of(all, m, out);
}

void rows_topk(const cpu::ScanOps& ops, const VectorsView& v, const int64_t* ids, int64_t S, const float* w,
               int64_t m, int threads, std::vector<Scored>& out) {
  out.clear();
  if (S == 0 || m <= 0) return;
  std::vector<float> sc(static_cast<size_t>(S));
  const int64_t row_bytes = v.d * vector_dtype_size(v.dtype);
  const double per_byte = v.n * row_bytes > kCachedCorpusBytes ? kMicrosPerRandomRowByte : kMicrosPerRowByte;
  split_range(threads, S, 256, static_cast<double>(row_bytes) * per_byte,
              [&](int64_t lo, int64_t hi) {
    row_dots(ops, v, ids + lo, hi - lo, w, sc.data() + lo);
  });
  std::vector<Scored> all(static_cast<size_t>(S));
  for (int64_t j = 0; j < S; ++j) all[j] = Scored{sc[j], ids[j]};
  best_of(all, m, out);
}

double build_lut(const CodesView& c, const float* w, uint8_t* lut) {
  const std::vector<double> wr = rotated(c.rotation, c.d, c.r, w);
  std::vector<double> f(static_cast<size_t>(c.nsub * 16), 0.0);
  double range = 0.0;
  std::vector<double> lo(static_cast<size_t>(c.nsub));
  for (int64_t j = 0; j < c.nsub; ++j) {
    for (int e = 0; e < 16; ++e) {
      double s = 0.0;
      int off = 0;
      for (int slot = 0; slot < 4; ++slot) {
        const int32_t dim = c.dims[j * 4 + slot], b = c.bits[j * 4 + slot];
        if (dim < 0 || b == 0) continue;
        const int val = (e >> off) & ((1 << b) - 1);
        s += wr[dim] * c.levels[dim * 16 + val];
        off += b;
      }
      f[j * 16 + e] = s;
    }
    const auto mm = std::minmax_element(f.begin() + j * 16, f.begin() + j * 16 + 16);
    lo[j] = *mm.first;
    range = std::max(range, *mm.second - *mm.first);
  }
  const double scale = range > 0 && std::isfinite(range) ? 255.0 / range : 0.0;
  for (int64_t j = 0; j < c.nsub; ++j)
    for (int e = 0; e < 16; ++e) {
      const double q = std::nearbyint((f[j * 16 + e] - lo[j]) * scale);
      lut[j * 16 + e] = static_cast<uint8_t>(std::min(255.0, std::max(0.0, q)));
    }
  return scale;
}

void build_residual(const CodesView& c, const float* w, double scale, int32_t* g) {
  const std::vector<double> wr = rotated(c.res_rotation, c.d, c.rr, w);
  const double bound = static_cast<double>((int64_t(1) << 29) / c.rr);
  for (int64_t k = 0; k < c.rr; ++k) {
    const double step = static_cast<double>(c.res_levels[2 * k + 1]) - static_cast<double>(c.res_levels[2 * k]);
    const double q = std::nearbyint(wr[k] * step * (scale * kResidualUnits));
    g[k] = static_cast<int32_t>(std::isfinite(q) ? std::min(bound, std::max(-bound, q)) : 0.0);
  }
}

void codes_topk(const cpu::ScanOps& ops, const CodesView& c, const VectorsView& v, const float* w,
                int64_t rerank, int64_t residual_rows, int64_t m, int threads, std::vector<Scored>& out,
                const uint8_t* allow) {
  out.clear();
  if (c.n == 0 || m <= 0) return;
  rerank = std::min(c.n, std::max(rerank, m));
  const bool two = c.res_bits && residual_rows > rerank && c.n < (int64_t(1) << 33);
  const int64_t first = two ? std::min(c.n, residual_rows) : rerank;  // kept by the first level
  std::vector<uint8_t> lut(static_cast<size_t>(c.nsub * 16));
  const double scale = build_lut(c, w, lut.data());
  const int64_t pairs = c.nsub / 2, nblocks = (c.n + cpu::kCodeBlock - 1) / cpu::kCodeBlock;
  constexpr int64_t kChunkBlocks = 256;  // 8192 documents per task
  // Histogram bins: the top bits of the uint16 sums, few enough to stay in L1 while a
  // chunk is counted (every sum's own bin, 64K counters, cost a quarter of the pass).
  constexpr int kShift = 4, kBins = 1 << (16 - kShift);
  const int64_t chunks = (nblocks + kChunkBlocks - 1) / kChunkBlocks;
  const int nt = std::min<int64_t>(chunks, threads_worth(threads, static_cast<double>(c.n * pairs) * kMicrosPerCodeByte));
  // Pass 1: every document's sum, and a histogram of the sums per participant; the
  // `rerank` best are then every document above a bin, and the best of that bin.
  std::vector<uint16_t> sums(static_cast<size_t>(nblocks * cpu::kCodeBlock));
  auto zeros = [] { return std::vector<uint32_t>(kBins, 0); };
  PerParticipant<std::vector<uint32_t>> hist(nt);
  parallel_tasks(nt, chunks, [&](int p, int64_t ch) {
    std::vector<uint32_t>& h = hist.get(p, zeros);
    const int64_t b0 = ch * kChunkBlocks, nb = std::min(kChunkBlocks, nblocks - b0);
    uint16_t* s = sums.data() + b0 * cpu::kCodeBlock;
    ops.lut_scan(c.codes + b0 * pairs * cpu::kCodeBlock, nb, c.nsub, lut.data(), s);
    const int64_t count = std::min(nb * cpu::kCodeBlock, c.n - b0 * cpu::kCodeBlock);
    const int64_t first = b0 * cpu::kCodeBlock;
    for (int64_t i = 0; i < count; ++i)
      if (!allow || allow[first + i]) ++h[s[i] >> kShift];
  });
  int64_t above = 0, cut = kBins - 1;
  for (; cut > 0; --cut) {
    int64_t at = 0;
    for (const auto& h : hist.all())
      if (h) at += (*h)[cut];
    if (above + at >= first) break;
    above += at;
  }
  // Pass 2, by chunks on the threads: the ids at or above the cut bin (the ISA's
  // select_ge) and, with the second level, their bits' sums (the rows read here, in
  // storage order, while the chunk's ids are at hand). Those above the cut bin are all
  // kept: their ids, or with two levels their keys; those in it go on with their sums.
  const uint16_t thr = static_cast<uint16_t>(cut << kShift);
  struct Cand {
    uint16_t s;
    int32_t b;
    int64_t id;
  };
  // A two-level estimate and its id as one key that orders like (estimate desc, id asc):
  // the estimate (within +-2^30: build_residual bounds the bits' sum by 2^29) offset into
  // the top 31 bits, the id's complement in the low 33 (two levels need n < 2^33).
  constexpr uint64_t kIdMask = (uint64_t(1) << 33) - 1;
  auto key_of = [](uint16_t s, int32_t b, int64_t id) {
    const int64_t e = int64_t(kResidualUnits) * s + b + (int64_t(1) << 30);
    return static_cast<uint64_t>(e) << 33 | (kIdMask - static_cast<uint64_t>(id));
  };
  std::vector<int32_t> g;
  if (two) {
    g.resize(static_cast<size_t>(c.rr));
    build_residual(c, w, scale, g.data());
  }
  const int64_t nbytes = c.rr / 8;
  std::vector<std::vector<int64_t>> over(static_cast<size_t>(two ? 0 : chunks));
  std::vector<std::vector<uint64_t>> keys(static_cast<size_t>(two ? chunks : 0));
  std::vector<std::vector<Cand>> bin(static_cast<size_t>(chunks));
  parallel_tasks(nt, chunks, [&](int, int64_t ch) {
    const int64_t lo = ch * kChunkBlocks * cpu::kCodeBlock, hi = std::min(c.n, lo + kChunkBlocks * cpu::kCodeBlock);
    thread_local std::vector<int64_t> sel;
    thread_local std::vector<int32_t> bsum;
    sel.resize(static_cast<size_t>(kChunkBlocks * cpu::kCodeBlock));
    int64_t got = ops.select_ge(sums.data() + lo, hi - lo, thr, lo, sel.data());
    if (allow) got = std::remove_if(sel.begin(), sel.begin() + got, [&](int64_t i) { return !allow[i]; }) - sel.begin();
    if (two) {
      bsum.resize(static_cast<size_t>(got));
      ops.bit_sums(c.res_bits, nbytes, sel.data(), got, g.data(), bsum.data());
    }
    for (int64_t j = 0; j < got; ++j) {
      const int64_t i = sel[j];
      if ((sums[i] >> kShift) <= cut) bin[ch].push_back(Cand{sums[i], two ? bsum[j] : 0, i});
      else if (two) keys[ch].push_back(key_of(sums[i], bsum[j], i));
      else over[ch].push_back(i);
    }
  });
  // The exact top `first` of the sums under the ranking order (sum desc, id asc): every
  // id above the cut bin and the bin's best.
  std::vector<Cand> edge;
  for (const auto& b : bin) edge.insert(edge.end(), b.begin(), b.end());
  const int64_t need = std::min<int64_t>(first - above, static_cast<int64_t>(edge.size()));
  if (need < static_cast<int64_t>(edge.size()))
    std::nth_element(edge.begin(), edge.begin() + need, edge.end(), better<Cand>);
  std::vector<int64_t> ids;
  if (two) {
    // Both levels: the best `rerank` keys, then their ids in storage order (fewer page
    // and TLB misses in the re-rank).
    std::vector<uint64_t> key;
    key.reserve(static_cast<size_t>(first));
    for (const auto& k : keys) key.insert(key.end(), k.begin(), k.end());
    for (int64_t j = 0; j < need; ++j) key.push_back(key_of(edge[j].s, edge[j].b, edge[j].id));
    if (static_cast<int64_t>(key.size()) > rerank) {
      std::nth_element(key.begin(), key.begin() + rerank, key.end(), std::greater<uint64_t>());
      key.resize(static_cast<size_t>(rerank));
    }
    ids.resize(key.size());
    for (size_t j = 0; j < key.size(); ++j) ids[j] = static_cast<int64_t>(kIdMask - (key[j] & kIdMask));
    std::sort(ids.begin(), ids.end());
  } else {
    // In storage order: the ids above the cut bin already are (chunk after chunk); the
    // bin's merge in.
    for (const auto& o : over) ids.insert(ids.end(), o.begin(), o.end());
    const size_t mid = ids.size();
    for (int64_t j = 0; j < need; ++j) ids.push_back(edge[j].id);
    std::sort(ids.begin() + mid, ids.end());
    std::inplace_merge(ids.begin(), ids.begin() + mid, ids.end());
  }
  rows_topk(ops, v, ids.data(), static_cast<int64_t>(ids.size()), w, m, threads, out);
}

}  // namespace graph
}  // namespace hyp
