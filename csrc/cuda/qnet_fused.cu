// Fused q-net scoring on tensor cores (WMMA, fp16/bf16 in, fp32 accumulate), sm_80+.
//
// One CTA scores a tile of BN documents for one query and runs every layer on it with
// the activations in shared memory: X (the layer input) and Y (the layer output before
// normalisation), both BN x ldx in the compute dtype. Per layer, each warp owns pairs of
// 16-column output fragments and accumulates X @ W over the input in 16-wide steps
// (A fragments from shared memory, B fragments straight from the L2-resident weights:
// every weight element is read once per CTA). The epilogue adds the bias and the
// activation (and the residual when the norm follows it) and writes Y; then one warp
// per row computes the layer-norm statistics in fp32 (two passes, like the reference),
// normalises, adds the residual and writes the next X. The output layer is a row dot.
// Nothing but the scores (or each tile's top-k keys) reaches global memory.
//
// Compressed documents (int8 or fp8 e4m3 rows with a float32 scale per row) enter X as
// their raw values (exact in fp16 and bf16); the first layer, linear in its input,
// scales each row's accumulator before the bias, and so do the reads of X as a residual
// (or, with no hidden layer, the output dot) until the first layer's output replaces it.
//
// Grid: (document blocks, queries). Blocks of one query are adjacent in launch order, so
// the CTAs resident at one time share that query's weights in L2.
//
// wgmma (sm_90) is not used: it needs the B operand in shared memory, and with the
// activations already taking most of it the staging would cost the tile size that
// wgmma would need to pay off. Unmeasured: see bench/RESULTS.md.

#include "qnet_fused.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdio>

