// Per-ISA kernels of the linear stages of graph search: dot products of stored document
// rows with one direction, and the 4-bit lookup-table scan of the compressed candidate
// codes. Each instruction set has its own translation unit (scan_portable.cpp,
// scan_avx2.cpp, scan_avx512.cpp); scan_ops(active_isa()) picks one at run time, so
// HYPENCODER_CPU_ISA governs these paths as it does the q-net kernels.
#pragma once

#include <cstdint>

#include "cpu/isa.h"
#include "cpu/qnet_kernel.h"

namespace hyp {
namespace cpu {

// Documents per block of the code layout: a block holds, for each pair of 4-bit
// sub-codes (2j, 2j+1), 32 bytes, byte i = code(doc i, 2j) | code(doc i, 2j+1) << 4.
constexpr int kCodeBlock = 32;

struct ScanOps {
  Isa isa;
  // out[r] = x[rows[r]] . w for r < m (rows: int64 row indices into x, an (n, d) array of
  // `dtype`; w: d floats). A row's value does not depend on m, on its position or on the
  // call: the shortlist re-ranking reproduces the full scan's bits.
  // int8 / float8 e4m3 rows: the dot of the stored values, unscaled (the portable loop on
  // every ISA; graph/linear.cpp applies the row's scale).
  void (*dots)(DType dtype, const void* x, int64_t d, const int64_t* rows, int64_t m, const float* w,
               float* out);
  // For `nblocks` blocks of kCodeBlock documents with `nsub` 4-bit sub-codes each (nsub a
  // multiple of 4), out[doc] = sum_j lut[j * 16 + code(doc, j)] in uint16 (exact while
  // the sum stays below 65536: nsub * 255 < 65536 for nsub <= 256).
  void (*lut_scan)(const uint8_t* codes, int64_t nblocks, int64_t nsub, const uint8_t* lut, uint16_t* out);
  // y[i] += a * x[i] for i < n (the linearisation's forward pass, row by row).
  void (*axpy)(int64_t n, float a, const float* x, float* y);
  // sum_i x[i] * y[i] (its backward pass).
  float (*dot)(int64_t n, const float* x, const float* y);
  // Writes base + i for every i < n with s[i] >= thr, in increasing order, into out (room
  // for n); returns how many. Selects the code estimates worth re-ranking.
  int64_t (*select_ge)(const uint16_t* s, int64_t n, uint16_t thr, int64_t base, int64_t* out);
  // out[r] = sum of g[k] over the bits k set in row rows[r] of `bits` ((n, nbytes) uint8,
  // bit k in bit k % 8 of byte k / 8; g: 8 * nbytes int32), for r < m: the second level of
  // the codes. Integers, so every ISA and order of summation agrees; the caller keeps
  // sum |g| below 2^31.
  void (*bit_sums)(const uint8_t* bits, int64_t nbytes, const int64_t* rows, int64_t m, const int32_t* g,
                   int32_t* out);
};

// Prefetches row rows[r + ahead] of an (n, nbytes) byte array when there is one: the bit
// sums read rows scattered over the corpus.
inline void prefetch_row_ahead(const uint8_t* bits, int64_t nbytes, const int64_t* rows, int64_t r, int64_t m,
                               int64_t ahead) {
  if (r + ahead >= m) return;
  const uint8_t* p = bits + rows[r + ahead] * nbytes;
  for (int64_t o = 0; o < nbytes; o += 64) __builtin_prefetch(p + o);
  __builtin_prefetch(p + nbytes - 1);
}

const ScanOps& scan_ops_portable();
const ScanOps& scan_ops_avx2();
const ScanOps& scan_ops_avx512();
// The table of `isa` (AVX-512 with BF16 and AMX share the AVX-512 one).
const ScanOps& scan_ops(Isa isa);

}  // namespace cpu
}  // namespace hyp
