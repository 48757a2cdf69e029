#include "graph/linearize.h"

#include "cpu/half.h"
#include "cpu/isa.h"
#include "cpu/scan_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace hyp {
namespace graph {

namespace {

float to_float(DType t, const void* p, int64_t i) {
  if (t == DType::F32) return static_cast<const float*>(p)[i];
  const uint16_t h = static_cast<const uint16_t*>(p)[i];
  return t == DType::BF16 ? bfloat16_to_float(h) : half_to_float(h);
}

void load_row(DType t, const void* base, int64_t offset, int64_t n, float* out) {
  if (t == DType::F32) {
    std::memcpy(out, static_cast<const float*>(base) + offset, static_cast<size_t>(n) * sizeof(float));
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = to_float(t, base, offset + i);
  }
}

// y <- (y - mean) / sqrt(var + eps) in place (biased variance, as torch's layer_norm);
// returns the divisor.
float layer_norm(float* y, int64_t n, float eps) {
  double mu = 0.0;
  for (int64_t i = 0; i < n; ++i) mu += y[i];
  mu /= static_cast<double>(n);
  double var = 0.0;
  for (int64_t i = 0; i < n; ++i) var += (y[i] - mu) * (y[i] - mu);
  var /= static_cast<double>(n);
  const float sigma = static_cast<float>(std::sqrt(var + eps));
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<float>((y[i] - mu) / sigma);
  return sigma;
}

// g <- d layer_norm / d input^T g, with y the normalised output and sigma its divisor:
// (g - mean(g) - y mean(g y)) / sigma.
void layer_norm_back(float* g, const float* y, int64_t n, float sigma) {
  double mg = 0.0, mgy = 0.0;
  for (int64_t i = 0; i < n; ++i) mg += g[i], mgy += static_cast<double>(g[i]) * y[i];
  mg /= static_cast<double>(n), mgy /= static_cast<double>(n);
  for (int64_t i = 0; i < n; ++i) g[i] = static_cast<float>((g[i] - mg - y[i] * mgy) / sigma);
}

}  // namespace

bool linearize(const QNetView& qn, int64_t q, const float* at, bool relaxed, float* g, LinearizeScratch& s) {
  const int L = qn.num_layers;
  const int64_t* dims = qn.dims;
  const DType t = qn.wdtype;
  const cpu::ScanOps& ops = cpu::scan_ops(active_isa());
  int64_t width = 0, total = dims[0];
  for (int i = 0; i <= L + 1; ++i) width = std::max(width, dims[i]);
  for (int i = 1; i <= L; ++i) total += dims[i];
  s.row.assign(static_cast<size_t>(width), 0.f);
  s.acts.assign(static_cast<size_t>(total), 0.f);    // input of every hidden layer, then the last output
  s.masks.assign(static_cast<size_t>(total), 0.f);   // relu' per hidden unit
  s.normed.assign(static_cast<size_t>(2 * total), 0.f);  // normalised outputs (before / after residual)
  s.sigma.assign(static_cast<size_t>(2 * L + 2), 1.f);
  std::vector<int64_t> off(L + 2, 0);
  for (int i = 1; i <= L + 1; ++i) off[i] = off[i - 1] + dims[i - 1];
  std::memcpy(s.acts.data(), at, dims[0] * sizeof(float));
  // A weight row as floats: the row itself for float32 weights, else converted into s.row.
  auto row_of = [&](const void* base, int64_t offset, int64_t n) -> const float* {
    if (t == DType::F32) return static_cast<const float*>(base) + offset;
    load_row(t, base, offset, n, s.row.data());
    return s.row.data();
  };
  // Forward, keeping what the backward pass needs.
  for (int i = 0; i < L; ++i) {
    const int64_t in = dims[i], out = dims[i + 1];
    const float* x = s.acts.data() + off[i];
    float* y = s.acts.data() + off[i + 1];
    load_row(t, qn.biases[i], q * out, out, y);
    for (int64_t k = 0; k < in; ++k) {
      if (x[k] == 0.f) continue;  // relu zeros: nothing to add
      ops.axpy(out, x[k], row_of(qn.weights[i], (q * in + k) * out, out), y);
    }
    float* mask = s.masks.data() + off[i + 1];
    for (int64_t o = 0; o < out; ++o) {
      mask[o] = (!qn.relu || relaxed || y[o] > 0.f) ? 1.f : 0.f;
      if (qn.relu) y[o] = std::max(y[o], 0.f);
    }
    const bool res = qn.residual && (qn.residual_on_last || i < L - 1);
    const bool ln_before = qn.layer_norm && (qn.layer_norm_before_residual || !res);
    const bool ln_after = qn.layer_norm && res && !qn.layer_norm_before_residual;
    if (ln_before) {
      s.sigma[2 * i] = layer_norm(y, out, qn.eps);
      std::memcpy(s.normed.data() + 2 * off[i + 1], y, out * sizeof(float));
    }
    if (res)
      for (int64_t o = 0; o < out; ++o) y[o] += x[o];
    if (ln_after) {
      s.sigma[2 * i + 1] = layer_norm(y, out, qn.eps);
      std::memcpy(s.normed.data() + 2 * off[i + 1] + out, y, out * sizeof(float));
    }
  }
  // Backward from the output weights.
  std::vector<float> gb(static_cast<size_t>(width)), gin(static_cast<size_t>(width));
  load_row(t, qn.weights[L], q * dims[L], dims[L], gb.data());
  for (int i = L - 1; i >= 0; --i) {
    const int64_t in = dims[i], out = dims[i + 1];
    const bool res = qn.residual && (qn.residual_on_last || i < L - 1);
    const bool ln_before = qn.layer_norm && (qn.layer_norm_before_residual || !res);
    const bool ln_after = qn.layer_norm && res && !qn.layer_norm_before_residual;
    if (ln_after) layer_norm_back(gb.data(), s.normed.data() + 2 * off[i + 1] + out, out, s.sigma[2 * i + 1]);
    // The residual's share passes straight to the layer input.
    for (int64_t k = 0; k < in; ++k) gin[k] = res ? gb[k] : 0.f;
    if (ln_before) layer_norm_back(gb.data(), s.normed.data() + 2 * off[i + 1], out, s.sigma[2 * i]);
    const float* mask = s.masks.data() + off[i + 1];
    for (int64_t o = 0; o < out; ++o) gb[o] *= mask[o];
    for (int64_t k = 0; k < in; ++k) gin[k] += ops.dot(out, row_of(qn.weights[i], (q * in + k) * out, out), gb.data());
    std::copy(gin.begin(), gin.begin() + in, gb.begin());
  }
  bool nonzero = false, finite = true;
  for (int64_t k = 0; k < dims[0]; ++k) {
    g[k] = gb[k];
    finite &= std::isfinite(gb[k]);
    nonzero |= gb[k] != 0.f;
  }
  return finite && nonzero;
}

}  // namespace graph
}  // namespace hyp
