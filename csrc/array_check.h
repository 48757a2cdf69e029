// Validation of arrays handed over from Python. The C++ side trusts nothing: every
// entry point checks dtype, rank, shape and contiguity here and throws
// std::invalid_argument (a Python ValueError) or pybind11::type_error (a TypeError).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace hyp {

namespace py = pybind11;

// Element kinds as the Python side passes them (bfloat16 travels as a uint16 view).
enum class Kind { F32, F16, BF16, I32, I64, U8, I8 };

inline const char* kind_name(Kind k) {
  switch (k) {
    case Kind::F32: return "float32";
    case Kind::F16: return "float16";
    case Kind::BF16: return "bfloat16 (as uint16)";
    case Kind::I32: return "int32";
    case Kind::I64: return "int64";
    case Kind::U8: return "uint8";
    case Kind::I8: return "int8";
  }
  return "?";
}

// Whether the array's elements are in this machine's byte order. numpy can hand over a
// byte-swapped array ('>f2' on x86) whose bits would be read as other numbers.
inline bool native_byte_order(const py::array& a) {
  const char order = a.dtype().byteorder();
  if (order == '=' || order == '|') return true;
  const uint16_t probe = 1;
  const bool little = *reinterpret_cast<const uint8_t*>(&probe) == 1;
  return order == (little ? '<' : '>');
}

inline bool array_is(const py::array& a, Kind k) {
  if (!native_byte_order(a)) return false;
  switch (k) {
    case Kind::F32: return py::isinstance<py::array_t<float>>(a);
    case Kind::F16: return a.dtype().kind() == 'f' && a.itemsize() == 2;
    case Kind::BF16: return a.dtype().kind() == 'u' && a.itemsize() == 2;
    case Kind::I32: return a.dtype().kind() == 'i' && a.itemsize() == 4;
    case Kind::I64: return a.dtype().kind() == 'i' && a.itemsize() == 8;
    case Kind::U8: return a.dtype().kind() == 'u' && a.itemsize() == 1;
    case Kind::I8: return a.dtype().kind() == 'i' && a.itemsize() == 1;
  }
  return false;
}

// Checks rank, C-contiguity and each dimension (-1: any) of `a`.
inline void check_shape(const py::array& a, const char* name, std::vector<int64_t> shape) {
  if (a.ndim() != static_cast<py::ssize_t>(shape.size()))
    throw std::invalid_argument(std::string(name) + ": expected " + std::to_string(shape.size()) +
                                "-D array, got " + std::to_string(a.ndim()) + "-D");
  for (size_t i = 0; i < shape.size(); ++i)
    if (shape[i] >= 0 && a.shape(i) != shape[i])
      throw std::invalid_argument(std::string(name) + ": dimension " + std::to_string(i) + " is " +
                                  std::to_string(a.shape(i)) + ", expected " + std::to_string(shape[i]));
  if (!(a.flags() & py::array::c_style))
    throw std::invalid_argument(std::string(name) + ": array must be C-contiguous");
}

inline void check_kind(const py::array& a, const char* name, Kind k) {
  if (!native_byte_order(a))
    throw py::type_error(std::string(name) + ": array is in non-native byte order (dtype " +
                         std::string(py::str(a.dtype())) + "); convert it with a.astype(a.dtype.newbyteorder('='))");
  if (!array_is(a, k))
    throw py::type_error(std::string(name) + ": expected " + kind_name(k) + " array, got dtype " +
                         std::string(py::str(a.dtype())));
}

inline void check_writeable(const py::array& a, const char* name) {
  if (!a.writeable()) throw std::invalid_argument(std::string(name) + ": array must be writeable");
}

// A result count k: 1..2^31 - 1 (engine.index.MAX_K), so that an absurd k is refused
// before any (Q, k) output is allocated.
inline int64_t k_arg(int64_t k, const char* name = "k") {
  if (k < 1 || k > 2147483647)
    throw std::invalid_argument(std::string(name) + " must be in 1..2147483647, got " + std::to_string(k));
  return k;
}

// A document count handed in on its own (not read from an array's shape): 0..2^48, so
// that sizes derived from it cannot overflow.
inline int64_t count_arg(int64_t n, const char* name) {
  if (n < 0 || n > (int64_t(1) << 48))
    throw std::invalid_argument(std::string(name) + " must be in 0..2^48, got " + std::to_string(n));
  return n;
}

// A thread count handed in from Python (engine.threads: the engine-wide number or the
// call's own), in 1..1024 as engine.threads.MAX_THREADS.
inline int threads_arg(int num_threads) {
  if (num_threads < 1 || num_threads > 1024) throw std::invalid_argument("num_threads must be in 1..1024");
  return num_threads;
}

}  // namespace hyp
