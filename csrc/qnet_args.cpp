#include "qnet_args.h"

#include "cpu/isa.h"
#include "cpu/kernel_ops.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <stdexcept>
#include <string>

namespace hyp {

DType float_dtype(const py::array& a, const char* name) {
  if (array_is(a, Kind::F32)) return DType::F32;
  if (array_is(a, Kind::F16)) return DType::F16;
  if (array_is(a, Kind::BF16)) return DType::BF16;
  throw py::type_error(std::string(name) + ": expected float32, float16 or bfloat16 (as uint16) array, got dtype " +
                       std::string(py::str(a.dtype())));
}

QNetFlags parse_flags(const py::dict& flags) {
  static const char* const keys[] = {"relu", "layer_norm", "residual", "residual_on_last",
                                     "layer_norm_before_residual", "eps", "bf16"};
  for (const auto& item : flags) {
    const std::string key = py::str(item.first);
    if (std::find(std::begin(keys), std::end(keys), key) == std::end(keys))
      throw std::invalid_argument("q-net flags: unknown key '" + key + "'");
  }
  auto get = [&](const char* key) -> py::object {
    if (!flags.contains(key)) throw std::invalid_argument(std::string("q-net flags: missing '") + key + "'");
    return flags[key];
  };
  auto flag = [&](const char* key) {
    py::object v = get(key);
    if (!py::isinstance<py::bool_>(v)) throw py::type_error(std::string("q-net flags: '") + key + "' must be a bool");
    return v.cast<bool>();
  };
  QNetFlags f;
  f.relu = flag("relu");
  f.layer_norm = flag("layer_norm");
  f.residual = flag("residual");
  f.residual_on_last = flag("residual_on_last");
  f.layer_norm_before_residual = flag("layer_norm_before_residual");
  f.bf16 = flag("bf16");
  py::object eps = get("eps");
  if (!py::isinstance<py::float_>(eps)) throw py::type_error("q-net flags: 'eps' must be a float");
  f.eps = eps.cast<double>();
  return f;
}

void parse_qnet(QNetArgs& a, const py::list& weights, const py::list& biases, const QNetFlags& flags) {
  const int64_t nw = static_cast<int64_t>(weights.size());
  if (nw < 1) throw std::invalid_argument("weights: a q-net needs at least the output layer");
  if (static_cast<int64_t>(biases.size()) != nw - 1)
    throw std::invalid_argument("biases: expected " + std::to_string(nw - 1) + " arrays (one per hidden layer), got " +
                                std::to_string(biases.size()));
  if (!(flags.eps > 0) || !std::isfinite(flags.eps)) throw std::invalid_argument("eps must be positive and finite");
  const int L = static_cast<int>(nw - 1);
  DType wdt = DType::F32;
  int64_t Q = -1;
  for (int i = 0; i <= L; ++i) {
    const std::string name = "weights[" + std::to_string(i) + "]";
    py::array w = py::reinterpret_borrow<py::object>(weights[i]).cast<py::array>();
    const DType t = float_dtype(w, name.c_str());
    if (i == 0) {
      wdt = t;
      check_shape(w, name.c_str(), {-1, -1, -1});
      Q = w.shape(0);
      a.dims.push_back(w.shape(1));
    } else if (t != wdt) {
      throw py::type_error(name + ": every weight and bias must have the dtype of weights[0]");
    }
    check_shape(w, name.c_str(), {Q, a.dims[i], i == L ? 1 : -1});
    a.dims.push_back(w.shape(2));
    a.w.push_back(w.data());
    a.arrays.push_back(w);
  }
  for (int i = 0; i < L; ++i) {
    const std::string name = "biases[" + std::to_string(i) + "]";
    py::array b = py::reinterpret_borrow<py::object>(biases[i]).cast<py::array>();
    if (float_dtype(b, name.c_str()) != wdt)
      throw py::type_error(name + ": every weight and bias must have the dtype of weights[0]");
    check_shape(b, name.c_str(), {Q, a.dims[i + 1]});
    a.b.push_back(b.data());
    a.arrays.push_back(b);
    const bool res = flags.residual && (flags.residual_on_last || i < L - 1);
    if (res && a.dims[i] != a.dims[i + 1])
      throw std::invalid_argument("hidden layer " + std::to_string(i) + " has a residual but maps " +
                                  std::to_string(a.dims[i]) + " -> " + std::to_string(a.dims[i + 1]));
  }
  for (int64_t d : a.dims)
    if (d <= 0) throw std::invalid_argument("q-net widths must be positive");
  QNetView& v = a.view;
  v.num_layers = L;
  v.num_queries = Q;
  v.dims = a.dims.data();
  v.weights = a.w.data();
  v.biases = a.b.data();
  v.wdtype = wdt;
  v.relu = flags.relu;
  v.layer_norm = flags.layer_norm;
  v.residual = flags.residual;
  v.residual_on_last = flags.residual_on_last;
  v.layer_norm_before_residual = flags.layer_norm_before_residual;
  v.eps = static_cast<float>(flags.eps);
  v.bf16 = flags.bf16;
}

void QNetArgs::widen() {
  if (view.wdtype != DType::F16) return;
  const cpu::KernelOps& ops = cpu::kernel_ops(active_isa());
  const int L = view.num_layers;
  const int64_t Q = view.num_queries;
  auto conv = [&](const void* src, int64_t n) {
    widened.emplace_back(static_cast<size_t>(n));
    ops.convert_row(DType::F16, src, widened.back().data(), n);
    return static_cast<const void*>(widened.back().data());
  };
  widened.reserve(static_cast<size_t>(2 * L + 1));
  for (int i = 0; i <= L; ++i) w[i] = conv(w[i], Q * dims[i] * dims[i + 1]);
  for (int i = 0; i < L; ++i) b[i] = conv(b[i], Q * dims[i + 1]);
  view.wdtype = DType::F32;
}

VectorsView parse_vectors(const py::array& vec, int64_t d, const py::object& scales) {
  VectorsView v;
  if (array_is(vec, Kind::I8)) v.dtype = DType::I8;
  else if (array_is(vec, Kind::U8)) v.dtype = DType::F8E4M3;
  else v.dtype = float_dtype(vec, "vectors");
  check_shape(vec, "vectors", {-1, d});
  v.data = vec.data();
  v.n = vec.shape(0);
  v.d = d;
  const bool quantized = v.dtype == DType::I8 || v.dtype == DType::F8E4M3;
  if (scales.is_none()) {
    if (quantized)
      throw std::invalid_argument(std::string("vectors: ") + (v.dtype == DType::I8 ? "int8" : "float8_e4m3 (uint8)") +
                                  " rows need scales (float32, shape (n,))");
    return v;
  }
  if (!quantized) throw std::invalid_argument("scales: apply to int8 / float8_e4m3 vectors only");
  if (!py::isinstance<py::array>(scales)) throw py::type_error("scales: expected a float32 numpy array");
  const py::array s = scales.cast<py::array>();
  check_kind(s, "scales", Kind::F32);
  check_shape(s, "scales", {v.n});
  v.scales = static_cast<const float*>(s.data());
  return v;
}

}  // namespace hyp
