// Contract of the fused CPU q-net kernels (implemented in csrc/cpu/, used by the dense
// scan, the gather scorer, exact search and the graph search loop).
#pragma once

#include <cstdint>

namespace hyp {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };

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
};

// Document vectors: (n, d) row-major in `dtype`.
struct VectorsView {
  const void* data = nullptr;
  int64_t n = 0;
  int64_t d = 0;
  DType dtype = DType::F32;
};

// Scores query q against the m documents ids[0..m) (each in [0, n), checked by the
// caller) into out[0..m). Single-threaded; safe to call concurrently from many threads.
void score_gather_query(const QNetView& qn, int64_t q, const VectorsView& v, const int64_t* ids,
                        int64_t m, float* out);

}  // namespace hyp
