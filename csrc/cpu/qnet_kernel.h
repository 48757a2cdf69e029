// Contract of the fused CPU q-net kernels (implemented in csrc/cpu/, used by the dense
// scan, the gather scorer, exact search and the graph search loop).
#pragma once

#include <cstdint>
#include <memory>

namespace hyp {

// I8 and F8E4M3 (float8 e4m3fn) are document storage only: such rows come with a float32
// scale per row (VectorsView::scales); q-net weights are F32, F16 or BF16.
enum class DType : int { F32 = 0, F16 = 1, BF16 = 2, I8 = 3, F8E4M3 = 4 };

// A batch of Q q-nets with vector_dimensions dims[0..L+1] (dims[L+1] == 1), already
// validated. weights[i] points at a (Q, dims[i], dims[i+1]) row-major array, biases[i] at
// (Q, dims[i+1]) for the hidden layers i < L; all in `wdtype`.
struct QNetView {
  int num_layers = 0;  // L, hidden layers
  int64_t num_queries = 0;
  const int64_t* dims = nullptr;  // L + 2 entries
  const void* const* weights = nullptr;
  const void* const* biases = nullptr;
  DType wdtype = DType::F32;
  bool relu = true;
  bool layer_norm = true;
  bool residual = true;
  bool residual_on_last = false;
  bool layer_norm_before_residual = true;
  float eps = 1e-5f;
  // Compute the hidden layers in bf16 where the active ISA has a bf16 kernel (AMX,
  // AVX512-BF16): weights rounded to bf16 once when packed, activations rounded to bf16
  // before each layer, fp32 accumulation; biases, layer norm, residuals and the output
  // layer stay fp32. Elsewhere, and when false, every dtype is computed in fp32 exactly.
  bool bf16 = false;
};

// Document vectors: (n, d) row-major in `dtype`. For I8 / F8E4M3, `scales` holds n
// floats and row i stands for float(data[i]) * scales[i] (cpu/vector_rows.h); null
// otherwise.
struct VectorsView {
  const void* data = nullptr;
  int64_t n = 0;
  int64_t d = 0;
  DType dtype = DType::F32;
  const float* scales = nullptr;
};

// Scores query q against the m documents ids[0..m) (each in [0, n), checked by the
// caller) into out[0..m). Single-threaded; safe to call concurrently from many threads.
// It packs query q's weights on every call (about 1 MB for d = 384, L = 2); a caller that
// scores the same query many times should hold a PackedQNet instead.
void score_gather_query(const QNetView& qn, int64_t q, const VectorsView& v, const int64_t* ids,
                        int64_t m, float* out);

// Query q of `qn` packed once for the kernel of the active ISA (weights converted and laid
// out in panels), for callers that score the same query many times, e.g. the graph search
// loop. Owns its copy: `qn` may go away after construction. Const methods are thread-safe.
class PackedQNet {
 public:
  // bf16: pack bfloat16 weights (rounded from float32 / float16 ones) for the bf16 dot
  // product kernel where the ISA has one (activations are then rounded to bf16 too): about
  // twice the throughput, scores within bf16 rounding of the exact ones.
  // threads: packing runs on up to this many threads where the weights are large enough
  // to pay for the hand-off (see parallel.h).
  PackedQNet(const QNetView& qn, int64_t q, bool bf16 = false, int threads = 1);
  // Packs another query (or the same one at another precision) into this object's
  // buffer: a loop over queries allocates and first-touches the buffer once.
  void repack(const QNetView& qn, int64_t q, bool bf16 = false, int threads = 1);
  // Whether the packing is bf16 (then the scores are not the exact float32 ones).
  bool bf16() const;
  ~PackedQNet();
  PackedQNet(const PackedQNet&) = delete;
  PackedQNet& operator=(const PackedQNet&) = delete;

  // As score_gather_query for the packed query: ids pre-validated by the caller (each in
  // [0, v.n)), v.d equal to the q-net's input width. Single-threaded.
  void score_gather(const VectorsView& v, const int64_t* ids, int64_t m, float* out) const;
  // Multiply-adds (x2) of one document through the q-net: what sizes parallel work.
  int64_t flops_per_row() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Every query of a QNetView packed once for the active ISA's kernel, for callers that score
// the same q-nets many times (the Python backend caches these per weight tensors). Owns its
// copy; const use is thread-safe.
class PackedQNets {
 public:
  // Packs on `num_threads` threads.
  PackedQNets(const QNetView& qn, int num_threads);
  ~PackedQNets();
  PackedQNets(const PackedQNets&) = delete;
  PackedQNets& operator=(const PackedQNets&) = delete;

  int64_t num_queries() const;
  size_t bytes() const;  // packed weights, all queries
  // Whether this was packed from a q-net of the same shapes, dtype and flags as `qn` (the
  // weight values themselves cannot be checked here).
  bool matches(const QNetView& qn) const;
  // Whether it was packed for the ISA active now (a packing for another one is not used).
  bool for_active_isa() const;

  struct Impl;
  const Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// Multi-threaded entry points behind the "cpu" backend (OpenMP, `num_threads` threads over
// (query, block) pairs; `block` document rows per kernel call, 0 for the tuned default).
// Inputs are validated by the caller. Scores are written row-major (Q, n) / (Q, m).
// `packed`, when given, must satisfy packed->matches(qn) and hold qn's weights: no packing
// then happens in the call.
void score_dense(const QNetView& qn, const VectorsView& v, float* out, int num_threads,
                 int64_t block, const PackedQNets* packed = nullptr);
void score_gather(const QNetView& qn, const VectorsView& v, const int64_t* ids, int64_t m,
                  float* out, int num_threads, int64_t block, const PackedQNets* packed = nullptr);
// Exact top-k over all n documents for every query: out_scores/out_ids (Q, k), best first,
// ties to the lower id, slots beyond n padded with -inf / -1. Streams blocks of v (which may
// be memory-mapped) through per-thread running top-k lists merged at the end.
void exact_topk(const QNetView& qn, const VectorsView& v, int64_t k, float* out_scores,
                int64_t* out_ids, int num_threads, int64_t block, const PackedQNets* packed = nullptr);

// The machine's fp32 FMA throughput in GFLOP/s: `num_threads` threads each run a
// register-only loop of independent FMAs (the widest vectors the CPU supports) for about
// `seconds`; the figure every kernel's efficiency is read against.
double fma_peak_gflops(int num_threads, double seconds);

// Name of the kernel the active ISA runs for q-nets with QNetView::bf16 == `bf16`
// ("avx2", "amx (tdpbf16ps)", ...).
const char* kernel_name(bool bf16);

// Whether the active ISA has a bf16 kernel, i.e. honours QNetView::bf16.
bool has_bf16_kernel();

}  // namespace hyp
