// AVX2 + FMA (+ F16C for fp16 documents) block kernel: 6 x 16 fp32 micro-tile.
//
// Every header comes before the target pragma so that no inline function shared with
// other translation units (the standard library's) is compiled for AVX2; the kernel code
// itself lives in its own namespace.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/kernel_ops.h"

#if defined(__x86_64__)

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

namespace hyp {
namespace cpu {
namespace avx2 {
namespace {

// 6 x 16: 12 accumulators + 2 weight vectors + 1 broadcast = 15 of 16 ymm registers, the
// largest tile that does not spill; two FMAs per broadcast keep both FMA pipes busy.
constexpr int MR = 6, NR = 16, VW = 8;
// k-chunk: a 256 x 16 fp32 weight panel chunk is 16 KiB, half of Zen 3's / Skylake's
// 32 KiB L1d, so it stays there while every row tile of the block streams past it.
constexpr int64_t KC = 256;

using V = __m256;
static inline V vzero() { return _mm256_setzero_ps(); }
static inline V vload(const float* p) { return _mm256_loadu_ps(p); }
static inline void vstore(float* p, V v) { _mm256_storeu_ps(p, v); }
static inline V vset1(float f) { return _mm256_set1_ps(f); }
static inline V vadd(V a, V b) { return _mm256_add_ps(a, b); }
static inline V vsub(V a, V b) { return _mm256_sub_ps(a, b); }
static inline V vmul(V a, V b) { return _mm256_mul_ps(a, b); }
static inline V vfma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
static inline float hsum(V v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// C[6 x 16] = (bias ? bias : C) + X[6 x kc] W[kc x 16], then relu if asked. W is a packed
// panel chunk (16 floats per k), X rows are ldx apart.
static inline void micro_f32(int64_t kc, const float* x, int64_t ldx, const float* w, float* c,
                             int64_t ldc, const float* bias, bool relu) {
  V c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
  if (bias) {
    c00 = c10 = c20 = c30 = c40 = c50 = vload(bias);
    c01 = c11 = c21 = c31 = c41 = c51 = vload(bias + 8);
  } else {
    c00 = vload(c + 0 * ldc), c01 = vload(c + 0 * ldc + 8);
    c10 = vload(c + 1 * ldc), c11 = vload(c + 1 * ldc + 8);
    c20 = vload(c + 2 * ldc), c21 = vload(c + 2 * ldc + 8);
    c30 = vload(c + 3 * ldc), c31 = vload(c + 3 * ldc + 8);
    c40 = vload(c + 4 * ldc), c41 = vload(c + 4 * ldc + 8);
    c50 = vload(c + 5 * ldc), c51 = vload(c + 5 * ldc + 8);
  }
  const float *x0 = x, *x1 = x + ldx, *x2 = x + 2 * ldx, *x3 = x + 3 * ldx, *x4 = x + 4 * ldx,
              *x5 = x + 5 * ldx;
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    const V w0 = _mm256_load_ps(w + k * NR), w1 = _mm256_load_ps(w + k * NR + 8);
    V a;
    a = _mm256_broadcast_ss(x0 + k); c00 = vfma(a, w0, c00); c01 = vfma(a, w1, c01);
    a = _mm256_broadcast_ss(x1 + k); c10 = vfma(a, w0, c10); c11 = vfma(a, w1, c11);
    a = _mm256_broadcast_ss(x2 + k); c20 = vfma(a, w0, c20); c21 = vfma(a, w1, c21);
    a = _mm256_broadcast_ss(x3 + k); c30 = vfma(a, w0, c30); c31 = vfma(a, w1, c31);
    a = _mm256_broadcast_ss(x4 + k); c40 = vfma(a, w0, c40); c41 = vfma(a, w1, c41);
    a = _mm256_broadcast_ss(x5 + k); c50 = vfma(a, w0, c50); c51 = vfma(a, w1, c51);
  }
  if (relu) {
    const V z = vzero();
    c00 = _mm256_max_ps(c00, z), c01 = _mm256_max_ps(c01, z);
    c10 = _mm256_max_ps(c10, z), c11 = _mm256_max_ps(c11, z);
    c20 = _mm256_max_ps(c20, z), c21 = _mm256_max_ps(c21, z);
    c30 = _mm256_max_ps(c30, z), c31 = _mm256_max_ps(c31, z);
    c40 = _mm256_max_ps(c40, z), c41 = _mm256_max_ps(c41, z);
    c50 = _mm256_max_ps(c50, z), c51 = _mm256_max_ps(c51, z);
  }
  vstore(c + 0 * ldc, c00), vstore(c + 0 * ldc + 8, c01);
  vstore(c + 1 * ldc, c10), vstore(c + 1 * ldc + 8, c11);
  vstore(c + 2 * ldc, c20), vstore(c + 2 * ldc + 8, c21);
  vstore(c + 3 * ldc, c30), vstore(c + 3 * ldc + 8, c31);
  vstore(c + 4 * ldc, c40), vstore(c + 4 * ldc + 8, c41);
  vstore(c + 5 * ldc, c50), vstore(c + 5 * ldc + 8, c51);
}

#include "cpu/qnet_block.inc"

// The FMA peak loop: 12 independent accumulator chains, more than the FMAs in flight that
// full throughput needs (2 pipes x 4-5 cycles latency), and nothing but FMAs in the loop.
static int64_t fma_loop(int64_t iters, float* sink) {
  V acc[12];
  const V m = vset1(0.9999999f), b = vset1(1e-7f);
#pragma GCC unroll 12
  for (int i = 0; i < 12; ++i) acc[i] = vset1(static_cast<float>(i));
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = vfma(acc[i], m, b);
  }
  V s = acc[0];
#pragma GCC unroll 12
  for (int i = 1; i < 12; ++i) s = vadd(s, acc[i]);
  *sink = hsum(s);
  return iters * 12 * 2 * VW;
}

static inline float half_to_float_scalar(uint16_t h) {
  return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

// float8 e4m3fn bytes (zero-extended to 32 bits) to fp32, exactly: a normal value's exponent
// and mantissa move to float32's positions with the bias raised by 120; a subnormal one is
// m * 2^-9; S.1111.111 is NaN.
static inline __m256 fp8_to_ps(__m256i u) {
  const __m256i mag = _mm256_and_si256(u, _mm256_set1_epi32(0x7F));
  const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x80)), 24);
  const __m256 normal = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_slli_epi32(mag, 20), _mm256_set1_epi32(120 << 23)));
  const __m256 sub = _mm256_mul_ps(_mm256_cvtepi32_ps(mag), _mm256_set1_ps(0x1p-9f));
  __m256 v = _mm256_blendv_ps(normal, sub, _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(8), mag)));
  v = _mm256_blendv_ps(v, _mm256_set1_ps(NAN), _mm256_castsi256_ps(_mm256_cmpeq_epi32(mag, _mm256_set1_epi32(0x7F))));
  return _mm256_or_ps(v, _mm256_castsi256_ps(sign));
}

