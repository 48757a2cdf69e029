// Parsing and validation of the q-net and document arrays that every C++ entry point takes
// (CPU kernels, graph search): one place checks dtypes, shapes, contiguity and the
// residual rule, and builds the QNetView / VectorsView the kernels read.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <vector>

#include "array_check.h"
#include "cpu/qnet_kernel.h"

namespace hyp {

// float32, float16 or bfloat16 (passed as uint16); TypeError otherwise.
DType float_dtype(const py::array& a, const char* name);

// The converter's flags (engine.QNetConfig).
struct QNetFlags {
  bool relu = true;
  bool layer_norm = true;
  bool residual = true;
  bool residual_on_last = false;
  bool layer_norm_before_residual = true;
  double eps = 1e-5;
  bool bf16 = false;  // QNetView::bf16: the precision the caller chose (engine/native_args.py)
};

// Owns what a QNetView points at (and keeps the arrays alive) for the duration of one call.
struct QNetArgs {
  std::vector<py::array> arrays;
  std::vector<int64_t> dims;
  std::vector<const void*> w, b;
  std::vector<std::vector<float>> widened;
  QNetView view;
  // float16 weights and biases converted to float32 copies (the kernels pack float32 or
  // bfloat16 panels, and the linearisation reads float32 rows fastest); a no-op for other
  // dtypes. No Python objects are touched: call it with the GIL released.
  void widen();
};

// The flags from engine.native_args.qnet_args(): QNetConfig.kernel_flags() plus "bf16"
// (a dict; every key required, bools strict).
QNetFlags parse_flags(const py::dict& flags);

// weights: L + 1 arrays (Q, in, out), the last (Q, h_L, 1); biases: L arrays (Q, out); all
// one dtype. Throws ValueError / TypeError naming the offending array.
void parse_qnet(QNetArgs& a, const py::list& weights, const py::list& biases, const QNetFlags& flags);
inline void parse_qnet(QNetArgs& a, const py::list& weights, const py::list& biases, const py::dict& flags) {
  parse_qnet(a, weights, biases, parse_flags(flags));
}

// Document vectors (n, d) in float32, float16 or bfloat16 (as uint16), or quantised: int8,
// or float8 e4m3 as its raw byte (uint8), each with `scales` (n,) float32 contiguous. scales
// is required for the quantised dtypes and refused (ValueError) for the others. The scale
// values are not read here (an O(n) pass per call): the Python side checks them once.
VectorsView parse_vectors(const py::array& vec, int64_t d, const py::object& scales = py::none());

}  // namespace hyp
