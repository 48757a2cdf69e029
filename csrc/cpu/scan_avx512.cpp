// AVX-512 linear-stage kernels (see scan_ops.h): 16-wide dot products, and the lookup-table
// scan on 64-byte registers (two pairs of sub-codes per shuffle). Headers precede the
// target pragma, as in kernel_avx512.cpp.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/scan_ops.h"

#if defined(__x86_64__)

// GCC 12 warns inside its own AVX-512 headers (_mm512_undefined_* as uninitialized).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")

namespace hyp {
namespace cpu {
namespace scan_avx512 {
namespace {

template <DType T>
inline __m512 load16(const void* x, int64_t i) {
  const uint16_t* h = static_cast<const uint16_t*>(x) + i;
  if constexpr (T == DType::F32) {
    return _mm512_loadu_ps(static_cast<const float*>(x) + i);
  } else if constexpr (T == DType::F16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h)));
  } else {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(h));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
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

template <DType T>
inline float finish(__m512 acc, const void* x, int64_t base, int64_t d16, int64_t d, const float* w) {
  float tail[16];
  _mm512_storeu_ps(tail, acc);
  for (int64_t j = d16; j < d; ++j) tail[j & 15] = std::fma(load1<T>(x, base + j), w[j], tail[j & 15]);
  return _mm512_reduce_add_ps(_mm512_loadu_ps(tail));
}

constexpr int64_t kAhead = 8;

template <DType T>
void dots_t(const void* x, int64_t d, const int64_t* rows, int64_t m, const float* w, float* out) {
  const int64_t d16 = d & ~int64_t(15);
  const int64_t row_bytes = d * (T == DType::F32 ? 4 : 2);
  const char* xb = static_cast<const char*>(x);
  auto prefetch = [&](int64_t r) {
    if (r < m)
      for (int64_t o = 0; o < row_bytes; o += 64) _mm_prefetch(xb + rows[r] * row_bytes + o, _MM_HINT_T0);
  };
  for (int64_t r = 0; r < std::min<int64_t>(kAhead, m); ++r) prefetch(r);
  int64_t r = 0;
  for (; r + 4 <= m; r += 4) {
    for (int i = 0; i < 4; ++i) prefetch(r + kAhead + i);
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const int64_t b0 = rows[r] * d, b1 = rows[r + 1] * d, b2 = rows[r + 2] * d, b3 = rows[r + 3] * d;
    for (int64_t j = 0; j < d16; j += 16) {
      const __m512 wj = _mm512_loadu_ps(w + j);
      a0 = _mm512_fmadd_ps(load16<T>(x, b0 + j), wj, a0);
      a1 = _mm512_fmadd_ps(load16<T>(x, b1 + j), wj, a1);
      a2 = _mm512_fmadd_ps(load16<T>(x, b2 + j), wj, a2);
      a3 = _mm512_fmadd_ps(load16<T>(x, b3 + j), wj, a3);
    }
    out[r] = finish<T>(a0, x, b0, d16, d, w);
    out[r + 1] = finish<T>(a1, x, b1, d16, d, w);
    out[r + 2] = finish<T>(a2, x, b2, d16, d, w);
    out[r + 3] = finish<T>(a3, x, b3, d16, d, w);
  }
  for (; r < m; ++r) {
    __m512 a = _mm512_setzero_ps();
    const int64_t b = rows[r] * d;
    for (int64_t j = 0; j < d16; j += 16) a = _mm512_fmadd_ps(load16<T>(x, b + j), _mm512_loadu_ps(w + j), a);
    out[r] = finish<T>(a, x, b, d16, d, w);
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

// Two pairs of sub-codes per 64-byte load: the low 256 bits hold pair p of the block's 32
// documents and the high 256 bits pair p + 1 of the same documents, so the tables go in
// as [L(2p) x2 | L(2p+2) x2] for the low nibbles and [L(2p+1) x2 | L(2p+3) x2] for the
// high ones; the two halves are added at the end. Accumulators as in scan_avx2.cpp.
void lut_scan(const uint8_t* codes, int64_t nblocks, int64_t nsub, const uint8_t* lut, uint16_t* out) {
  const int64_t pairs = nsub / 2, quads = pairs / 2;
  alignas(64) uint8_t tabs[128][2][64];  // nsub <= 256
  for (int64_t u = 0; u < quads; ++u)
    for (int h = 0; h < 2; ++h) {
      const uint8_t* a = lut + (4 * u + h) * 16;      // L(2p + h)
      const uint8_t* b = lut + (4 * u + 2 + h) * 16;  // L(2p + 2 + h)
      std::memcpy(tabs[u][h], a, 16), std::memcpy(tabs[u][h] + 16, a, 16);
      std::memcpy(tabs[u][h] + 32, b, 16), std::memcpy(tabs[u][h] + 48, b, 16);
    }
  const __m512i nib = _mm512_set1_epi8(0x0f);
  for (int64_t b = 0; b < nblocks; ++b) {
    const uint8_t* cb = codes + b * pairs * kCodeBlock;
    __m512i acc = _mm512_setzero_si512(), odd = acc;
    for (int64_t u = 0; u < quads; ++u) {
      const __m512i v = _mm512_loadu_si512(cb + u * 2 * kCodeBlock);
      const __m512i lo = _mm512_and_si512(v, nib);
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
      const __m512i r0 = _mm512_shuffle_epi8(_mm512_load_si512(tabs[u][0]), lo);
      const __m512i r1 = _mm512_shuffle_epi8(_mm512_load_si512(tabs[u][1]), hi);
      acc = _mm512_add_epi16(acc, _mm512_add_epi16(r0, r1));
      odd = _mm512_add_epi16(odd, _mm512_add_epi16(_mm512_srli_epi16(r0, 8), _mm512_srli_epi16(r1, 8)));
    }
    const __m256i acc2 = _mm256_add_epi16(_mm512_castsi512_si256(acc), _mm512_extracti64x4_epi64(acc, 1));
    const __m256i odd2 = _mm256_add_epi16(_mm512_castsi512_si256(odd), _mm512_extracti64x4_epi64(odd, 1));
    const __m256i even = _mm256_sub_epi16(acc2, _mm256_slli_epi16(odd2, 8));
    const __m256i a = _mm256_unpacklo_epi16(even, odd2), c = _mm256_unpackhi_epi16(even, odd2);
    __m256i* o = reinterpret_cast<__m256i*>(out + b * kCodeBlock);
    _mm256_storeu_si256(o, _mm256_permute2x128_si256(a, c, 0x20));
    _mm256_storeu_si256(o + 1, _mm256_permute2x128_si256(a, c, 0x31));
  }
}

// 32 estimates per compare; the few that pass are read off the mask.
int64_t select_ge(const uint16_t* s, int64_t n, uint16_t thr, int64_t base, int64_t* out) {
  const __m512i t = _mm512_set1_epi16(static_cast<short>(thr));
  int64_t c = 0, i = 0;
  for (; i + 32 <= n; i += 32) {
    uint32_t m = _mm512_cmpge_epu16_mask(_mm512_loadu_si512(s + i), t);
    for (; m; m &= m - 1) out[c++] = base + i + __builtin_ctz(m);
  }
  for (; i < n; ++i)
    if (s[i] >= thr) out[c++] = base + i;
  return c;
}

// 16 bits of a row gate 16 lanes of g per masked add; the rows a few ahead are prefetched
// (they are scattered over the corpus's bits).
void bit_sums(const uint8_t* bits, int64_t nbytes, const int64_t* rows, int64_t m, const int32_t* g, int32_t* out) {
  constexpr int64_t kAheadRows = 16;
  for (int64_t r = 0; r < m; ++r) {
    prefetch_row_ahead(bits, nbytes, rows, r, m, kAheadRows);
    const uint8_t* b = bits + rows[r] * nbytes;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0;
    int64_t j = 0;
    for (; j + 4 <= nbytes; j += 4) {
      uint16_t k0, k1;
      std::memcpy(&k0, b + j, 2);
      std::memcpy(&k1, b + j + 2, 2);
      a0 = _mm512_mask_add_epi32(a0, k0, a0, _mm512_loadu_si512(g + 8 * j));
      a1 = _mm512_mask_add_epi32(a1, k1, a1, _mm512_loadu_si512(g + 8 * j + 16));
    }
    for (; j < nbytes; ++j)
      a0 = _mm512_mask_add_epi32(a0, b[j], a0, _mm512_maskz_loadu_epi32(0xff, g + 8 * j));
    out[r] = _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1));
  }
}

void axpy(int64_t n, float a, const float* x, float* y) {
  const __m512 va = _mm512_set1_ps(a);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
  if (i < n) {
    const __mmask16 k = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, k, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(k, x + i), _mm512_maskz_loadu_ps(k, y + i)));
  }
}

float dot(int64_t n, const float* x, const float* y) {
  __m512 acc = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), acc);
  if (i < n) {
    const __mmask16 k = static_cast<__mmask16>((1u << (n - i)) - 1);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, x + i), _mm512_maskz_loadu_ps(k, y + i), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

}  // namespace
}  // namespace scan_avx512

const ScanOps& scan_ops_avx512() {
  static const ScanOps ops{Isa::Avx512, &scan_avx512::dots, &scan_avx512::lut_scan, &scan_avx512::axpy,
                           &scan_avx512::dot, &scan_avx512::select_ge, &scan_avx512::bit_sums};
  return ops;
}

}  // namespace cpu
}  // namespace hyp

#pragma GCC pop_options

#else

namespace hyp {
namespace cpu {
const ScanOps& scan_ops_avx512() { return scan_ops_portable(); }
}  // namespace cpu
}  // namespace hyp

#endif
