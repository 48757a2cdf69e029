// Python entry points of the CPU kernels (engine._C.cpu_*): every array is validated here
// (dtype, shape, contiguity, id range) before any kernel sees it; the kernels run in
// native_call (GIL released, ISA held).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <string>
#include <vector>

#include "array_check.h"
#include "cpu/isa.h"
#include "cpu/kernel_ops.h"
#include "cpu/qnet_kernel.h"
#include "cpu/scan_ops.h"
#include "native_call.h"
#include "parallel.h"
#include "qnet_args.h"

namespace hyp {

namespace py = pybind11;

namespace {

// The optional prepacked q-nets of a call: None or a CpuPackedQNets (TypeError else).
const PackedQNets* packed_arg(const py::object& packed) {
  if (packed.is_none()) return nullptr;
  if (!py::isinstance<PackedQNets>(packed))
    throw py::type_error("packed: expected None or a CpuPackedQNets from cpu_pack_qnets, got " +
                         std::string(py::str(py::type::of(packed))));
  return packed.cast<const PackedQNets*>();
}

// Within the call (q-net widened, ISA held): the packing to use, or null to pack in the
// call. One packed from a q-net of other shapes, dtype or flags is refused; one packed for
// another ISA (the ISA changed since) is left unused.
const PackedQNets* packed_for_call(const PackedQNets* p, const QNetArgs& a) {
  if (!p) return nullptr;
  if (!p->matches(a.view))
    throw std::invalid_argument("packed: packed from a q-net of other shapes, dtype or flags; pack these weights again");
  return p->for_active_isa() ? p : nullptr;
}

int64_t block_arg(int64_t block) {
  if (block < 0 || block > (1 << 16)) throw std::invalid_argument("block_size must be 0 (default) or in 1..65536");
  return block;
}


void py_score_dense(py::list weights, py::list biases, py::dict flags, py::array vectors, py::array out, int num_threads, int64_t block,
                    py::object packed, py::object scales) {
  QNetArgs a;
  parse_qnet(a, weights, biases, flags);
  const VectorsView v = parse_vectors(vectors, a.dims[0], scales);
  check_kind(out, "out", Kind::F32);
  check_shape(out, "out", {a.view.num_queries, v.n});
  check_writeable(out, "out");
  const int nt = threads_arg(num_threads);
  block = block_arg(block);
  const PackedQNets* pk = packed_arg(packed);
  float* o = static_cast<float*>(out.mutable_data());
  if (v.n == 0 || a.view.num_queries == 0) return;
  native_call([&] {
    a.widen();
    score_dense(a.view, v, o, nt, block, packed_for_call(pk, a));
  });
}

void py_score_gather(py::list weights, py::list biases, py::dict flags, py::array vectors, py::array ids, py::array out, int num_threads,
                     int64_t block, py::object packed, py::object scales) {
  QNetArgs a;
  parse_qnet(a, weights, biases, flags);
  const VectorsView v = parse_vectors(vectors, a.dims[0], scales);
  check_kind(ids, "ids", Kind::I64);
  check_shape(ids, "ids", {a.view.num_queries, -1});
  const int64_t m = ids.shape(1);
  check_kind(out, "out", Kind::F32);
  check_shape(out, "out", {a.view.num_queries, m});
  check_writeable(out, "out");
  const int nt = threads_arg(num_threads);
  block = block_arg(block);
  const int64_t* id = static_cast<const int64_t*>(ids.data());
  const int64_t total = a.view.num_queries * m;
  for (int64_t i = 0; i < total; ++i)
    if (id[i] < 0 || id[i] >= v.n)
      throw std::invalid_argument("ids out of range: found " + std::to_string(id[i]) + ", valid ids are 0.." +
                                  std::to_string(v.n - 1));
  const PackedQNets* pk = packed_arg(packed);
  float* o = static_cast<float*>(out.mutable_data());
  if (total == 0) return;
  native_call([&] {
    a.widen();
    score_gather(a.view, v, id, m, o, nt, block, packed_for_call(pk, a));
  });
}

py::tuple py_exact_topk(py::list weights, py::list biases, py::dict flags, py::array vectors, int64_t k, int num_threads, int64_t block,
                        py::object packed, py::object scales) {
  QNetArgs a;
  parse_qnet(a, weights, biases, flags);
  const VectorsView v = parse_vectors(vectors, a.dims[0], scales);
  k = k_arg(k);
  const int nt = threads_arg(num_threads);
  block = block_arg(block);
  const PackedQNets* pk = packed_arg(packed);
  const int64_t Q = a.view.num_queries;
  py::array_t<float> scores({Q, k});
  py::array_t<int64_t> ids({Q, k});
  float* s = scores.mutable_data();
  int64_t* i = ids.mutable_data();
  native_call([&] {
    a.widen();
    exact_topk(a.view, v, k, s, i, nt, block, packed_for_call(pk, a));
  });
  return py::make_tuple(scores, ids);
}

std::unique_ptr<PackedQNets> py_pack_qnets(py::list weights, py::list biases, py::dict flags, int num_threads) {
  QNetArgs a;
  parse_qnet(a, weights, biases, flags);
  const int nt = threads_arg(num_threads);
  return native_call([&] {
    a.widen();
    return std::unique_ptr<PackedQNets>(new PackedQNets(a.view, nt));
  });
}

double py_fma_peak(int num_threads, double seconds) {
  const int nt = threads_arg(num_threads);
  if (!(seconds > 0) || !(seconds <= 60)) throw std::invalid_argument("seconds must be in (0, 60]");
  return native_call([&] { return fma_peak_gflops(nt, seconds); });
}

// Single-query gather through the C++ contract (score_gather_query), for tests.
void py_score_gather_query(py::list weights, py::list biases, py::dict flags, int64_t q, py::array vectors, py::array ids, py::array out, py::object scales) {
  QNetArgs a;
  parse_qnet(a, weights, biases, flags);
  const VectorsView v = parse_vectors(vectors, a.dims[0], scales);
  if (q < 0 || q >= a.view.num_queries)
    throw std::invalid_argument("q out of range: " + std::to_string(q));
  check_kind(ids, "ids", Kind::I64);
  check_shape(ids, "ids", {-1});
  const int64_t m = ids.shape(0);
  check_kind(out, "out", Kind::F32);
  check_shape(out, "out", {m});
  check_writeable(out, "out");
  const int64_t* id = static_cast<const int64_t*>(ids.data());
  for (int64_t i = 0; i < m; ++i)
    if (id[i] < 0 || id[i] >= v.n)
      throw std::invalid_argument("ids out of range: found " + std::to_string(id[i]) + ", valid ids are 0.." +
                                  std::to_string(v.n - 1));
  float* o = static_cast<float*>(out.mutable_data());
  native_call([&] {
    a.widen();
    score_gather_query(a.view, q, v, id, m, o);
  });
}

}  // namespace

void register_cpu_kernels(py::module_& m) {
  m.def("cpu_isa", [] { return std::string(isa_name(active_isa())); },
        "The instruction set the CPU kernels use now.");
  m.def("cpu_supported_isas", &supported_isa_names, "Instruction sets this CPU can run, weakest first.");
  m.def("cpu_kernel_tables", [] {
    py::dict d;
    d["qnet"] = isa_name(cpu::kernel_ops(active_isa()).isa);
    d["scan"] = isa_name(cpu::scan_ops(active_isa()).isa);
    return d;
  }, "The instruction set of each per-ISA function table every native path calls through now: 'qnet' "
     "(the fused q-net kernels of scoring, exact and graph search) and 'scan' (dot products, code "
     "scans and linearisation of graph search).");
  m.def("cpu_set_isa", [](const std::string& name) {
          py::gil_scoped_release release;  // it may wait for calls in flight
          set_isa_between_calls(name);
        }, py::arg("name"),
        "Use ISA `name` (auto, portable, avx2, avx512, avx512_bf16, amx, amx_emulated) from the next call on, once the calls in "
        "flight have ended (calls that start meanwhile wait); ValueError if this CPU cannot.");
  m.def("cpu_isa_status", [](const std::string& name) {
    for (int i = 0; i <= static_cast<int>(Isa::AmxEmulated); ++i)
      if (name == isa_name(static_cast<Isa>(i))) return isa_status(static_cast<Isa>(i));
    throw std::invalid_argument("unknown CPU ISA '" + name + "'");
  }, py::arg("name"), "\"ok\", or why this process cannot run ISA `name` here.");
  m.def("cpu_has_bf16_kernel", &has_bf16_kernel,
        "Whether the active ISA computes q-nets flagged bf16 in bf16 (AMX, AVX512-BF16).");
  m.def("cpu_kernel_name", [](bool bf16) { return std::string(kernel_name(bf16)); }, py::arg("bf16"),
        "The kernel the active ISA runs for q-nets computed in bf16 (True) or fp32 (False).");
  m.def("cpu_score_dense", &py_score_dense, py::arg("weights"), py::arg("biases"), py::arg("flags"), py::arg("vectors"), py::arg("out"),
        py::arg("num_threads"), py::arg("block_size") = 0, py::arg("packed") = py::none(), py::arg("scales") = py::none(),
        "Fused q-net scores of every (query, document) pair into out (Q, n) float32.");
  m.def("cpu_score_gather", &py_score_gather, py::arg("weights"), py::arg("biases"), py::arg("flags"), py::arg("vectors"), py::arg("ids"),
        py::arg("out"), py::arg("num_threads"), py::arg("block_size") = 0, py::arg("packed") = py::none(), py::arg("scales") = py::none(),
        "Fused q-net scores of the documents ids (Q, m) int64 into out (Q, m) float32.");
  m.def("cpu_exact_topk", &py_exact_topk, py::arg("weights"), py::arg("biases"), py::arg("flags"), py::arg("vectors"), py::arg("k"),
        py::arg("num_threads"), py::arg("block_size") = 0, py::arg("packed") = py::none(), py::arg("scales") = py::none(),
        "Exact top-k over all documents: (scores (Q, k) float32, ids (Q, k) int64), best first.");
  py::class_<PackedQNets>(m, "CpuPackedQNets",
                          "Every query of a q-net batch packed for the active ISA's kernel (opaque).")
      .def_property_readonly("num_queries", &PackedQNets::num_queries)
      .def_property_readonly("nbytes", &PackedQNets::bytes);
  m.def("cpu_pack_qnets", &py_pack_qnets, py::arg("weights"), py::arg("biases"), py::arg("flags"), py::arg("num_threads"),
        "Packs the q-nets' weights once, for the packed= argument of cpu_score_* / cpu_exact_topk.");
  m.def("cpu_fma_peak_gflops", &py_fma_peak, py::arg("num_threads"), py::arg("seconds") = 1.0,
        "fp32 FMA peak of this machine in GFLOP/s: a register-only FMA loop on num_threads threads.");
  m.def("cpu_score_gather_query", &py_score_gather_query, py::arg("weights"), py::arg("biases"), py::arg("flags"), py::arg("q"), py::arg("vectors"),
        py::arg("ids"), py::arg("out"), py::arg("scales") = py::none(),
        "Single-threaded gather for query q through the C++ contract (ids (m,), out (m,)).");
}

}  // namespace hyp
