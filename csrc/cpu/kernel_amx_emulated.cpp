// The AMX block kernel with its tile instructions carried out in C++: the packing, tile
// layout, block loop and AVX-512 epilogue of kernel_amx.cpp (the same amx_block.inc), so
// that they are tested on CPUs without AMX; only the tile instructions themselves differ.
// Selected only by name (HYPENCODER_CPU_ISA=amx_emulated): slow, for tests.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "cpu/kernel_ops.h"

#if defined(__x86_64__)

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")

namespace hyp {
namespace cpu {
namespace amx_emulated {
namespace {
#include "cpu/avx512_defs.inc"
#include "cpu/qnet_block.inc"

// The eight tile registers of this thread, each 16 rows x 64 bytes (the only
// configuration amx_block.inc uses).
struct alignas(64) Tile {
  uint8_t row[16][64];
};
thread_local Tile g_tiles[8];
thread_local bool g_configured = false;

inline float bf16_to_f32_daz(uint16_t h) {
  const uint32_t u = (h & 0x7f80u) ? static_cast<uint32_t>(h) << 16 : (static_cast<uint32_t>(h & 0x8000u) << 16);
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float ftz(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (!(u & 0x7f800000u)) u &= 0x80000000u;
  std::memcpy(&f, &u, 4);
  return f;
}

struct EmuTiles {
  static void configure() { g_configured = true; }
  static void release() { g_configured = false; }
  template <int T>
  static void load(const void* p, int64_t stride) {
    for (int r = 0; r < 16; ++r) std::memcpy(g_tiles[T].row[r], static_cast<const uint8_t*>(p) + r * stride, 64);
  }
  template <int T>
  static void store(void* p, int64_t stride) {
    for (int r = 0; r < 16; ++r) std::memcpy(static_cast<uint8_t*>(p) + r * stride, g_tiles[T].row[r], 64);
  }
  // TDPBF16PS as the instruction set reference defines it: for each row m and k-pair kk,
  // c[m][n] += a[m][2kk] * b[kk][2n], then += a[m][2kk+1] * b[kk][2n+1], each an fp32 FMA
  // rounding to nearest even, bf16 inputs denormals-as-zero, results flushed to zero.
  template <int C, int A, int B>
  static void dp() {
    if (!g_configured) std::abort();  // a tile instruction before ldtilecfg faults on hardware
    float c[16][16];
    uint16_t a[16][32], b[16][32];
    std::memcpy(c, g_tiles[C].row, sizeof c);
    std::memcpy(a, g_tiles[A].row, sizeof a);
    std::memcpy(b, g_tiles[B].row, sizeof b);
    for (int m = 0; m < 16; ++m)
      for (int kk = 0; kk < 16; ++kk) {
        const float a0 = bf16_to_f32_daz(a[m][2 * kk]), a1 = bf16_to_f32_daz(a[m][2 * kk + 1]);
        for (int n = 0; n < 16; ++n) {
          float t = ftz(std::fma(a0, bf16_to_f32_daz(b[kk][2 * n]), c[m][n]));
          c[m][n] = ftz(std::fma(a1, bf16_to_f32_daz(b[kk][2 * n + 1]), t));
        }
      }
    std::memcpy(g_tiles[C].row, c, sizeof c);
  }
};

#include "cpu/amx_block.inc"

static void forward_bf16(const PackedQuery& pq, const Workspace& ws, int64_t rows, float* scores) {
  forward_amx<EmuTiles>(pq, ws, rows, scores);
}
}  // namespace
}  // namespace amx_emulated

const KernelOps& kernel_ops_amx_emulated() {
  static const KernelOps ops{Isa::AmxEmulated, amx_emulated::kTileRows, amx_emulated::NR,
                             &amx_emulated::forward_f32, &amx_emulated::forward_bf16,
                             &amx_emulated::convert_row, &amx_emulated::fma_loop,
                             static_cast<int>(amx_emulated::kTileK), amx_emulated::kAmxBlock};
  return ops;
}

}  // namespace cpu
}  // namespace hyp

#pragma GCC pop_options

#else  // not x86-64: never selected.

namespace hyp {
namespace cpu {
const KernelOps& kernel_ops_amx_emulated() { return kernel_ops_portable(); }
}  // namespace cpu
}  // namespace hyp

#endif
