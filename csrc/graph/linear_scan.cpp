// The linear stage of the default graph search (engine._C.graph_linear_topk): for every
// query q the m documents with the largest x . w_q, read straight from the stored vectors
// (float32, float16 or bfloat16 converted to float32 in registers). At batch 1 the scan is
// bound by memory bandwidth, so reading 2-byte rows instead of a float32 copy of the corpus
// halves its time and saves that copy (3 GB at 1M x 768); rows are split over the threads
// so that one query uses every core.
//
// Every row's dot product is computed in one fixed order whatever the block, thread or
// batch it is part of, and the kept set is the top-m under (score desc, id asc), a strict
// total order: the result does not depend on the number of threads or queries.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "array_check.h"
#include "qnet_args.h"
#include "ranking.h"
#include "cpu/isa.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#include <immintrin.h>

namespace hyp {

namespace py = pybind11;

namespace {

enum class VType { F32, F16, BF16 };

constexpr int kRows = 8;  // rows converted and dotted together (8 accumulators in flight)

// ------------------------------------------------------------------ portable path

inline float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while (!(mant & 0x400u)) {
        mant <<= 1;
        --exp;
      }
      bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline float load_one(const void* base, VType t, int64_t i) {
  switch (t) {
    case VType::F32: return static_cast<const float*>(base)[i];
    case VType::F16: return half_to_float(static_cast<const uint16_t*>(base)[i]);
    case VType::BF16: {
      const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(base)[i]) << 16;
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    }
  }
  return 0.f;
}

// out[r] = x_{rows[r]} . w for r < nr: eight partial sums by lane (j mod 8), added
// pairwise at the end, the same order as the AVX2 path's lanes. Rows come as indices so
// that the full scan and the shortlist re-ranking (rows gathered by id) run the same code
// and give every row the same bits: a shortlist of all n rows reproduces the full scan.
void dots_portable(const void* x, VType t, int64_t d, const int64_t* rows, int nr, const float* w, float* out) {
  for (int r = 0; r < nr; ++r) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const int64_t base = rows[r] * d;
    for (int64_t j = 0; j < d; ++j) acc[j & 7] += load_one(x, t, base + j) * w[j];
    out[r] = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
  }
}

// ------------------------------------------------------------------ AVX2 path

__attribute__((target("avx2,fma,f16c"))) inline __m256 load8(const void* x, VType t, int64_t i) {
  switch (t) {
    case VType::F32: return _mm256_loadu_ps(static_cast<const float*>(x) + i);
    case VType::F16:
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(x) + i)));
    case VType::BF16: {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(x) + i));
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
  }
  return _mm256_setzero_ps();
}

__attribute__((target("avx2,fma,f16c"))) inline float hsum(__m256 v) {
  // Lanes (0+4, 1+5, 2+6, 3+7), then (0+2, 1+3), then (0+1): the portable order.
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  const __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
  return _mm_cvtss_f32(s1);
}

template <VType T>
__attribute__((target("avx2,fma,f16c"))) void dots_avx2_t(const void* x, int64_t d, const int64_t* rows, int nr,
                                                         const float* w, float* out) {
  const int64_t d8 = d & ~int64_t(7);
  int r = 0;
  for (; r + 4 <= nr; r += 4) {  // four rows share each load of w
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const int64_t b[4] = {rows[r] * d, rows[r + 1] * d, rows[r + 2] * d, rows[r + 3] * d};
    for (int64_t j = 0; j < d8; j += 8) {
      const __m256 wj = _mm256_loadu_ps(w + j);
      a0 = _mm256_fmadd_ps(load8(x, T, b[0] + j), wj, a0);
      a1 = _mm256_fmadd_ps(load8(x, T, b[1] + j), wj, a1);
      a2 = _mm256_fmadd_ps(load8(x, T, b[2] + j), wj, a2);
      a3 = _mm256_fmadd_ps(load8(x, T, b[3] + j), wj, a3);
    }
    const __m256 acc[4] = {a0, a1, a2, a3};
    for (int i = 0; i < 4; ++i) {
      float tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      _mm256_storeu_ps(tail, acc[i]);
      for (int64_t j = d8; j < d; ++j) tail[j & 7] = std::fma(load_one(x, T, b[i] + j), w[j], tail[j & 7]);
      out[r + i] = hsum(_mm256_loadu_ps(tail));
    }
  }
  for (; r < nr; ++r) {  // the same per-row order as above
    __m256 a = _mm256_setzero_ps();
    const int64_t b = rows[r] * d;
    for (int64_t j = 0; j < d8; j += 8) a = _mm256_fmadd_ps(load8(x, T, b + j), _mm256_loadu_ps(w + j), a);
    float tail[8];
    _mm256_storeu_ps(tail, a);
    for (int64_t j = d8; j < d; ++j) tail[j & 7] = std::fma(load_one(x, T, b + j), w[j], tail[j & 7]);
    out[r] = hsum(_mm256_loadu_ps(tail));
  }
}