namespace hyp_cuda {
namespace {

using namespace nvcuda;

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kFrag = 16;
constexpr int64_t kPadKey = INT64_MIN;

__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// fp8 e4m3 -> float: cuda_fp8.h converts with cvt on sm_89+ and in software below
// (sm_80 has no fp8 instructions).
__device__ __forceinline__ float fp8_e4m3_to_f(uint8_t b) {
  __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(b), __NV_E4M3);
  return __half2float(__half(h));
}

// Element c of stored row id, as the compute dtype (raw, unscaled for compressed rows).
template <typename T>
__device__ __forceinline__ T load_doc(const FusedArgs& a, int64_t id, int c) {
  const int64_t at = id * a.stride_v + c;
  switch (a.doc_type) {
    case DocType::kInt8: return from_f<T>(static_cast<float>(static_cast<const int8_t*>(a.vectors)[at]));
    case DocType::kFp8E4M3: return from_f<T>(fp8_e4m3_to_f(static_cast<const uint8_t*>(a.vectors)[at]));
    default: return static_cast<const T*>(a.vectors)[at];
  }
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Row stride of the shared tiles: 8 extra elements (16 bytes) shift consecutive rows
// across banks; still a multiple of 8 elements, as WMMA requires.
__host__ __device__ constexpr int tile_ld(int max_width_pad) { return max_width_pad + 8; }

// Same keys as engine/backends/topk_keys.py: order-preserving score bits high, ~id low.
__device__ __forceinline__ int64_t score_key(float s, int64_t id) {
  int32_t bits = __float_as_int(s + 0.0f);  // + 0.0f folds -0.0 onto +0.0
  uint32_t key32 = bits < 0 ? ~static_cast<uint32_t>(bits) : (static_cast<uint32_t>(bits) | 0x80000000u);
  int64_t hi = static_cast<int64_t>(key32) - 2147483648LL;
  return static_cast<int64_t>(static_cast<uint64_t>(hi) << 32) | (4294967295LL - id);
}

// Fused top-k: rank each of the BN keys by counting the larger ones (keys of real rows
// are distinct: they carry the id) and write the best kblk in order, so k candidates per
// tile leave the kernel instead of BN scores.
__device__ void fused_topk_tail(const float* scores, const int64_t* rowid, int64_t* keys,
                                const FusedArgs& a, int q, int BN) {
  for (int r = threadIdx.x; r < BN; r += kThreads)
    keys[r] = rowid[r] >= 0 ? score_key(scores[r], a.base + rowid[r]) : kPadKey;
  __syncthreads();
  for (int r = threadIdx.x; r < BN; r += kThreads) {
    int64_t key = keys[r];
    if (key == kPadKey) continue;  // the slots are prefilled with the pad key
    int rank = 0;
    for (int j = 0; j < BN; ++j) rank += keys[j] > key;
    if (rank < a.kblk) a.cand[q * a.stride_cq + static_cast<int64_t>(blockIdx.x) * a.kblk + rank] = key;
  }
}

template <typename T, int BN, Mode MODE>
__global__ void __launch_bounds__(kThreads) qnet_fused_kernel(FusedArgs a) {
  constexpr int RF = BN / kFrag;  // row fragments per tile
  extern __shared__ __align__(128) unsigned char smem[];
  const QNetGeom& g = a.geom;
  const int ldx = tile_ld(g.max_width_pad);
  T* X = reinterpret_cast<T*>(smem);
  T* Y = X + BN * ldx;
  float* stage = reinterpret_cast<float*>(Y + BN * ldx);  // kWarps x 16 x 16
  float* scores = stage + kWarps * kFrag * kFrag;          // BN
  float* rowscale = scores + BN;                           // BN: compressed rows' scales
  int64_t* rowid = reinterpret_cast<int64_t*>(rowscale + BN);  // BN (-1: no document)
  int64_t* keys = rowid + BN;                              // BN

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int q = blockIdx.y;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * BN;
  const int64_t rows_total = MODE == Mode::kGather ? a.m : a.n;
  const T* W = static_cast<const T*>(a.w) + q * a.stride_wq;
  const T* B = static_cast<const T*>(a.b) + q * a.stride_bq;

  for (int r = threadIdx.x; r < BN; r += kThreads) {
    int64_t j = first + r;
    int64_t id = -1;
    if (j < rows_total) id = MODE == Mode::kGather ? a.ids[q * a.stride_iq + j] : j;
    rowid[r] = id;
    rowscale[r] = a.scales != nullptr && id >= 0 ? a.scales[id] : 1.0f;
  }
  __syncthreads();

  // The documents into X; padding rows and columns are zeros (finite through every
  // layer, and zero columns meet zero weight rows).
  const int d_pad = g.layer[0].din_pad;
  for (int i = threadIdx.x; i < BN * d_pad; i += kThreads) {
    int r = i / d_pad, c = i % d_pad;
    int64_t id = rowid[r];
    X[r * ldx + c] = (id >= 0 && c < a.d) ? load_doc<T>(a, id, c) : from_f<T>(0.0f);
  }
  __syncthreads();

  float* my_stage = stage + warp * kFrag * kFrag;
  for (int l = 0; l < g.num_layers; ++l) {
    const LayerGeom& lg = g.layer[l];
    const T* Wl = W + lg.woff;
    const T* Bl = B + lg.boff;
    const int ncf = lg.dout_pad / kFrag;
    const bool res_first = lg.residual && !lg.ln_before;  // the residual goes in before the norm
    const bool res_last = lg.residual && lg.ln_before;
    const bool normalise = lg.ln_before || lg.ln_after;
    const bool scaled = l == 0 && a.scales != nullptr;  // X holds compressed rows' raw values

    // Y = act(X @ W + b) (+ X when the norm comes after the residual).
    for (int cf = warp * 2; cf < ncf; cf += kWarps * 2) {
      const bool two = cf + 1 < ncf;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[RF][2];
#pragma unroll
      for (int i = 0; i < RF; ++i) {
        wmma::fill_fragment(acc[i][0], 0.0f);
        wmma::fill_fragment(acc[i][1], 0.0f);
      }
      for (int k = 0; k < lg.din_pad; k += kFrag) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b0, b1;
        wmma::load_matrix_sync(b0, Wl + static_cast<int64_t>(k) * lg.dout_pad + cf * kFrag, lg.dout_pad);
        if (two) wmma::load_matrix_sync(b1, Wl + static_cast<int64_t>(k) * lg.dout_pad + (cf + 1) * kFrag, lg.dout_pad);
#pragma unroll
        for (int i = 0; i < RF; ++i) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> af;
          wmma::load_matrix_sync(af, X + i * kFrag * ldx + k, ldx);
          wmma::mma_sync(acc[i][0], af, b0, acc[i][0]);
          if (two) wmma::mma_sync(acc[i][1], af, b1, acc[i][1]);
        }
      }
#pragma unroll
      for (int i = 0; i < RF; ++i) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          if (h == 1 && !two) break;
          wmma::store_matrix_sync(my_stage, acc[i][h], kFrag, wmma::mem_row_major);
          __syncwarp();
          for (int e = lane; e < kFrag * kFrag; e += 32) {
            int r = i * kFrag + e / kFrag, c = (cf + h) * kFrag + e % kFrag;
            float v = 0.0f;
            if (c < lg.dout) {
              const float xs = scaled ? rowscale[r] : 1.0f;
              v = my_stage[e] * xs + to_f(Bl[c]);
              if (g.act_relu) v = fmaxf(v, 0.0f);
              if (res_first) v += to_f(X[r * ldx + c]) * xs;
            }
            Y[r * ldx + c] = from_f<T>(v);
          }
          __syncwarp();
        }
      }
    }
    __syncthreads();

    // Layer norm per row (one warp a row), residual, and the next layer's input.
    for (int r = warp; r < BN; r += kWarps) {
      float mean = 0.0f, rstd = 1.0f;
      if (normalise) {
        float s = 0.0f;
        for (int c = lane; c < lg.dout; c += 32) s += to_f(Y[r * ldx + c]);
        mean = warp_sum(s) / lg.dout;
        float s2 = 0.0f;
        for (int c = lane; c < lg.dout; c += 32) {
          float dl = to_f(Y[r * ldx + c]) - mean;
          s2 += dl * dl;
        }
        rstd = rsqrtf(warp_sum(s2) / lg.dout + g.eps);
      }
      for (int c = lane; c < lg.dout_pad; c += 32) {
        float v = 0.0f;
        if (c < lg.dout) {
          v = to_f(Y[r * ldx + c]);
          if (normalise) v = (v - mean) * rstd;
          if (res_last) v += to_f(X[r * ldx + c]) * (scaled ? rowscale[r] : 1.0f);
        }
        X[r * ldx + c] = from_f<T>(v);
      }
    }
    __syncthreads();
  }

  // Output layer: score = x . w_out, one warp a row.
  const LayerGeom& og = g.layer[g.num_layers];
  const T* Wo = W + og.woff;
  for (int r = warp; r < BN; r += kWarps) {
    float s = 0.0f;
    for (int c = lane; c < og.din; c += 32) s += to_f(X[r * ldx + c]) * to_f(Wo[static_cast<int64_t>(c) * og.dout_pad]);
    s = warp_sum(s);
    if (g.num_layers == 0 && a.scales != nullptr) s *= rowscale[r];
    if (lane == 0) scores[r] = s;
  }
  __syncthreads();

  if constexpr (MODE != Mode::kDenseTopK) {
    for (int r = threadIdx.x; r < BN; r += kThreads) {
      int64_t j = first + r;
      if (j < rows_total) a.out[q * a.stride_oq + j] = scores[r];
    }
  } else {
    fused_topk_tail(scores, rowid, keys, a, q, BN);
  }
}

