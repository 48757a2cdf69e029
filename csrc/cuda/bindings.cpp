// Python binding of the fused CUDA q-net kernels (pybind11 through torch's extension
// API): tensors in, checks, then the plain launch interface of qnet_fused.h. Built at
// first use by engine/backends/cuda.py; the kernels run on torch's current stream,
// whose handle the caller passes in.

#include <pybind11/stl.h>  // the meta table arrives as a list of lists
#include <torch/extension.h>

#include <string>
#include <vector>

#include "qnet_fused.h"

namespace {

using hyp_cuda::DocType;
using hyp_cuda::DType;
using hyp_cuda::Mode;

DType dtype_of(const torch::Tensor& t) {
  if (t.scalar_type() == torch::kHalf) return DType::kHalf;
  if (t.scalar_type() == torch::kBFloat16) return DType::kBFloat16;
  TORCH_CHECK(false, "the CUDA q-net kernels take float16 or bfloat16 tensors, got ", t.scalar_type());
  return DType::kHalf;
}

void check_cuda(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
}

// meta rows: din, dout, woff, boff, din_pad, dout_pad, residual, ln_before, ln_after
// (the columns of engine/backends/qnet_pack.py).
hyp_cuda::QNetGeom make_geom(const std::vector<std::vector<int64_t>>& meta, bool relu,
                             double eps, int max_width_pad) {
  TORCH_CHECK(!meta.empty() && static_cast<int>(meta.size()) <= hyp_cuda::kMaxLayers + 1,
              "q-net needs 0..", hyp_cuda::kMaxLayers, " hidden layers");
  hyp_cuda::QNetGeom g{};
  g.num_layers = static_cast<int>(meta.size()) - 1;
  g.act_relu = relu ? 1 : 0;
  g.eps = static_cast<float>(eps);
  g.max_width_pad = max_width_pad;
  for (size_t i = 0; i < meta.size(); ++i) {
    const auto& r = meta[i];
    TORCH_CHECK(r.size() == 9, "meta rows have 9 entries");
    TORCH_CHECK(r[4] % 16 == 0 && r[5] % 16 == 0, "layers must be padded to multiples of 16");
    TORCH_CHECK(!(r[7] && r[8]), "a layer normalises before or after its residual, not both");
    g.layer[i] = {static_cast<int>(r[0]), static_cast<int>(r[1]), static_cast<int>(r[4]),
                  static_cast<int>(r[5]), static_cast<int>(r[6]), static_cast<int>(r[7]),
                  static_cast<int>(r[8]), r[2], r[3]};
  }
  return g;
}

// Compressed rows: int8 or float8_e4m3fn vectors with float32 scales (n,) on the same
// device; other vectors share the weights' dtype and come with an empty `scales`.
DocType doc_type_of(const torch::Tensor& vectors, const torch::Tensor& w, const torch::Tensor& scales) {
  const auto st = vectors.scalar_type();
  if (st == torch::kChar || st == torch::kFloat8_e4m3fn) {
    TORCH_CHECK(scales.defined(), "int8 and float8_e4m3fn vectors need per-row scales");
    check_cuda(scales, "scales");
    TORCH_CHECK(scales.scalar_type() == torch::kFloat32, "scales must be float32, got ", scales.scalar_type());
    TORCH_CHECK(scales.dim() == 1 && scales.size(0) == vectors.size(0) && scales.stride(0) == 1,
                "scales must be (n,) with unit stride, one per vector");
    TORCH_CHECK(scales.device() == vectors.device(), "scales and vectors must be on one device");
    return st == torch::kChar ? DocType::kInt8 : DocType::kFp8E4M3;
  }
  TORCH_CHECK(st == w.scalar_type(), "vectors must share the weights' dtype, or be int8/float8_e4m3fn with scales");
  TORCH_CHECK(!scales.defined() || scales.numel() == 0, "scales are only for int8 or float8_e4m3fn vectors");
  return DocType::kCompute;
}

// mode: 0 dense (out = scores), 1 gather (ids, out = scores), 2 dense top-k (cand = keys).
void run(int mode, torch::Tensor vectors, torch::Tensor scales, torch::Tensor ids, torch::Tensor w,
         torch::Tensor b, std::vector<std::vector<int64_t>> meta, bool relu, double eps,
         int max_width_pad, torch::Tensor out, torch::Tensor cand, int kblk, int64_t base,
         int block_rows, int64_t stream) {
  check_cuda(vectors, "vectors");
  check_cuda(w, "weights");
  check_cuda(b, "biases");
  TORCH_CHECK(mode >= 0 && mode <= 2, "mode must be 0 (dense), 1 (gather) or 2 (dense top-k)");
  TORCH_CHECK(vectors.dim() == 2 && vectors.stride(1) == 1, "vectors must be (n, d) with unit column stride");
  TORCH_CHECK(w.is_contiguous() && b.is_contiguous(), "packed weights must be contiguous");
  TORCH_CHECK(b.scalar_type() == w.scalar_type(), "weights and biases must share a dtype");
  const DocType doc_type = doc_type_of(vectors, w, scales);
  hyp_cuda::FusedArgs a{};
  a.doc_type = doc_type;
  a.scales = doc_type == DocType::kCompute ? nullptr : scales.data_ptr<float>();
  a.dtype = dtype_of(w);
  a.mode = static_cast<Mode>(mode);
  a.num_queries = static_cast<int>(w.size(0));
  a.vectors = vectors.data_ptr();
  a.stride_v = vectors.stride(0);
  a.n = vectors.size(0);
  a.d = static_cast<int>(vectors.size(1));
  a.w = w.data_ptr();
  a.stride_wq = w.stride(0);
  a.b = b.data_ptr();
  a.stride_bq = b.stride(0);
  a.geom = make_geom(meta, relu, eps, max_width_pad);
  a.block_rows = block_rows;
  a.base = base;
  a.kblk = kblk;
  if (a.mode == Mode::kGather) {
    check_cuda(ids, "ids");
    TORCH_CHECK(ids.scalar_type() == torch::kInt64 && ids.dim() == 2 && ids.stride(1) == 1,
                "ids must be (Q, m) int64 with unit column stride");
    TORCH_CHECK(ids.size(0) == a.num_queries, "ids must have one row per query");
    a.ids = ids.data_ptr<int64_t>();
    a.stride_iq = ids.stride(0);
    a.m = ids.size(1);
  }
  if (a.mode == Mode::kDenseTopK) {
    check_cuda(cand, "cand");
    TORCH_CHECK(cand.scalar_type() == torch::kInt64 && cand.stride(1) == 1, "cand must be int64, unit column stride");
    a.cand = cand.data_ptr<int64_t>();
    a.stride_cq = cand.stride(0);
  } else {
    check_cuda(out, "out");
    TORCH_CHECK(out.scalar_type() == torch::kFloat32 && out.stride(1) == 1, "out must be float32, unit column stride");
    a.out = out.data_ptr<float>();
    a.stride_oq = out.stride(0);
  }
  const char* err = hyp_cuda::launch_fused(a, reinterpret_cast<void*>(stream));
  TORCH_CHECK(err == nullptr, "CUDA q-net kernel launch failed: ", err ? err : "");
}

int choose_block_rows(bool bf16, int max_width_pad, int device) {
  return hyp_cuda::choose_block_rows(bf16 ? DType::kBFloat16 : DType::kHalf, max_width_pad,
                                     hyp_cuda::device_smem_limit(device));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused q-net scoring on tensor cores (see csrc/cuda/qnet_fused.cu)";
  m.def("run", &run,
        "Launch a fused q-net kernel (mode 0 dense, 1 gather, 2 dense top-k); int8/float8_e4m3fn "
        "vectors with float32 per-row scales, else an empty scales tensor");
  m.def("choose_block_rows", &choose_block_rows,
        "Largest tile (64/32/16 rows) whose shared memory fits the device; 0 if none");
}
