// Fused q-net scoring on tensor cores: the launch interface shared by the kernels
// (qnet_fused.cu) and the Python binding (bindings.cpp).
//
// The interface is plain C++ (no CUDA or torch types) so that the binding compiles with
// the host compiler and the .cu file with nvcc alone (that is what CI compile-checks).
// Weights come packed by engine/backends/qnet_pack.py with pad = 16: every layer is zero-padded
// to multiples of 16 in both dimensions, so the kernels load whole 16 x 16 fragments.
#pragma once

#include <cstddef>
#include <cstdint>

namespace hyp_cuda {

constexpr int kMaxLayers = 32;  // hidden layers; the output layer is one more

// A hidden layer computes y = act(x W + b); then, in this order: y += x when `residual`
// and not `ln_before`; y = layer_norm(y) when `ln_before` or `ln_after`; y += x when
// `residual` and `ln_before` (QNetConfig.layer_ops, the rule of every kernel).
struct LayerGeom {
  int din, dout;          // real widths
  int din_pad, dout_pad;  // padded widths (multiples of 16): the packed matrix's shape
  int residual;           // 1 when the layer adds its input
  int ln_before;          // 1: layer norm before the residual (or with no residual)
  int ln_after;           // 1: layer norm after the residual
  int64_t woff, boff;     // offsets of the layer's weights and bias in a query's row
};

struct QNetGeom {
  int num_layers;  // L hidden layers; layer[L] is the output layer (dout = 1)
  int act_relu;    // 1: relu, 0: identity
  float eps;
  int max_width_pad;  // widest padded width of the document vectors or any layer
  LayerGeom layer[kMaxLayers + 1];
};

enum class DType : int { kHalf = 0, kBFloat16 = 1 };
// How document rows are stored: in the compute dtype, or compressed (int8 or fp8 e4m3)
// with a float32 scale per row (the value of a row is data * scale).
enum class DocType : int { kCompute = 0, kInt8 = 1, kFp8E4M3 = 2 };
enum class Mode : int { kDense = 0, kGather = 1, kDenseTopK = 2 };

struct FusedArgs {
  DType dtype;
  Mode mode;
  int num_queries;
  const void* vectors;  // (n, d) rows of doc_type, unit column stride
  int64_t stride_v;
  DocType doc_type;
  const float* scales;  // compressed rows: (n,) per-row scales; nullptr otherwise
  int64_t n;            // rows of vectors (dense) ...
  int64_t m;            // ... or ids per query (gather)
  int d;
  const int64_t* ids;   // gather: (Q, m) row ids
  int64_t stride_iq;
  const void* w;        // (Q, total_w) packed weights
  int64_t stride_wq;
  const void* b;        // (Q, total_b) packed biases
  int64_t stride_bq;
  QNetGeom geom;
  float* out;           // dense/gather: (Q, n or m) scores
  int64_t stride_oq;
  int64_t* cand;        // dense top-k: (Q, nblocks * kblk) keys (prefilled with the pad key)
  int64_t stride_cq;
  int kblk;             // candidates kept per tile, <= block rows
  int64_t base;         // id of vectors' first row, for the keys
  int block_rows;       // documents per CTA: 16, 32 or 64 (see choose_block_rows)
};

// Shared memory one CTA needs for a tile of `block_rows` documents.
size_t smem_bytes(DType dtype, int max_width_pad, int block_rows);

// Largest tile (64, 32 or 16 rows) whose shared memory fits `smem_limit` bytes; 0 if none.
int choose_block_rows(DType dtype, int max_width_pad, size_t smem_limit);

// The device's opt-in shared memory per block (bytes), or 0 with no device.
size_t device_smem_limit(int device);

// Launches on `stream` (a cudaStream_t). Returns nullptr, or an error message.
const char* launch_fused(const FusedArgs& args, void* stream);

}  // namespace hyp_cuda
