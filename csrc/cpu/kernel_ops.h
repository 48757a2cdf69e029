// Internal interface between the scoring driver (scoring.cpp) and the per-ISA block
// kernels (kernel_*.cpp). The driver packs weights and owns buffers and threads; a block
// kernel runs the whole q-net of one query on one block of document rows held in fp32.
#pragma once

#include <cstdint>

#include "cpu/isa.h"
#include "cpu/qnet_kernel.h"
#include "cpu/vector_rows.h"

namespace hyp {
namespace cpu {

// How a hidden layer's weights are laid out for the micro-kernel: column panels of NR
// columns (the last one zero-padded), each panel k-major. F32: panel[k][j] floats.
// BF16_PAIRS (AVX512-BF16 dot products, AMX tiles): panel[k/2][j][k%2] bf16, k zero-padded
// to a multiple of the kernel's k_align (2 for vdpbf16ps, 32 for a tile's k).
enum class PackFormat : int { F32 = 0, BF16_PAIRS = 1 };

struct PackedLayer {
  const void* w = nullptr;     // npanels * in_pad * NR elements (see PackFormat)
  const float* bias = nullptr; // out_pad floats, zero-padded
  int64_t in = 0, out = 0;
  int64_t in_pad = 0;          // in, or in rounded up to k_align for BF16_PAIRS
  int64_t out_pad = 0;         // out rounded up to NR
  bool ln_before = false;      // layer norm of act(xW+b) before the residual (or alone)
  bool residual = false;       // add the layer's input
  bool ln_after = false;       // layer norm after the residual
};

// One query's q-net, packed for one kernel.
struct PackedQuery {
  int num_layers = 0;
  const PackedLayer* layers = nullptr;  // num_layers hidden layers
  const float* w_last = nullptr;        // (h_L,) output weights in fp32
  int64_t d = 0;                        // input width
  bool relu = true;
  float eps = 1e-5f;
  PackFormat format = PackFormat::F32;
};

// Per-thread scratch of a block kernel. x and y hold rows x ld floats each (rows a multiple
// of the kernel's MR, ld >= every padded layer width); xb holds rows x ld bf16 values for
// kernels that take bf16 activations.
struct Workspace {
  float* x = nullptr;
  float* y = nullptr;
  uint16_t* xb = nullptr;
  int64_t ld = 0;
};

struct KernelOps {
  Isa isa;
  int mr;  // rows of the micro-tile; blocks are padded to a multiple of it
  int nr;  // columns of the micro-tile = weight panel width
  // Runs the q-net on `rows` rows of ws.x (rows up to round_up(rows, mr) must hold finite
  // values, zeros for padding), writes `rows` scores. Clobbers ws.
  void (*forward_f32)(const PackedQuery& pq, const Workspace& ws, int64_t rows, float* scores);
  // As forward_f32 for BF16_PAIRS-packed queries (activations rounded to bf16 before each
  // layer, fp32 accumulation); null where the ISA has no bf16 dot product.
  void (*forward_bf16)(const PackedQuery& pq, const Workspace& ws, int64_t rows, float* scores);
  // Converts n elements of `dtype` at src to fp32 at dst, exactly; I8 / F8E4M3 elements to
  // the stored values, unscaled (the caller multiplies by the row's scale).
  void (*convert_row)(DType dtype, const void* src, float* dst, int64_t n);
  // Runs `iters` iterations of a register-only loop of independent FMAs and returns the
  // FLOPs it did (the result lands in *sink so the loop is not optimised away); null where
  // the ISA has none.
  int64_t (*fma_loop)(int64_t iters, float* sink) = nullptr;
  // BF16_PAIRS panels pad k to a multiple of this.
  int k_align = 2;
  // Rows per kernel call when the caller gives none (0: the driver's default).
  int64_t block = 0;
};

const KernelOps& kernel_ops_portable();
const KernelOps& kernel_ops_avx2();
const KernelOps& kernel_ops_avx512();      // AVX-512F fp32 FMA
const KernelOps& kernel_ops_avx512_bf16(); // + vdpbf16ps for bf16 weights
const KernelOps& kernel_ops_amx();          // + AMX tiles (TDPBF16PS) for bf16 weights
const KernelOps& kernel_ops_amx_emulated(); // the AMX kernel with tile operations in C++

const KernelOps& kernel_ops(Isa isa);

// Row `row` of v as float32 into dst[0..d): the ISA's exact conversion of the stored
// values, times the row's scale for quantised storage (one float32 product per element,
// as the torch reference computes it). What the scoring kernels and the graph search read.
inline void read_row(const KernelOps& ops, const VectorsView& v, int64_t row, float* dst) {
  ops.convert_row(v.dtype, static_cast<const char*>(v.data) + static_cast<size_t>(row) * v.d * vector_dtype_size(v.dtype),
                  dst, v.d);
  if (v.scales) {
    const float s = v.scales[row];
    for (int64_t j = 0; j < v.d; ++j) dst[j] *= s;
  }
}

}  // namespace cpu
}  // namespace hyp
