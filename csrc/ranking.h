// The engine's one ranking order: best score first, and on equal scores the lower id
// (padding, id -1 with score -inf, never ties a real finite score). Every top-k in csrc/
// (exact-search merge, graph search, linear scan) ranks with it, so all agree on ties.
#pragma once

#include <cstdint>

namespace hyp {

struct Scored {
  float s;
  int64_t id;
};

// Works for any type with `s` and `id` members (e.g. a Scored with extra state). A NaN
// score (only from input no check refused: the Python API refuses non-finite values)
// ranks below every number, so that the order stays a strict weak order: sorting with an
// order that is not one is undefined behaviour (libstdc++'s sorts may then read past the
// end of the range).
template <class T>
inline bool better(const T& a, const T& b) {
  const bool an = a.s != a.s, bn = b.s != b.s;  // false at compile time for integer scores
  if (an | bn) return an != bn ? bn : a.id < b.id;
  return a.s > b.s || (a.s == b.s && a.id < b.id);
}

}  // namespace hyp
