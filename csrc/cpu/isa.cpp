#include "cpu/isa.h"

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <stdexcept>

namespace hyp {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Portable: return "portable";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Avx512Bf16: return "avx512_bf16";
  }
  return "?";
}

bool isa_supported(Isa isa) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  switch (isa) {
    case Isa::Portable: return true;
    case Isa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    case Isa::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    case Isa::Avx512Bf16:
      return isa_supported(Isa::Avx512) && __builtin_cpu_supports("avx512bf16");
  }
  return false;
#else
  return isa == Isa::Portable;
#endif
}

std::vector<std::string> supported_isa_names() {
  std::vector<std::string> out;
  for (Isa i : {Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16})
    if (isa_supported(i)) out.push_back(isa_name(i));
  return out;
}

namespace {

Isa best_isa() {
  for (Isa i : {Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2})
    if (isa_supported(i)) return i;
  return Isa::Portable;
}

Isa parse_isa(const std::string& name) {
  if (name.empty() || name == "auto") return best_isa();
  for (Isa i : {Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16}) {
    if (name == isa_name(i)) {
      if (!isa_supported(i))
        throw std::invalid_argument("CPU ISA '" + name +
                                    "' is not supported by this CPU; supported: " + [] {
                                      std::string s;
                                      for (auto& n : supported_isa_names()) s += (s.empty() ? "" : ", ") + n;
                                      return s;
                                    }());
      return i;
    }
  }
  throw std::invalid_argument("unknown CPU ISA '" + name +
                              "'; choose auto, portable, avx2, avx512 or avx512_bf16");
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