using DotsFn = void (*)(const void*, int64_t, const int64_t*, int, const float*, float*);

DotsFn pick_avx2(VType t) {
  switch (t) {
    case VType::F32: return &dots_avx2_t<VType::F32>;
    case VType::F16: return &dots_avx2_t<VType::F16>;
    case VType::BF16: return &dots_avx2_t<VType::BF16>;
  }
  return nullptr;
}

// The AVX2 dot products when allowed and supported; nullptr selects the portable ones.
DotsFn pick_dots(VType t, bool allow_simd) {
  return allow_simd && isa_supported(Isa::Avx2) ? pick_avx2(t) : nullptr;
}

// ------------------------------------------------------------------ top-m

using Item = Scored;

// The best m items offered, as a buffer cut back to m by nth_element whenever it reaches
// 2m: amortised O(1) per offer, where a heap costs O(log m) per accepted item (with the
// first pass's shortlist of tens of thousands of rows a heap made the scan several times
// slower). `worst` is the m-th best after the last cut: anything not better is refused.
// The kept set is the exact top-m under (score desc, id asc), a strict total order.
struct TopM {
  std::vector<Item> h;
  int64_t m = 0;
  bool cut = false;  // `worst` is valid (at least one cut happened)
  Item worst{0.f, 0};
  void offer(float s, int64_t id) {
    const Item it{s, id};
    if (cut && !better(it, worst)) return;
    h.push_back(it);
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

// What both entry points return: the best `keep` (score, id) of every query, best first.
struct RankedRows {
  int64_t keep;
  py::array_t<float> scores;
  py::array_t<int64_t> ids;
  RankedRows(int64_t Q, int64_t k) : keep(k), scores({Q, k}), ids({Q, k}) {}
  // Row q: the best `keep` of `items` (reordered in place) by (score desc, id asc).
  void write(int64_t q, std::vector<Item>& items) {
    std::partial_sort(items.begin(), items.begin() + keep, items.end(), better<Item>);
    float* os = scores.mutable_data();
    int64_t* oi = ids.mutable_data();
    for (int64_t j = 0; j < keep; ++j) {
      os[q * keep + j] = items[j].s;
      oi[q * keep + j] = items[j].id;
    }
  }
  py::tuple result() const { return py::make_tuple(scores, ids); }
};

// Checks shared by both entry points: w (Q, d) float32 and finite, vectors (n, d) of a
// supported dtype, m and num_threads positive. Returns the vectors' type.
VType check_inputs(const py::array& vectors, const py::array& w, int64_t m, int num_threads) {
  check_kind(w, "w", Kind::F32);
  check_shape(w, "w", {-1, -1});
  const int64_t Q = w.shape(0), d = w.shape(1);
  if (d < 1) throw std::invalid_argument("w: dimension must be positive");
  const DType dt = float_dtype(vectors, "vectors");
  const VType vt = dt == DType::F32 ? VType::F32 : dt == DType::F16 ? VType::F16 : VType::BF16;
  check_shape(vectors, "vectors", {-1, d});
  if (m < 1) throw std::invalid_argument("m must be at least 1");
  threads_arg(num_threads);
  const float* wp = static_cast<const float*>(w.data());
  for (int64_t i = 0; i < Q * d; ++i)
    if (!std::isfinite(wp[i])) throw std::invalid_argument("w holds a non-finite value");
  return vt;
}

py::tuple linear_topk(py::array vectors, py::array w, int64_t m, int num_threads, bool allow_simd) {
  const VType vt = check_inputs(vectors, w, m, num_threads);
  const int64_t Q = w.shape(0), d = w.shape(1);
  const int64_t n = vectors.shape(0);
  const int64_t keep = std::min(m, n);
  const float* wp = static_cast<const float*>(w.data());
  const void* xp = vectors.data();
  const DotsFn simd = pick_dots(vt, allow_simd);
  RankedRows out(Q, keep);
  if (Q == 0 || n == 0) return out.result();
  constexpr int64_t kChunk = 2048;  // rows per scheduled task: several per thread at 1M rows
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const int nt = static_cast<int>(std::min<int64_t>(num_threads, chunks));
  std::vector<std::vector<TopM>> tops(nt, std::vector<TopM>(Q));
  {
    py::gil_scoped_release release;
#pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
      const int tid = omp_get_thread_num();
#else
      const int tid = 0;
#endif
      std::vector<TopM>& mine = tops[tid];
      for (auto& t : mine) t.m = keep, t.h.reserve(std::min<int64_t>(2 * keep, 4096));
      float sc[kRows];
#pragma omp for schedule(dynamic, 1)
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t lo = c * kChunk, hi = std::min(n, lo + kChunk);
        // Rows outer, queries inner: a block of rows read from memory serves every query
        // while it is in cache.
        for (int64_t r0 = lo; r0 < hi; r0 += kRows) {
          const int nr = static_cast<int>(std::min<int64_t>(kRows, hi - r0));
          int64_t rows[kRows];
          for (int r = 0; r < nr; ++r) rows[r] = r0 + r;
          for (int64_t q = 0; q < Q; ++q) {
            if (simd) simd(xp, d, rows, nr, wp + q * d, sc);
            else dots_portable(xp, vt, d, rows, nr, wp + q * d, sc);
            for (int r = 0; r < nr; ++r) mine[q].offer(sc[r], r0 + r);
          }
        }
      }
    }
  }
  std::vector<Item> all;
  for (int64_t q = 0; q < Q; ++q) {
    all.clear();
    for (int t = 0; t < nt; ++t) all.insert(all.end(), tops[t][q].h.begin(), tops[t][q].h.end());
    out.write(q, all);
  }
  return out.result();
}

