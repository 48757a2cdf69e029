// AVX-512 block kernels: fp32 FMA (AVX-512F), and for bf16 q-nets on CPUs with
// AVX512-BF16 a vdpbf16ps kernel that rounds activations to bf16 and accumulates in fp32.
//
// Not executed on the development machine (Zen 3, no AVX-512): compiled always, selected
// only where __builtin_cpu_supports reports the features. As in kernel_avx2.cpp, every
// header precedes the target pragmas.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/kernel_ops.h"

#if defined(__x86_64__)

// GCC 12 warns inside its own AVX-512 headers (_mm512_undefined_* as "maybe uninitialized").
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")

namespace hyp {
namespace cpu {
namespace avx512 {
namespace {
#include "cpu/avx512_defs.inc"
#include "cpu/qnet_block.inc"
}  // namespace
}  // namespace avx512

const KernelOps& kernel_ops_avx512() {
  static const KernelOps ops{Isa::Avx512, avx512::MR, avx512::NR, &avx512::forward_f32, nullptr,
                             &avx512::convert_row, &avx512::fma_loop};
  return ops;
}

}  // namespace cpu
}  // namespace hyp

#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")

namespace hyp {
namespace cpu {
namespace avx512bf16 {
namespace {
#define HYP_BF16_DOT 1
#include "cpu/avx512_defs.inc"

static inline uint16_t bf16_round(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even (activations are finite)
  return static_cast<uint16_t>(u >> 16);
}

// Rounds rows [0, rp) of x (fp32, ld apart) to bf16 into xb, zero-padding column `in` when
// the layer's k is padded to even.
static void to_bf16_rows(const float* x, int64_t ld, int64_t rp, int64_t in, int64_t in_pad,
                         uint16_t* xb) {
  for (int64_t r = 0; r < rp; ++r) {
    const float* s = x + r * ld;
    uint16_t* d = xb + r * ld;
    int64_t j = 0;
    for (; j + 16 <= in; j += 16) {
      const __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(s + j));
      std::memcpy(d + j, &h, 32);
    }
    for (; j < in; ++j) d[j] = bf16_round(s[j]);
    for (; j < in_pad; ++j) d[j] = 0;
  }
}

// C[8 x 32] = (bias ? bias : C) + X W over kp k-pairs: X in bf16 (pairs of consecutive k
// read as one 32-bit lane), W packed as panel[k/2][j][k%2].
static inline void micro_bf16(int64_t kp, const uint16_t* x, int64_t ldx, const uint16_t* w,
                              float* c, int64_t ldc, const float* bias, bool relu) {
  V acc[MR][2];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    acc[r][0] = bias ? vload(bias) : vload(c + r * ldc);
    acc[r][1] = bias ? vload(bias + 16) : vload(c + r * ldc + 16);
  }
  for (int64_t kk = 0; kk < kp; ++kk) {
    const __m512i w0 = _mm512_load_si512(w + kk * 2 * NR);
    const __m512i w1 = _mm512_load_si512(w + kk * 2 * NR + 32);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      uint32_t pair;
      std::memcpy(&pair, x + r * ldx + 2 * kk, 4);
      const __m512i a = _mm512_set1_epi32(static_cast<int>(pair));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)a, (__m512bh)w0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], (__m512bh)a, (__m512bh)w1);
    }
  }
  const V z = vzero();
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    vstore(c + r * ldc, relu ? _mm512_max_ps(acc[r][0], z) : acc[r][0]);
    vstore(c + r * ldc + 16, relu ? _mm512_max_ps(acc[r][1], z) : acc[r][1]);
  }
}

#include "cpu/qnet_block.inc"
#undef HYP_BF16_DOT

static void forward_bf16(const PackedQuery& pq, const Workspace& ws, int64_t rows, float* scores) {
  forward_impl<true>(pq, ws, rows, scores);
}
}  // namespace
}  // namespace avx512bf16

const KernelOps& kernel_ops_avx512_bf16() {
  static const KernelOps ops{Isa::Avx512Bf16, avx512bf16::MR, avx512bf16::NR,
                             &avx512bf16::forward_f32, &avx512bf16::forward_bf16,
                             &avx512bf16::convert_row, &avx512bf16::fma_loop};
  return ops;
}

}  // namespace cpu
}  // namespace hyp

#pragma GCC pop_options

#else  // not x86-64: never selected.

namespace hyp {
namespace cpu {
const KernelOps& kernel_ops_avx512() { return kernel_ops_portable(); }
const KernelOps& kernel_ops_avx512_bf16() { return kernel_ops_portable(); }
}  // namespace cpu
}  // namespace hyp

#endif
