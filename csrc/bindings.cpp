// The one pybind11 module, engine._C: each part of csrc/ registers its functions here.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace hyp {
void register_topk(py::module_& m);
void register_cpu_kernels(py::module_& m);
void register_graph(py::module_& m);
}  // namespace hyp

PYBIND11_MODULE(_C, m) {
  m.doc() = "Hypencoder engine CPU kernels";
  hyp::register_topk(m);
  hyp::register_cpu_kernels(m);
  hyp::register_graph(m);
}
