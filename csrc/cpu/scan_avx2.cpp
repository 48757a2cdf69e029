// AVX2 linear-stage kernels (see scan_ops.h). Headers come before the target pragma, as
// in kernel_avx2.cpp.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/scan_ops.h"

#if defined(__x86_64__)

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

namespace hyp {
namespace cpu {
namespace scan_avx2 {
namespace {

template <DType T>
inline __m256 load8(const void* x, int64_t i) {
  const uint16_t* h = static_cast<const uint16_t*>(x) + i;
  if constexpr (T == DType::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(x) + i);
  } else if constexpr (T == DType::F16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h)));
  } else {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(h));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
  }
}

template <DType T>
inline float load1(const void* x, int64_t i) {
  if constexpr (T == DType::F32) {
    return static_cast<const float*>(x)[i];
  } else if constexpr (T == DType::F16) {
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<const uint16_t*>(x)[i])));
  } else {
    const uint32_t b = static_cast<uint32_t>(static_cast<const uint16_t*>(x)[i]) << 16;
    float f;
    std::memcpy(&f, &b, 4);
    return f;
  }
}

inline float hsum(__m256 v) {
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

// One row's dot product: lanes j mod 8, the tail folded into its lanes, then hsum.
template <DType T>
inline float finish(__m256 acc, const void* x, int64_t base, int64_t d8, int64_t d, const float* w) {
  float tail[8];
  _mm256_storeu_ps(tail, acc);
  for (int64_t j = d8; j < d; ++j) tail[j & 7] = std::fma(load1<T>(x, base + j), w[j], tail[j & 7]);
  return hsum(_mm256_loadu_ps(tail));
}

constexpr int64_t kAhead = 8;  // rows prefetched ahead of the one being dotted

template <DType T>
void dots_t(const void* x, int64_t d, const int64_t* rows, int64_t m, const float* w, float* out) {
  const int64_t d8 = d & ~int64_t(7);
  const int64_t row_bytes = d * (T == DType::F32 ? 4 : 2);
  const char* xb = static_cast<const char*>(x);
  auto prefetch = [&](int64_t r) {
    if (r < m)
      for (int64_t o = 0; o < row_bytes; o += 64) _mm_prefetch(xb + rows[r] * row_bytes + o, _MM_HINT_T0);
  };
  for (int64_t r = 0; r < std::min<int64_t>(kAhead, m); ++r) prefetch(r);
  int64_t r = 0;
  for (; r + 4 <= m; r += 4) {  // four rows share each load of w
    for (int i = 0; i < 4; ++i) prefetch(r + kAhead + i);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const int64_t b0 = rows[r] * d, b1 = rows[r + 1] * d, b2 = rows[r + 2] * d, b3 = rows[r + 3] * d;
    for (int64_t j = 0; j < d8; j += 8) {
      const __m256 wj = _mm256_loadu_ps(w + j);
      a0 = _mm256_fmadd_ps(load8<T>(x, b0 + j), wj, a0);
      a1 = _mm256_fmadd_ps(load8<T>(x, b1 + j), wj, a1);
      a2 = _mm256_fmadd_ps(load8<T>(x, b2 + j), wj, a2);
      a3 = _mm256_fmadd_ps(load8<T>(x, b3 + j), wj, a3);
    }
    out[r] = finish<T>(a0, x, b0, d8, d, w);
    out[r + 1] = finish<T>(a1, x, b1, d8, d, w);
    out[r + 2] = finish<T>(a2, x, b2, d8, d, w);
    out[r + 3] = finish<T>(a3, x, b3, d8, d, w);
  }
  for (; r < m; ++r) {  // the same per-row order as above
    __m256 a = _mm256_setzero_ps();
    const int64_t b = rows[r] * d;
    for (int64_t j = 0; j < d8; j += 8) a = _mm256_fmadd_ps(load8<T>(x, b + j), _mm256_loadu_ps(w + j), a);
    out[r] = finish<T>(a, x, b, d8, d, w);
  }
}

void dots(DType t, const void* x, int64_t d, const int64_t* rows, int64_t m, const float* w, float* out) {
  switch (t) {
    case DType::F32: return dots_t<DType::F32>(x, d, rows, m, w, out);
    case DType::F16: return dots_t<DType::F16>(x, d, rows, m, w, out);
    case DType::BF16: return dots_t<DType::BF16>(x, d, rows, m, w, out);
    case DType::I8:
    case DType::F8E4M3: return scan_ops_portable().dots(t, x, d, rows, m, w, out);
  }
}

// 32 documents per block, one byte lane each. The 16-bit lanes of `acc` accumulate
// r[2k] + 256 r[2k+1] (mod 2^16) and those of `odd` r[2k + 1], so the even documents'
// sums are acc - 256 odd (the trick of faiss's fast-scan accumulators).
void lut_scan(const uint8_t* codes, int64_t nblocks, int64_t nsub, const uint8_t* lut, uint16_t* out) {
  const int64_t pairs = nsub / 2;
  const __m256i nib = _mm256_set1_epi8(0x0f);
  for (int64_t b = 0; b < nblocks; ++b) {
    const uint8_t* cb = codes + b * pairs * kCodeBlock;
    __m256i acc = _mm256_setzero_si256(), odd = acc;
    for (int64_t p = 0; p < pairs; ++p) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cb + p * kCodeBlock));
      const __m256i lo = _mm256_and_si256(v, nib);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
      const __m256i l0 = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lut + 32 * p)));
      const __m256i l1 =
          _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lut + 32 * p + 16)));
      const __m256i r0 = _mm256_shuffle_epi8(l0, lo), r1 = _mm256_shuffle_epi8(l1, hi);
      acc = _mm256_add_epi16(acc, _mm256_add_epi16(r0, r1));
      odd = _mm256_add_epi16(odd, _mm256_add_epi16(_mm256_srli_epi16(r0, 8), _mm256_srli_epi16(r1, 8)));
    }
    const __m256i even = _mm256_sub_epi16(acc, _mm256_slli_epi16(odd, 8));
    // Interleave back to document order: per 128-bit half, unpacklo gives documents
    // 0-7 (16-23), unpackhi 8-15 (24-31).
    const __m256i a = _mm256_unpacklo_epi16(even, odd), c = _mm256_unpackhi_epi16(even, odd);
    __m256i* o = reinterpret_cast<__m256i*>(out + b * kCodeBlock);
    _mm256_storeu_si256(o, _mm256_permute2x128_si256(a, c, 0x20));
    _mm256_storeu_si256(o + 1, _mm256_permute2x128_si256(a, c, 0x31));
  }
}

