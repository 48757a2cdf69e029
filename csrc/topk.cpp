#include "topk.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "array_check.h"
#include "native_call.h"
#include "ranking.h"

namespace hyp {

void topk_merge_row(const float* block, int64_t b, int64_t base, float* run_scores,
                    int64_t* run_ids, int64_t k) {
  // Block ids are all larger than running ids, so a block entry must beat the current
  // k-th score strictly to enter; most entries are rejected by this one comparison.
  float thresh = run_scores[k - 1];
  std::vector<Scored> cand;
  for (int64_t j = 0; j < b; ++j) {
    if (block[j] > thresh) {
      cand.push_back({block[j], base + j});
      if (static_cast<int64_t>(cand.size()) >= 4 * k + 64) {
        // Keep the candidate list bounded: cut it to its best k and raise the threshold.
        std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.end(), better<Scored>);
        cand.resize(k);
        float kth = cand[0].s;
        for (auto& e : cand) kth = std::min(kth, e.s);
        thresh = std::max(thresh, kth);
      }
    }
  }
  if (cand.empty()) return;
  for (int64_t i = 0; i < k; ++i) cand.push_back({run_scores[i], run_ids[i]});
  int64_t keep = std::min<int64_t>(k, cand.size());
  std::partial_sort(cand.begin(), cand.begin() + keep, cand.end(), better<Scored>);
  for (int64_t i = 0; i < keep; ++i) {
    run_scores[i] = cand[i].s;
    run_ids[i] = cand[i].id;
  }
}

namespace py = pybind11;

// Python entry point: block (Q, b) float32; run_scores (Q, k) float32 and run_ids (Q, k)
// int64, updated in place.
static void topk_merge(py::array block, int64_t base, py::array run_scores, py::array run_ids) {
  check_kind(block, "block", Kind::F32);
  check_kind(run_scores, "run_scores", Kind::F32);
  check_kind(run_ids, "run_ids", Kind::I64);
  check_shape(block, "block", {-1, -1});
  const int64_t Q = block.shape(0), b = block.shape(1);
  check_shape(run_scores, "run_scores", {Q, -1});
  const int64_t k = run_scores.shape(1);
  check_shape(run_ids, "run_ids", {Q, k});
  check_writeable(run_scores, "run_scores");
  check_writeable(run_ids, "run_ids");
  if (k <= 0) throw std::invalid_argument("k must be positive");
  if (base < 0) throw std::invalid_argument("base must be non-negative");
  const float* bp = static_cast<const float*>(block.data());
  float* rs = static_cast<float*>(run_scores.mutable_data());
  int64_t* ri = static_cast<int64_t*>(run_ids.mutable_data());
  native_call([&] {
    for (int64_t q = 0; q < Q; ++q) topk_merge_row(bp + q * b, b, base, rs + q * k, ri + q * k, k);
  });
}

void register_topk(py::module_& m) {
  m.def("topk_merge", &topk_merge, py::arg("block"), py::arg("base"), py::arg("run_scores"),
        py::arg("run_ids"),
        "Merge a (Q, b) float32 block of scores for ids base..base+b-1 into the running "
        "(Q, k) top-k (scores float32, ids int64), in place; best first, ties by lower id.");
}

}  // namespace hyp
