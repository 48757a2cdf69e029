// AMX block kernel (Intel Sapphire Rapids and later): bf16 q-nets through TDPBF16PS tiles
// (amx_block.inc), fp32 q-nets through the AVX-512 fp32 kernel.
//
// Compiled everywhere, selected only where the CPU reports AMX-TILE and AMX-BF16, the OS
// saves tile state and Linux granted this process tile data (isa.cpp). As in
// kernel_avx512.cpp, every header precedes the target pragma.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/kernel_ops.h"

#if defined(__x86_64__)

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#pragma GCC push_options
#pragma GCC target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")

namespace hyp {
namespace cpu {
namespace amx {
namespace {
#include "cpu/avx512_defs.inc"
#include "cpu/qnet_block.inc"

// Palette 1, every tile 16 rows x 64 bytes: bytes 16 + 2t hold tile t's bytes per row,
// byte 48 + t its rows. A constant in memory: GCC's _tile_loadconfig tells the compiler it
// reads only the first 8 bytes of its operand, so a configuration built on the stack could
// be left half written.
struct alignas(64) TileConfig {
  uint8_t bytes[64];
};
constexpr TileConfig make_config() {
  TileConfig c{};
  c.bytes[0] = 1;
  for (int t = 0; t < 8; ++t) {
    c.bytes[16 + 2 * t] = 64;
    c.bytes[48 + t] = 16;
  }
  return c;
}
alignas(64) constexpr TileConfig kTileConfig = make_config();

// The tile instructions. GCC's _tile_loadd/_tile_stored are asm statements that declare no
// memory access: the compiler barriers make stores before a tile load, and loads after a
// tile store, happen in program order. Tile numbers must be literals in GCC's macros.
#define HYP_BARRIER() __asm__ volatile("" ::: "memory")
struct HwTiles {
  static void configure() {
    HYP_BARRIER();
    _tile_loadconfig(&kTileConfig);
  }
  static void release() { _tile_release(); }
  template <int T>
  static void load(const void* p, int64_t stride) {
    HYP_BARRIER();
    if constexpr (T == 0) _tile_loadd(0, p, stride);
    else if constexpr (T == 1) _tile_loadd(1, p, stride);
    else if constexpr (T == 2) _tile_loadd(2, p, stride);
    else if constexpr (T == 3) _tile_loadd(3, p, stride);
    else if constexpr (T == 4) _tile_loadd(4, p, stride);
    else if constexpr (T == 5) _tile_loadd(5, p, stride);
    else if constexpr (T == 6) _tile_loadd(6, p, stride);
    else _tile_loadd(7, p, stride);
  }
  template <int T>
  static void store(void* p, int64_t stride) {
    static_assert(T < 4, "only C tiles are stored");
    if constexpr (T == 0) _tile_stored(0, p, stride);
    else if constexpr (T == 1) _tile_stored(1, p, stride);
    else if constexpr (T == 2) _tile_stored(2, p, stride);
    else _tile_stored(3, p, stride);
    HYP_BARRIER();
  }
  template <int C, int A, int B>
  static void dp() {
    if constexpr (C == 0 && A == 4 && B == 6) _tile_dpbf16ps(0, 4, 6);
    else if constexpr (C == 1 && A == 4 && B == 7) _tile_dpbf16ps(1, 4, 7);
    else if constexpr (C == 2 && A == 5 && B == 6) _tile_dpbf16ps(2, 5, 6);
    else {
      static_assert(C == 3 && A == 5 && B == 7, "tile triple not used by amx_block.inc");
      _tile_dpbf16ps(3, 5, 7);
    }
  }
};
#undef HYP_BARRIER

#include "cpu/amx_block.inc"

static void forward_bf16(const PackedQuery& pq, const Workspace& ws, int64_t rows, float* scores) {
  forward_amx<HwTiles>(pq, ws, rows, scores);
}
}  // namespace
}  // namespace amx

const KernelOps& kernel_ops_amx() {
  static const KernelOps ops{Isa::Amx, amx::kTileRows, amx::NR, &amx::forward_f32, &amx::forward_bf16,
                             &amx::convert_row, &amx::fma_loop, static_cast<int>(amx::kTileK), amx::kAmxBlock};
  return ops;
}

}  // namespace cpu
}  // namespace hyp

#pragma GCC pop_options

#else  // not x86-64: never selected.

namespace hyp {
namespace cpu {
const KernelOps& kernel_ops_amx() { return kernel_ops_portable(); }
}  // namespace cpu
}  // namespace hyp

#endif