// 16 estimates per compare (unsigned: max(s, t) == s), the few that pass read off the mask.
int64_t select_ge(const uint16_t* s, int64_t n, uint16_t thr, int64_t base, int64_t* out) {
  const __m256i t = _mm256_set1_epi16(static_cast<short>(thr));
  int64_t c = 0, i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i));
    uint32_t m = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi16(_mm256_max_epu16(v, t), v)));
    m &= 0x55555555u;  // one bit per 16-bit lane
    for (; m; m &= m - 1) out[c++] = base + i + (__builtin_ctz(m) >> 1);
  }
  for (; i < n; ++i)
    if (s[i] >= thr) out[c++] = base + i;
  return c;
}

// One byte of a row gates 8 lanes of g: the byte broadcast, each lane's bit tested.
void bit_sums(const uint8_t* bits, int64_t nbytes, const int64_t* rows, int64_t m, const int32_t* g, int32_t* out) {
  constexpr int64_t kAheadRows = 16;
  const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  for (int64_t r = 0; r < m; ++r) {
    prefetch_row_ahead(bits, nbytes, rows, r, m, kAheadRows);
    const uint8_t* b = bits + rows[r] * nbytes;
    __m256i a0 = _mm256_setzero_si256(), a1 = a0;
    int64_t j = 0;
    for (; j + 2 <= nbytes; j += 2) {
      const __m256i m0 = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(b[j]), sel), sel);
      const __m256i m1 = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(b[j + 1]), sel), sel);
      a0 = _mm256_add_epi32(a0, _mm256_and_si256(m0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + 8 * j))));
      a1 = _mm256_add_epi32(a1, _mm256_and_si256(m1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + 8 * j + 8))));
    }
    if (j < nbytes) {
      const __m256i m0 = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(b[j]), sel), sel);
      a0 = _mm256_add_epi32(a0, _mm256_and_si256(m0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + 8 * j))));
    }
    const __m256i a = _mm256_add_epi32(a0, a1);
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));
    out[r] = _mm_cvtsi128_si32(h);
  }
}

void axpy(int64_t n, float a, const float* x, float* y) {
  const __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] = std::fma(a, x[i], y[i]);
}

float dot(int64_t n, const float* x, const float* y) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), acc);
  float tail[8];
  _mm256_storeu_ps(tail, acc);
  for (; i < n; ++i) tail[i & 7] = std::fma(x[i], y[i], tail[i & 7]);
  return hsum(_mm256_loadu_ps(tail));
}

}  // namespace
}  // namespace scan_avx2

const ScanOps& scan_ops_avx2() {
  static const ScanOps ops{Isa::Avx2, &scan_avx2::dots, &scan_avx2::lut_scan, &scan_avx2::axpy, &scan_avx2::dot,
                           &scan_avx2::select_ge, &scan_avx2::bit_sums};
  return ops;
}

}  // namespace cpu
}  // namespace hyp

#pragma GCC pop_options

#else

namespace hyp {
namespace cpu {
const ScanOps& scan_ops_avx2() { return scan_ops_portable(); }
}  // namespace cpu
}  // namespace hyp

#endif
