#include "cpu/isa.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define HYP_X86 1
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace hyp {

namespace {

constexpr Isa kNative[] = {Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16, Isa::Amx};
constexpr Isa kAll[] = {Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16, Isa::Amx, Isa::AmxEmulated};

#ifdef HYP_X86
// CPUID.(7,0):EDX bit 24 AMX-TILE, bit 22 AMX-BF16 (read directly: older compilers'
// __builtin_cpu_supports does not know them).
bool cpu_has_amx_bf16() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return (d & (1u << 24)) && (d & (1u << 22));
}

// The OS saves tile state: XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA).
bool os_enables_tiles() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  const uint64_t xcr0 = (static_cast<uint64_t>(hi) << 32) | lo;
  return (xcr0 & (uint64_t(3) << 17)) == (uint64_t(3) << 17);
}

bool vendor_is(const char* name) {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
  char v[13];
  std::memcpy(v, &b, 4);
  std::memcpy(v + 4, &d, 4);
  std::memcpy(v + 8, &c, 4);
  v[12] = 0;
  return std::strcmp(v, name) == 0;
}
#endif

// Whether the automatic choice takes the vdpbf16ps kernel for bf16 q-nets. On AMD Zen 4
// and 5 vdpbf16ps does two multiply-adds per lane at the fp32 FMA's rate: twice its
// FLOPs (measured on Zen 4: 1.9x the fp32 kernel). On Intel's server cores it runs at
// about half the rate of their two 512-bit FMA ports (a Xeon measured 209 GFLOP/s
// against 312 in fp32), so there the fp32 kernel is faster, and bf16 belongs to AMX.
bool bf16_dot_pays() {
#ifdef HYP_X86
  return !vendor_is("GenuineIntel");
#else
  return false;
#endif
}

// Linux (5.16 and later) hands tile data to a process only after it asks, once, for the
// whole process; without that the first tile instruction raises SIGILL.
bool tile_data_permitted() {
#if defined(HYP_X86) && defined(__linux__) && defined(SYS_arch_prctl)
  static const bool ok = [] {
    constexpr int kGetPerm = 0x1022, kReqPerm = 0x1023, kXtileData = 18;  // asm/prctl.h
    if (syscall(SYS_arch_prctl, kReqPerm, kXtileData) != 0) return false;
    unsigned long bits = 0;
    if (syscall(SYS_arch_prctl, kGetPerm, &bits) != 0) return false;
    return (bits & (1ul << kXtileData)) != 0;
  }();
  return ok;
#else
  return false;
#endif
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Portable: return "portable";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Avx512Bf16: return "avx512_bf16";
    case Isa::Amx: return "amx";
    case Isa::AmxEmulated: return "amx_emulated";
  }
  return "?";
}

std::string isa_status(Isa isa) {
#ifdef HYP_X86
  __builtin_cpu_init();
  switch (isa) {
    case Isa::Portable: return "ok";
    case Isa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")
                 ? "ok"
                 : "the CPU lacks AVX2, FMA or F16C";
    case Isa::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                     __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                     __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")
                 ? "ok"
                 : "the CPU lacks AVX-512 F/BW/VL/DQ";
    case Isa::Avx512Bf16:
      if (!isa_supported(Isa::Avx512)) return isa_status(Isa::Avx512);
      return __builtin_cpu_supports("avx512bf16") ? "ok" : "the CPU lacks AVX512-BF16";
    case Isa::Amx:
      if (!isa_supported(Isa::Avx512)) return isa_status(Isa::Avx512);
      if (!cpu_has_amx_bf16()) return "the CPU lacks AMX-TILE and AMX-BF16";
      if (!os_enables_tiles()) return "the CPU has AMX but the operating system does not enable tile state (XCR0)";
      if (!tile_data_permitted())
        return "the CPU has AMX but the kernel refused tile data to this process (arch_prctl; Linux 5.16 or later needed)";
      return "ok";
    case Isa::AmxEmulated:
      return isa_supported(Isa::Avx512) ? "ok" : "the AMX emulation runs AVX-512 code: " + isa_status(Isa::Avx512);
  }
  return "unknown ISA";
#else
  return isa == Isa::Portable ? "ok" : "not an x86-64 CPU";
#endif
}

bool isa_supported(Isa isa) {
  if (isa == Isa::Portable) return true;
  // Each answer is fixed for the process: compute it once.
  static std::atomic<int> cache[6] = {{-1}, {-1}, {-1}, {-1}, {-1}, {-1}};
  const int i = static_cast<int>(isa);
  int v = cache[i].load(std::memory_order_relaxed);
  if (v < 0) {
    v = isa_status(isa) == "ok" ? 1 : 0;
    cache[i].store(v, std::memory_order_relaxed);
  }
  return v == 1;
}

std::vector<std::string> supported_isa_names() {
  std::vector<std::string> out;
  for (Isa i : kNative)
    if (isa_supported(i)) out.push_back(isa_name(i));
  return out;
}

namespace {

Isa best_isa() {
  for (Isa i : {Isa::Amx, Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2})
    if (isa_supported(i) && (i != Isa::Avx512Bf16 || bf16_dot_pays())) return i;
  return Isa::Portable;
}

Isa parse_isa(const std::string& name) {
  if (name.empty() || name == "auto") return best_isa();
  for (Isa i : kAll) {
    if (name == isa_name(i)) {
      if (!isa_supported(i)) {
        std::string s;
        for (auto& n : supported_isa_names()) s += (s.empty() ? "" : ", ") + n;
        throw std::invalid_argument("CPU ISA '" + name + "' is not supported here (" + isa_status(i) +
                                    "); supported: " + s);
      }
      return i;
    }
  }
  throw std::invalid_argument("unknown CPU ISA '" + name +
                              "'; choose auto, portable, avx2, avx512, avx512_bf16, amx or amx_emulated");
}

std::atomic<int> g_isa{-1};
std::mutex g_isa_mu;

}  // namespace

Isa active_isa() {
  int v = g_isa.load(std::memory_order_acquire);
  if (v >= 0) return static_cast<Isa>(v);
  std::lock_guard<std::mutex> lock(g_isa_mu);
  v = g_isa.load(std::memory_order_relaxed);
  if (v < 0) {
    const char* env = std::getenv("HYPENCODER_CPU_ISA");
    Isa isa = parse_isa(env ? std::string(env) : std::string());
    v = static_cast<int>(isa);
    g_isa.store(v, std::memory_order_release);
  }
  return static_cast<Isa>(v);
}

void set_active_isa(const std::string& name) {
  Isa isa = parse_isa(name);
  std::lock_guard<std::mutex> lock(g_isa_mu);
  g_isa.store(static_cast<int>(isa), std::memory_order_release);
}

}  // namespace hyp
