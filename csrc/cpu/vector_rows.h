// Element sizes of document storage, and the exact float8 e4m3 table. The kernels read every
// storage through their ISA's convert_row (exact; int8 and float8 e4m3 to the stored values)
// into a block of rows and multiply a quantised row by its scale there (cpu::read_row),
// never into a float32 copy of the corpus: the value of a quantised element is
// float(q) * scale, one float32 product, as the torch reference computes it.
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

}  // namespace hyp
