// Instruction-set selection for the CPU q-net kernels. The extension is built without
// -march, so each SIMD path lives in its own translation unit compiled under a target
// pragma, and the path is chosen here at run time from what the CPU reports.
#pragma once

#include <string>
#include <vector>

namespace hyp {

enum class Isa : int { Portable = 0, Avx2 = 1, Avx512 = 2, Avx512Bf16 = 3 };

const char* isa_name(Isa isa);

// Whether this CPU can run `isa` (Portable always can).
bool isa_supported(Isa isa);

// Names of every ISA this CPU can run, weakest first.
std::vector<std::string> supported_isa_names();

// The ISA in use: the best the CPU supports, unless HYPENCODER_CPU_ISA names another
// (read once, at first use; an unknown or unsupported name throws std::invalid_argument).
Isa active_isa();

// Forces `name` for the rest of the process ("auto": back to the best supported).
// Throws std::invalid_argument for an unknown name or one the CPU cannot run.
void set_active_isa(const std::string& name);

}  // namespace hyp