static void convert_row(DType dtype, const void* src, float* dst, int64_t n) {
  int64_t j = 0;
  if (dtype == DType::F32) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
  } else if (dtype == DType::I8 || dtype == DType::F8E4M3) {  // stored values, unscaled
    const uint8_t* s = static_cast<const uint8_t*>(src);
    const bool i8 = dtype == DType::I8;
    for (; j + 8 <= n; j += 8) {
      const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(s + j));
      vstore(dst + j, i8 ? _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)) : fp8_to_ps(_mm256_cvtepu8_epi32(b)));
    }
    const float* lut = fp8_e4m3_table();
    for (; j < n; ++j) dst[j] = i8 ? static_cast<float>(static_cast<int8_t>(s[j])) : lut[s[j]];
  } else if (dtype == DType::F16) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (; j + 8 <= n; j += 8)
      vstore(dst + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + j))));
    for (; j < n; ++j) dst[j] = half_to_float_scalar(s[j]);
  } else {
    // bfloat16 is the top half of a float32: widen and shift.
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (; j + 8 <= n; j += 8) {
      __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + j)));
      vstore(dst + j, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
    }
    for (; j < n; ++j) {
      uint32_t b = static_cast<uint32_t>(s[j]) << 16;
      std::memcpy(dst + j, &b, 4);
    }
  }
}

}  // namespace
}  // namespace avx2

const KernelOps& kernel_ops_avx2() {
  static const KernelOps ops{Isa::Avx2, avx2::MR, avx2::NR, &avx2::forward_f32, nullptr,
                             &avx2::convert_row, &avx2::fma_loop};
  return ops;
}

}  // namespace cpu
}  // namespace hyp

#pragma GCC pop_options

#else  // not x86-64: never selected (isa_supported says no), portable stands in.

namespace hyp {
namespace cpu {
const KernelOps& kernel_ops_avx2() { return kernel_ops_portable(); }
}  // namespace cpu
}  // namespace hyp

#endif
