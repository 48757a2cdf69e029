// Register-only peaks of the multiply-add instructions the CPU kernels use: fp32 FMA
// (vfmadd231ps) and the AVX512-BF16 dot product (vdpbf16ps, two multiply-adds per 32-bit
// lane), each in 512-bit and 256-bit form. Twelve independent accumulator chains, nothing
// else in the loop; timed in the thread's CPU time, so that other processes on the machine
// cost little. Prints GFLOP/s and instructions per ns for each, three rounds.
//
//   g++ -O3 -o /tmp/dot_peaks bench/dot_peaks.cpp && /tmp/dot_peaks
//
// Needs a CPU with AVX512-BF16 (Zen 4 and later, Cooper Lake, Sapphire Rapids and later).
#include <immintrin.h>

#include <cstdio>
#include <ctime>

#pragma GCC target("avx512f,avx512bf16,avx512vl,fma")

namespace {

double cpu_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

#define TARGET __attribute__((noinline))

// One chain step per instruction form; V is the register type.
// Distinct starting values, so that the compiler cannot merge the chains.
template <class V, class Init, class Step, class Sum>
TARGET float chains(long iters, Init init, Step step, Sum sum) {
  V a[12];
#pragma GCC unroll 12
  for (int i = 0; i < 12; ++i) a[i] = init(static_cast<float>(i + 1));
  for (long t = 0; t < iters; ++t) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) a[i] = step(a[i]);
  }
  return sum(a);
}

TARGET float fma512(long it) {
  const __m512 m = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(1e-7f);
  return chains<__m512>(it, [](float f) { return _mm512_set1_ps(f); }, [&](__m512 x) { return _mm512_fmadd_ps(x, m, c); },
                [](__m512* a) { __m512 s = a[0]; for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, a[i]);
                                return _mm512_reduce_add_ps(s); });
}
TARGET float dp512(long it) {
  const __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80), y = (__m512bh)_mm512_set1_epi32(0x3f7f3f7f);
  return chains<__m512>(it, [](float f) { return _mm512_set1_ps(f); }, [&](__m512 a) { return _mm512_dpbf16_ps(a, x, y); },
                [](__m512* a) { __m512 s = a[0]; for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, a[i]);
                                return _mm512_reduce_add_ps(s); });
}
TARGET float fma256(long it) {
  const __m256 m = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(1e-7f);
  return chains<__m256>(it, [](float f) { return _mm256_set1_ps(f); }, [&](__m256 x) { return _mm256_fmadd_ps(x, m, c); },
                [](__m256* a) { __m256 s = a[0]; for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, a[i]);
                                float o[8]; _mm256_storeu_ps(o, s); return o[0]; });
}
TARGET float dp256(long it) {
  const __m256bh x = (__m256bh)_mm256_set1_epi32(0x3f803f80), y = (__m256bh)_mm256_set1_epi32(0x3f7f3f7f);
  return chains<__m256>(it, [](float f) { return _mm256_set1_ps(f); }, [&](__m256 a) { return _mm256_dpbf16_ps(a, x, y); },
                [](__m256* a) { __m256 s = a[0]; for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, a[i]);
                                float o[8]; _mm256_storeu_ps(o, s); return o[0]; });
}

}  // namespace

int main() {
  struct Form {
    const char* name;
    float (*run)(long);
    double flops;  // per instruction
  } forms[] = {{"zmm vfmadd231ps", fma512, 16 * 2}, {"zmm vdpbf16ps", dp512, 16 * 4},
               {"ymm vfmadd231ps", fma256, 8 * 2}, {"ymm vdpbf16ps", dp256, 8 * 4}};
  const long iters = 100000000;
  for (int round = 0; round < 3; ++round)
    for (const Form& f : forms) {
      const double t0 = cpu_seconds();
      volatile float sink = f.run(iters);
      const double t = cpu_seconds() - t0;
      (void)sink;
      std::printf("%-16s %7.1f GFLOP/s  %.2f instructions/ns\n", f.name, 12 * iters * f.flops / t / 1e9,
                  12.0 * iters / t / 1e9);
    }
  return 0;
}
