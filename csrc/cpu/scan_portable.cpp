// Portable linear-stage kernels (see scan_ops.h): the reference the SIMD tables are
// tested against, and what HYPENCODER_CPU_ISA=portable selects.
#include <cstring>

#include "cpu/half.h"
#include "cpu/scan_ops.h"
#include "cpu/vector_rows.h"

namespace hyp {
namespace cpu {
namespace {

inline float load_one(DType t, const void* base, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(base)[i];
    case DType::F16: return half_to_float(static_cast<const uint16_t*>(base)[i]);
    case DType::BF16: return bfloat16_to_float(static_cast<const uint16_t*>(base)[i]);
    case DType::I8: return static_cast<float>(static_cast<const int8_t*>(base)[i]);
    case DType::F8E4M3: return fp8_e4m3_table()[static_cast<const uint8_t*>(base)[i]];
  }
  return 0.f;
}

// Eight partial sums by lane (j mod 8), added pairwise at the end.
void dots(DType t, const void* x, int64_t d, const int64_t* rows, int64_t m, const float* w, float* out) {
  for (int64_t r = 0; r < m; ++r) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const int64_t base = rows[r] * d;
    for (int64_t j = 0; j < d; ++j) acc[j & 7] += load_one(t, x, base + j) * w[j];
    out[r] = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
  }
}

void lut_scan(const uint8_t* codes, int64_t nblocks, int64_t nsub, const uint8_t* lut, uint16_t* out) {
  const int64_t pairs = nsub / 2;
  for (int64_t b = 0; b < nblocks; ++b) {
    const uint8_t* cb = codes + b * pairs * kCodeBlock;
    uint16_t acc[kCodeBlock] = {};
    for (int64_t p = 0; p < pairs; ++p) {
      const uint8_t* lo = lut + (2 * p) * 16;
      const uint8_t* hi = lo + 16;
      for (int i = 0; i < kCodeBlock; ++i) {
        const uint8_t c = cb[p * kCodeBlock + i];
        acc[i] = static_cast<uint16_t>(acc[i] + lo[c & 15] + hi[c >> 4]);
      }
    }
    std::memcpy(out + b * kCodeBlock, acc, sizeof acc);
  }
}

void axpy(int64_t n, float a, const float* x, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

float dot(int64_t n, const float* x, const float* y) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = 0; i < n; ++i) acc[i & 7] += x[i] * y[i];
  return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

int64_t select_ge(const uint16_t* s, int64_t n, uint16_t thr, int64_t base, int64_t* out) {
  int64_t c = 0;
  for (int64_t i = 0; i < n; ++i) {
    out[c] = base + i;
    c += s[i] >= thr;  // branch-free: which estimates pass is unpredictable
  }
  return c;
}

void bit_sums(const uint8_t* bits, int64_t nbytes, const int64_t* rows, int64_t m, const int32_t* g, int32_t* out) {
  for (int64_t r = 0; r < m; ++r) {
    const uint8_t* b = bits + rows[r] * nbytes;
    int32_t acc = 0;
    for (int64_t j = 0; j < nbytes; ++j)
      for (int k = 0; k < 8; ++k) acc += -static_cast<int32_t>((b[j] >> k) & 1) & g[j * 8 + k];
    out[r] = acc;
  }
}

}  // namespace

const ScanOps& scan_ops_portable() {
  static const ScanOps ops{Isa::Portable, &dots, &lut_scan, &axpy, &dot, &select_ge, &bit_sums};
  return ops;
}

const ScanOps& scan_ops(Isa isa) {
  switch (isa) {
    case Isa::Avx512:
    case Isa::Avx512Bf16:
    case Isa::Amx:
    case Isa::AmxEmulated: return scan_ops_avx512();
    case Isa::Avx2: return scan_ops_avx2();
    case Isa::Portable: break;
  }
  return scan_ops_portable();
}

}  // namespace cpu
}  // namespace hyp
