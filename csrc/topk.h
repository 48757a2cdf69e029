// Running top-k for streaming exact search: best first, ties broken by lower id,
// unfilled slots hold score -inf and id -1.
#pragma once

#include <cstdint>

namespace hyp {

// Merges one block of scores (`b` documents with ids base..base+b-1, all larger than the
// ids already held) into the sorted running top-k of one query.
void topk_merge_row(const float* block, int64_t b, int64_t base, float* run_scores,
                    int64_t* run_ids, int64_t k);

}  // namespace hyp
