// Portable block kernel: plain C++ that the compiler vectorises for the baseline x86-64
// (SSE2) or any other target. Used where the CPU has no AVX2, and as the reference path
// the SIMD kernels are tested against.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/half.h"
#include "cpu/kernel_ops.h"

namespace hyp {
namespace cpu {
namespace portable {
namespace {

// 4 x 16: 16 four-wide SSE accumulators, the 16 xmm registers of baseline x86-64.
constexpr int MR = 4, NR = 16, VW = 4;
constexpr int64_t KC = 256;

// A 4-float "vector" the compiler maps onto SSE registers.
struct V {
  float v[4];
};
static inline V vzero() { return V{{0.f, 0.f, 0.f, 0.f}}; }
static inline V vload(const float* p) { V r; std::memcpy(r.v, p, sizeof r.v); return r; }
static inline void vstore(float* p, V a) { std::memcpy(p, a.v, sizeof a.v); }
static inline V vset1(float f) { return V{{f, f, f, f}}; }
static inline V vadd(V a, V b) { for (int i = 0; i < 4; ++i) a.v[i] += b.v[i]; return a; }
static inline V vsub(V a, V b) { for (int i = 0; i < 4; ++i) a.v[i] -= b.v[i]; return a; }
static inline V vmul(V a, V b) { for (int i = 0; i < 4; ++i) a.v[i] *= b.v[i]; return a; }
static inline V vfma(V a, V b, V c) { for (int i = 0; i < 4; ++i) c.v[i] += a.v[i] * b.v[i]; return c; }
static inline float hsum(V a) { return (a.v[0] + a.v[1]) + (a.v[2] + a.v[3]); }

static inline void micro_f32(int64_t kc, const float* x, int64_t ldx, const float* w, float* c,
                             int64_t ldc, const float* bias, bool relu) {
  float acc[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) acc[r][j] = bias ? bias[j] : c[r * ldc + j];
  for (int64_t k = 0; k < kc; ++k) {
    const float* wk = w + k * NR;
    for (int r = 0; r < MR; ++r) {
      const float a = x[r * ldx + k];
      for (int j = 0; j < NR; ++j) acc[r][j] += a * wk[j];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) c[r * ldc + j] = relu && acc[r][j] < 0.f ? 0.f : acc[r][j];
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

static void convert_row(DType dtype, const void* src, float* dst, int64_t n) {
  const uint16_t* s = static_cast<const uint16_t*>(src);
  if (dtype == DType::F32) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
  } else if (dtype == DType::I8) {  // stored values, unscaled
    const int8_t* q = static_cast<const int8_t*>(src);
    for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<float>(q[j]);
  } else if (dtype == DType::F8E4M3) {
    const float* lut = fp8_e4m3_table();
    const uint8_t* q = static_cast<const uint8_t*>(src);
    for (int64_t j = 0; j < n; ++j) dst[j] = lut[q[j]];
  } else if (dtype == DType::F16) {
    for (int64_t j = 0; j < n; ++j) dst[j] = half_to_float(s[j]);
  } else {
    for (int64_t j = 0; j < n; ++j) dst[j] = bfloat16_to_float(s[j]);
  }
}

}  // namespace
}  // namespace portable

const KernelOps& kernel_ops_portable() {
  static const KernelOps ops{Isa::Portable, portable::MR, portable::NR, &portable::forward_f32,
                             nullptr, &portable::convert_row, &portable::fma_loop};
  return ops;
}

}  // namespace cpu
}  // namespace hyp
