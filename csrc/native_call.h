// How every Python entry point of engine._C runs its native work: with the GIL released,
// so that other Python threads run (and search) meanwhile, and with the CPU instruction
// set held fixed, so that a call reads one ISA from start to end. A change of ISA
// (engine._C.cpu_set_isa) waits until the calls in flight have ended and holds new ones
// back meanwhile.
#pragma once

#include <pybind11/pybind11.h>

#include <string>
#include <utility>

namespace hyp {

// Marks a native call in flight for its lifetime (see set_isa_between_calls).
class IsaUse {
 public:
  IsaUse();
  ~IsaUse();
  IsaUse(const IsaUse&) = delete;
  IsaUse& operator=(const IsaUse&) = delete;
};

// set_active_isa(name) once no native call is in flight; calls that start meanwhile wait.
// Throws std::invalid_argument for a name this CPU cannot run (the ISA stays as it was).
void set_isa_between_calls(const std::string& name);

// Runs fn() with the GIL released and the ISA held (the one way bindings run work).
template <class F>
auto native_call(F&& fn) -> decltype(fn()) {
  pybind11::gil_scoped_release release;
  IsaUse use;
  return std::forward<F>(fn)();
}

}  // namespace hyp
