// The gradient of a q-net with respect to its input, in closed form: one forward pass at
// the point keeping the relu masks and layer-norm statistics, then the backward pass
// through the residuals, layer norms, relus and weights. No autograd; O(sum in*out) per
// query, the cost of scoring one document.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/qnet_kernel.h"

namespace hyp {
namespace graph {

// Reusable buffers of linearize (one per thread).
struct LinearizeScratch {
  std::vector<float> row, acts, masks, normed, sigma;
};

// Writes the gradient of query q's q-net at the point `at` (qn.dims[0] floats) into g.
// relaxed: every relu passes the gradient (slope 1 where it is inactive too), the
// fallback when the true gradient vanishes. Returns whether g is finite and not zero.
bool linearize(const QNetView& qn, int64_t q, const float* at, bool relaxed, float* g, LinearizeScratch& s);

}  // namespace graph
}  // namespace hyp
