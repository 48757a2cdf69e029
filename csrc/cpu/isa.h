// Instruction-set selection for the CPU q-net kernels. The extension is built without
// -march, so each SIMD path lives in its own translation unit compiled under a target
// pragma, and the path is chosen here at run time from what the CPU reports.
#pragma once

#include <string>
#include <vector>

namespace hyp {

// AmxEmulated runs the AMX kernel's packing, tile layout and block loop with every tile
// instruction carried out in C++ (slowly): a test level for CPUs without AMX, never chosen
// automatically and not listed among the supported levels; it needs AVX-512 (the rest of
// the kernel is the AMX kernel's AVX-512 code).
enum class Isa : int { Portable = 0, Avx2 = 1, Avx512 = 2, Avx512Bf16 = 3, Amx = 4, AmxEmulated = 5 };

const char* isa_name(Isa isa);

// Whether this CPU can run `isa` (Portable always can). For Amx this includes the
// operating system's permission to use tile data, requested (Linux) at the first call.
bool isa_supported(Isa isa);

// "ok", or why this process cannot run `isa` here (for messages and test skips).
std::string isa_status(Isa isa);

// Names of every ISA this CPU can run, weakest first (AmxEmulated excluded).
std::vector<std::string> supported_isa_names();

// The ISA in use: the best the CPU supports (AMX, else AVX512-BF16 except on Intel CPUs,
// where its bf16 dot product is slower than the fp32 FMA kernel, else AVX-512, AVX2), unless
// HYPENCODER_CPU_ISA names another (read once, at first use; an unknown or unsupported
// name throws std::invalid_argument).
Isa active_isa();

// Forces `name` for the rest of the process ("auto": back to the best supported).
// Throws std::invalid_argument for an unknown name or one the CPU cannot run.
void set_active_isa(const std::string& name);

}  // namespace hyp