// The second pass of the default search with a shortlist: for every query q the m rows
// among ids[q] (a shortlist from the first pass's scan) with the largest x . w_q. Only
// those S rows are read (gathered by id), instead of the whole corpus again; each row's
// dot product is the bits linear_topk gives it, and the order is the same (score desc,
// id asc), so a shortlist holding every row returns exactly linear_topk's result.
py::tuple rows_topk(py::array vectors, py::array ids, py::array w, int64_t m, int num_threads,
                    bool allow_simd) {
  const VType vt = check_inputs(vectors, w, m, num_threads);
  const int64_t Q = w.shape(0), d = w.shape(1);
  check_kind(ids, "ids", Kind::I64);
  check_shape(ids, "ids", {Q, -1});
  const int64_t n = vectors.shape(0), S = ids.shape(1);
  const int64_t* ip = static_cast<const int64_t*>(ids.data());
  // Out-of-range ids would read outside the corpus; a repeated id would be returned twice.
  {
    std::vector<int64_t> row;
    for (int64_t q = 0; q < Q; ++q) {
      row.assign(ip + q * S, ip + (q + 1) * S);
      for (int64_t v : row)
        if (v < 0 || v >= n)
          throw std::invalid_argument("ids: value " + std::to_string(v) + " outside [0, " + std::to_string(n) + ")");
      std::sort(row.begin(), row.end());
      if (std::adjacent_find(row.begin(), row.end()) != row.end())
        throw std::invalid_argument("ids: query " + std::to_string(q) + " lists a document twice");
    }
  }
  const int64_t keep = std::min(m, S);
  const float* wp = static_cast<const float*>(w.data());
  const void* xp = vectors.data();
  const DotsFn simd = pick_dots(vt, allow_simd);
  RankedRows out(Q, keep);
  if (Q == 0 || S == 0) return out.result();
  std::vector<float> sc(static_cast<size_t>(Q * S));
  constexpr int64_t kChunk = 256;  // rows per task: S is a few thousand, split over threads
  const int64_t per_q = (S + kChunk - 1) / kChunk, tasks = Q * per_q;
  const int nt = static_cast<int>(std::min<int64_t>(num_threads, tasks));
  {
    py::gil_scoped_release release;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t q = t / per_q, lo = (t % per_q) * kChunk, hi = std::min(S, lo + kChunk);
      for (int64_t r0 = lo; r0 < hi; r0 += kRows) {
        const int nr = static_cast<int>(std::min<int64_t>(kRows, hi - r0));
        if (simd) simd(xp, d, ip + q * S + r0, nr, wp + q * d, sc.data() + q * S + r0);
        else dots_portable(xp, vt, d, ip + q * S + r0, nr, wp + q * d, sc.data() + q * S + r0);
      }
    }
  }
  std::vector<Item> all(static_cast<size_t>(S));
  for (int64_t q = 0; q < Q; ++q) {
    for (int64_t j = 0; j < S; ++j) all[j] = Item{sc[q * S + j], ip[q * S + j]};
    out.write(q, all);
  }
  return out.result();
}

}  // namespace

void register_graph_scan(py::module_& m) {
  m.def("graph_rows_topk", &rows_topk, py::arg("vectors"), py::arg("ids"), py::arg("w"), py::arg("m"),
        py::arg("num_threads"), py::arg("allow_simd") = true,
        "Top-m of the rows ids[q] (int64, (Q, S), distinct, in [0, n)) by x . w_q: (scores (Q, "
        "min(m, S)), ids), best first, ties to the lower id; the same bits as graph_linear_topk.");
  m.def("graph_linear_topk", &linear_topk, py::arg("vectors"), py::arg("w"), py::arg("m"),
        py::arg("num_threads"), py::arg("allow_simd") = true,
        "Top-m documents by x . w_q for every row of w: (scores (Q, min(m, n)), ids), best first, "
        "ties to the lower id.");
}

}  // namespace hyp
