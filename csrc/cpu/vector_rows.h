// Reading stored document rows as float32, whatever their storage: float32, float16 and
// bfloat16 rows convert exactly (the per-ISA convert_row); int8 and float8 e4m3 rows are
// dequantised with their row's scale (VectorsView::scales) as they are read into a kernel's
// block of rows (never into a float32 copy of the corpus). The value of a quantised element
// is float(q) * scale, one float32 product, as the torch reference computes it.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/qnet_kernel.h"

namespace hyp {

inline size_t vector_dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16:
    case DType::BF16: return 2;
    case DType::I8:
    case DType::F8E4M3: return 1;
  }
  return 4;
}

inline bool is_quantized(DType t) { return t == DType::I8 || t == DType::F8E4M3; }

// float8 e4m3 ("fn": no infinities; S.1111.111 is NaN) -> float32, exact, by table.
inline const float* fp8_e4m3_table() {
  static const struct Table {
    float v[256];
    Table() {
      for (int b = 0; b < 256; ++b) {
        const int e = (b >> 3) & 15, m = b & 7;
        float x;
        if (e == 15 && m == 7) x = NAN;
        else if (e == 0) x = std::ldexp(static_cast<float>(m), -9);  // subnormal: m/8 * 2^-6
        else x = std::ldexp(1.0f + static_cast<float>(m) / 8.0f, e - 7);
        v[b] = (b & 0x80) ? -x : x;
      }
    }
  } table;
  return table.v;
}

// dst[j] = float(row[j]) * scale for j < n, row of a quantised dtype.
inline void dequantize_row(DType t, const void* row, float scale, float* dst, int64_t n) {
  if (t == DType::I8) {
    const int8_t* q = static_cast<const int8_t*>(row);
    for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<float>(q[j]) * scale;
  } else {
    const float* lut = fp8_e4m3_table();
    const uint8_t* q = static_cast<const uint8_t*>(row);
    for (int64_t j = 0; j < n; ++j) dst[j] = lut[q[j]] * scale;
  }
}

// out[r] = (x[rows[r]] . w) for rows of a quantised VectorsView: the dot of the stored
// values, times the row's scale (eight partial sums by lane, as the portable scan; a row's
// value does not depend on m or its position).
inline void quantized_dots(const VectorsView& v, const int64_t* rows, int64_t m, const float* w, float* out) {
  const float* lut = fp8_e4m3_table();
  for (int64_t r = 0; r < m; ++r) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const size_t base = static_cast<size_t>(rows[r]) * static_cast<size_t>(v.d);
    if (v.dtype == DType::I8) {
      const int8_t* q = static_cast<const int8_t*>(v.data) + base;
      for (int64_t j = 0; j < v.d; ++j) acc[j & 7] += static_cast<float>(q[j]) * w[j];
    } else {
      const uint8_t* q = static_cast<const uint8_t*>(v.data) + base;
      for (int64_t j = 0; j < v.d; ++j) acc[j & 7] += lut[q[j]] * w[j];
    }
    out[r] = (((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))) * v.scales[rows[r]];
  }
}

}  // namespace hyp