template <typename T, int BN, Mode MODE>
const char* launch_typed(const FusedArgs& a, cudaStream_t stream) {
  const int64_t rows = MODE == Mode::kGather ? a.m : a.n;
  const int64_t nblocks = (rows + BN - 1) / BN;
  if (nblocks == 0 || a.num_queries == 0) return nullptr;
  if (nblocks > 0x7fffffffLL) return "too many document blocks for one launch";
  if (a.num_queries > 65535) return "at most 65535 queries per launch";
  const size_t smem = smem_bytes(a.dtype, a.geom.max_width_pad, BN);
  auto kernel = qnet_fused_kernel<T, BN, MODE>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return cudaGetErrorString(err);
  dim3 grid(static_cast<unsigned>(nblocks), static_cast<unsigned>(a.num_queries));
  kernel<<<grid, kThreads, smem, stream>>>(a);
  err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

template <typename T, Mode MODE>
const char* launch_rows(const FusedArgs& a, cudaStream_t stream) {
  switch (a.block_rows) {
    case 64: return launch_typed<T, 64, MODE>(a, stream);
    case 32: return launch_typed<T, 32, MODE>(a, stream);
    case 16: return launch_typed<T, 16, MODE>(a, stream);
    default: return "block_rows must be 16, 32 or 64";
  }
}

template <typename T>
const char* launch_mode(const FusedArgs& a, cudaStream_t stream) {
  switch (a.mode) {
    case Mode::kDense: return launch_rows<T, Mode::kDense>(a, stream);
    case Mode::kGather: return launch_rows<T, Mode::kGather>(a, stream);
    case Mode::kDenseTopK: return launch_rows<T, Mode::kDenseTopK>(a, stream);
  }
  return "unknown mode";
}

}  // namespace

size_t smem_bytes(DType dtype, int max_width_pad, int block_rows) {
  (void)dtype;  // both compute dtypes are 2 bytes
  const size_t tile = static_cast<size_t>(block_rows) * tile_ld(max_width_pad) * 2;
  return 2 * tile + kWarps * kFrag * kFrag * sizeof(float) +
         block_rows * (2 * sizeof(float) + 2 * sizeof(int64_t));
}

int choose_block_rows(DType dtype, int max_width_pad, size_t smem_limit) {
  for (int bn : {64, 32, 16})
    if (smem_bytes(dtype, max_width_pad, bn) <= smem_limit) return bn;
  return 0;
}

size_t device_smem_limit(int device) {
  int v = 0;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) return 0;
  return static_cast<size_t>(v);
}

const char* launch_fused(const FusedArgs& a, void* stream) {
  if (a.geom.num_layers < 0 || a.geom.num_layers > kMaxLayers) return "too many q-net layers";
  if (a.mode == Mode::kDenseTopK && (a.kblk < 1 || a.kblk > a.block_rows))
    return "kblk must be in 1..block_rows";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  return a.dtype == DType::kHalf ? launch_mode<__half>(a, s) : launch_mode<__nv_bfloat16>(a, s);
}

}  // namespace hyp_cuda
