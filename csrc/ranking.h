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

// Works for any type with `s` and `id` members (e.g. a Scored with extra state).
template <class T>
inline bool better(const T& a, const T& b) {
  return a.s > b.s || (a.s == b.s && a.id < b.id);
}

}  // namespace hyp
