// Scoring driver: packs q-net weights for the active ISA's block kernel, owns per-thread
// buffers, and runs (query, block) pairs over the engine's threads (parallel.h) for the
// dense scan, the gather scorer and exact top-k search.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <vector>

#include "cpu/kernel_ops.h"
#include "cpu/qnet_kernel.h"
#include "cpu/vector_rows.h"
#include "parallel.h"
#include "topk.h"

namespace hyp {
namespace cpu {

const KernelOps& kernel_ops(Isa isa) {
  switch (isa) {
    case Isa::AmxEmulated: return kernel_ops_amx_emulated();
    case Isa::Amx: return kernel_ops_amx();
    case Isa::Avx512Bf16: return kernel_ops_avx512_bf16();
    case Isa::Avx512: return kernel_ops_avx512();
    case Isa::Avx2: return kernel_ops_avx2();
    case Isa::Portable: break;
  }
  return kernel_ops_portable();
}

namespace {

// Rows per kernel call when the caller gives none, chosen by measurement (d = 768, L = 6,
// one thread, Zen 3: 48 rows 38, 96 rows 43, 192 rows 41 GFLOP/s). Why 96: per layer, the
// block's fp32 activations (96 x 768 x 4 = 288 KiB) are re-read once per 16-column weight
// panel, so the k-chunk of them in use (96 x 256 x 4 = 96 KiB) must stay in the 512 KiB
// L2 of a Zen 3 core, with the 16 KiB weight chunk in L1; longer blocks push the output
// buffer out of L2. Shorter blocks stream a query's weights (14 MB fp32 at d = 768, L = 6,
// from L3) more often per row and pay the cold first pass over each weight chunk more
// often: 96 rows give 48 FLOP per weight byte fetched.
constexpr int64_t kDefaultBlock = 96;
// Queries packed at once are bounded by this many bytes of packed weights.
constexpr size_t kPackBudget = size_t(64) << 20;

inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// 64-byte aligned, grow-only float buffer.
struct AlignedBuf {
  void* p = nullptr;
  size_t bytes = 0;
  AlignedBuf() = default;
  AlignedBuf(const AlignedBuf&) = delete;
  AlignedBuf& operator=(const AlignedBuf&) = delete;
  ~AlignedBuf() { std::free(p); }
  void* get(size_t need) {
    if (need > bytes) {
      std::free(p);
      p = nullptr;
      bytes = 0;
      void* q = std::aligned_alloc(64, round_up(static_cast<int64_t>(need), 64));
      if (!q) throw std::bad_alloc();
      p = q;
      bytes = need;
    }
    return p;
  }
  // Hands the memory over (this buffer is left empty) / takes memory over.
  void* release(size_t& n) {
    void* q = p;
    n = bytes;
    p = nullptr, bytes = 0;
    return q;
  }
  void adopt(void* q, size_t n) {
    std::free(p);
    p = q, bytes = n;
  }
};

// Buffers of destroyed PackedQNets, reused by the next ones: a batch-1 graph search packs
// a q-net per call, and a fresh buffer costs its page faults (about as much as the packing
// at 768 x 768 x 2). try_lock only: a busy pool (or one whose holder did not survive a
// fork) just means a fresh allocation. Never destroyed, so usable at any exit order.
class BufPool {
 public:
  static BufPool& get() {
    static BufPool* pool = new BufPool;
    return *pool;
  }
  void take(AlignedBuf& b, size_t need) {
    std::unique_lock<std::mutex> lk(m_, std::try_to_lock);
    if (!lk.owns_lock()) return;
    for (size_t i = 0; i < bufs_.size(); ++i)
      if (bufs_[i].second >= need) {
        b.adopt(bufs_[i].first, bufs_[i].second);
        bufs_.erase(bufs_.begin() + static_cast<std::ptrdiff_t>(i));
        return;
      }
  }
  void give(AlignedBuf& b) {
    if (b.bytes == 0 || b.bytes > kMaxBytes) return;
    std::unique_lock<std::mutex> lk(m_, std::try_to_lock);
    if (!lk.owns_lock() || bufs_.size() >= kMaxBufs) return;
    size_t n = 0;
    void* q = b.release(n);
    bufs_.emplace_back(q, n);
  }

 private:
  static constexpr size_t kMaxBufs = 4, kMaxBytes = size_t(64) << 20;
  std::mutex m_;
  std::vector<std::pair<void*, size_t>> bufs_;
};

size_t dtype_size(DType t) { return vector_dtype_size(t); }

// FLOPs of one document through the q-net (what sizes parallel work).
int64_t qnet_flops(const int64_t* dims, int num_layers) {
  int64_t f = 0;
  for (int i = 0; i <= num_layers; ++i) f += 2 * dims[i] * dims[i + 1];
  return f;
}

// fp32 -> bf16, round to nearest even (weights are finite: validated by the caller).
inline uint16_t bf16_round(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// Offsets (in 64-byte units... in bytes, 64-aligned) of each part of one packed query.
struct PackPlan {
  PackFormat format = PackFormat::F32;
  int nr = 16;
  std::vector<size_t> w_off, b_off;  // per hidden layer
  std::vector<int64_t> in_pad, out_pad;
  size_t last_off = 0;
  size_t bytes = 0;  // per query
  int64_t max_width = 0;  // padded: the workspace row length
};

// bf16 pairs (weights rounded to bf16) when the q-net is flagged bf16 or `bf16` asks for it,
// where the ISA has a bf16 dot product; fp32 panels otherwise.
PackPlan make_plan(const QNetView& qn, const KernelOps& ops, bool bf16 = false) {
  PackPlan pl;
  pl.nr = ops.nr;
  pl.format = ((qn.bf16 || bf16) && ops.forward_bf16) ? PackFormat::BF16_PAIRS : PackFormat::F32;
  const int L = qn.num_layers;
  size_t off = 0;
  auto take = [&](size_t b) {
    size_t o = off;
    off += static_cast<size_t>(round_up(static_cast<int64_t>(b), 64));
    return o;
  };
  pl.max_width = round_up(qn.dims[0], pl.nr);
  for (int i = 0; i < L; ++i) {
    const int64_t in = qn.dims[i], out = qn.dims[i + 1];
    const int64_t ip = pl.format == PackFormat::BF16_PAIRS ? round_up(in, ops.k_align) : in;
    const int64_t op = round_up(out, pl.nr);
    pl.in_pad.push_back(ip);
    pl.out_pad.push_back(op);
    const size_t es = pl.format == PackFormat::BF16_PAIRS ? 2 : 4;
    pl.w_off.push_back(take(static_cast<size_t>(ip * op) * es));
    pl.b_off.push_back(take(static_cast<size_t>(op) * 4));
    pl.max_width = std::max({pl.max_width, round_up(ip, pl.nr), op});
  }
  pl.last_off = take(static_cast<size_t>(qn.dims[L]) * 4);
  pl.bytes = off;
  return pl;
}

// Bytes one query's packing reads and writes: what its cost is estimated from.
double pack_bytes(const QNetView& qn, const PackPlan& pl) {
  double src = 0;
  for (int i = 0; i <= qn.num_layers; ++i) src += static_cast<double>(qn.dims[i] * qn.dims[i + 1]);
  return src * static_cast<double>(dtype_size(qn.wdtype)) + static_cast<double>(pl.bytes);
}

// Packing is split into tasks so that large q-nets pack on all threads: chunks of
// kPackRows (even) weight rows, each row read once, sequentially, converted and scattered
// into the panels, plus one task for the biases and output weights.
constexpr int64_t kPackRows = 64;

struct PackTasks {
  std::vector<int> layer;      // -1: biases + output weights
  std::vector<int64_t> index;  // row chunk
};

PackTasks make_tasks(const QNetView& qn, const PackPlan& pl) {
  PackTasks t;
  for (int i = 0; i < qn.num_layers; ++i) {
    const int64_t rows = pl.format == PackFormat::F32 ? qn.dims[i] : pl.in_pad[i];
    const int64_t n = (rows + kPackRows - 1) / kPackRows;
    for (int64_t j = 0; j < n; ++j) {
      t.layer.push_back(i);
      t.index.push_back(j);
    }
  }
  t.layer.push_back(-1);
  t.index.push_back(-1);
  return t;
}

void pack_task(const QNetView& qn, int64_t q, const PackPlan& pl, const KernelOps& ops, int layer,
               int64_t p, char* base) {
  const int L = qn.num_layers;
  const size_t es = dtype_size(qn.wdtype);
  if (layer < 0) {
    for (int i = 0; i < L; ++i) {
      const int64_t out = qn.dims[i + 1];
      float* b = reinterpret_cast<float*>(base + pl.b_off[i]);
      ops.convert_row(qn.wdtype, static_cast<const char*>(qn.biases[i]) + q * out * es, b, out);
      std::fill(b + out, b + pl.out_pad[i], 0.0f);
    }
    const int64_t h = qn.dims[L];
    ops.convert_row(qn.wdtype, static_cast<const char*>(qn.weights[L]) + q * h * es,
                    reinterpret_cast<float*>(base + pl.last_off), h);
    return;
  }
  const int64_t in = qn.dims[layer], out = qn.dims[layer + 1], nr = pl.nr;
  const char* src = static_cast<const char*>(qn.weights[layer]) + q * in * out * es;
  const int64_t op = pl.out_pad[layer], k0 = p * kPackRows;
  thread_local std::vector<float> row, row2;
  row.assign(static_cast<size_t>(op), 0.0f);  // columns beyond `out` stay zero
  // Weight row k as op floats: float32 rows read in place, other dtypes converted into
  // `buf`; a row beyond `in` (bf16 pairs' padding) is zeros.
  auto weight_row = [&](int64_t k, std::vector<float>& buf) -> const float* {
    if (k >= in) {
      std::fill(buf.begin(), buf.end(), 0.0f);
      return buf.data();
    }
    if (qn.wdtype == DType::F32 && out == op) return reinterpret_cast<const float*>(src + k * out * es);
    ops.convert_row(qn.wdtype, src + k * out * es, buf.data(), out);
    return buf.data();
  };
  if (pl.format == PackFormat::F32) {
    const int64_t k1 = std::min(in, k0 + kPackRows);
    float* dst = reinterpret_cast<float*>(base + pl.w_off[layer]);
    for (int64_t k = k0; k < k1; ++k) {
      const float* r = weight_row(k, row);
      for (int64_t c = 0; c < op; c += nr)
        std::memcpy(dst + c * in + k * nr, r + c, static_cast<size_t>(nr) * sizeof(float));
    }
  } else {  // BF16_PAIRS: each weight rounded to bf16 (exact for bf16 weights), padding zero
    // Rows k and k + 1 (k0 and in_pad are even) are rounded together and written as one
    // 32-bit pair per column, straight into the panels: float32 rows are read in place,
    // other dtypes converted first; plain loops the compiler vectorises.
    const int64_t ip = pl.in_pad[layer], k1 = std::min(ip, k0 + kPackRows);
    uint32_t* dst = reinterpret_cast<uint32_t*>(base + pl.w_off[layer]);
    row2.assign(static_cast<size_t>(op), 0.0f);
    for (int64_t k = k0; k < k1; k += 2) {
      const float *a = weight_row(k, row), *b = weight_row(k + 1, row2);
      for (int64_t c = 0; c < op; c += nr) {
        uint32_t* d = dst + c * (ip / 2) + (k / 2) * nr;
        for (int64_t j = 0; j < nr; ++j)
          d[j] = static_cast<uint32_t>(bf16_round(a[c + j])) | static_cast<uint32_t>(bf16_round(b[c + j])) << 16;
      }
    }
  }
}

// The PackedQuery view of one packed query at `base` (layers written into `layers`).
PackedQuery make_view(const QNetView& qn, const PackPlan& pl, char* base, PackedLayer* layers) {
  const int L = qn.num_layers;
  for (int i = 0; i < L; ++i) {
    PackedLayer& ly = layers[i];
    const bool res = qn.residual && (qn.residual_on_last || i < L - 1);
    ly.w = base + pl.w_off[i];
    ly.bias = reinterpret_cast<const float*>(base + pl.b_off[i]);
    ly.in = qn.dims[i];
    ly.out = qn.dims[i + 1];
    ly.in_pad = pl.in_pad[i];
    ly.out_pad = pl.out_pad[i];
    ly.ln_before = qn.layer_norm && (qn.layer_norm_before_residual || !res);
    ly.residual = res;
    ly.ln_after = qn.layer_norm && res && !qn.layer_norm_before_residual;
  }
  PackedQuery pq;
  pq.num_layers = L;
  pq.layers = layers;
  pq.w_last = reinterpret_cast<const float*>(base + pl.last_off);
  pq.d = qn.dims[0];
  pq.relu = qn.relu;
  pq.eps = qn.eps;
  pq.format = pl.format;
  return pq;
}

// Per-thread kernel buffers, reused across calls so that a graph search's many small
// gathers neither allocate nor fault pages.
struct ThreadScratch {
  AlignedBuf x, y, xb, scores;
  Workspace ws(int64_t rows, int64_t ld, bool bf16) {
    Workspace w;
    w.ld = ld;
    const size_t n = static_cast<size_t>(rows * ld);
    w.x = static_cast<float*>(x.get(n * 4));
    w.y = static_cast<float*>(y.get(n * 4));
    w.xb = bf16 ? static_cast<uint16_t*>(xb.get(n * 2)) : nullptr;
    return w;
  }
  float* score_buf(int64_t rows) { return static_cast<float*>(scores.get(rows * 4)); }
};

ThreadScratch& scratch() {
  thread_local ThreadScratch s;
  return s;
}

using ForwardFn = void (*)(const PackedQuery&, const Workspace&, int64_t, float*);

ForwardFn forward_for(const KernelOps& ops, PackFormat f) {
  return f == PackFormat::BF16_PAIRS ? ops.forward_bf16 : ops.forward_f32;
}

// Loads rows of v into ws.x: ids[r] if ids, else first + r; zeroes the padding rows.
void load_rows(const KernelOps& ops, const VectorsView& v, const int64_t* ids, int64_t first,
               int64_t rows, int64_t rp, const Workspace& ws) {
  // Quantised rows take their scale here, as they enter the block, before layer 1.
  for (int64_t r = 0; r < rows; ++r) read_row(ops, v, ids ? ids[r] : first + r, ws.x + r * ws.ld);
  for (int64_t r = rows; r < rp; ++r) std::fill(ws.x + r * ws.ld, ws.x + r * ws.ld + v.d, 0.0f);
}

int64_t block_rows(int64_t block, const KernelOps& ops) {
  return round_up(block > 0 ? block : ops.block > 0 ? ops.block : kDefaultBlock, ops.mr);
}

// One thread's share of the rows of a query: (first row, rows).
struct Task {
  int64_t q, start, rows;
};

// The (query, block) pairs of a call, in query-major, increasing-row order (exact_topk's
// merge relies on each thread seeing a query's blocks in that order), handed out to the
// threads dynamically, first come first served. With many blocks per thread they are full
// blocks of B rows. With few (a gather of a few hundred rows), a late block would leave a
// thread idle for a large part of the call, so block sizes decrease (guided): each block
// takes about 1/(2 x threads) of the rows still unassigned, between a minimum and B rows. The
// last blocks are small, so threads finish together on a quiet machine, and a thread whose
// core is shared with another process simply takes fewer blocks (static equal shares were
// measured twice as slow as one thread when the other core was busy). Every block streams
// the query's packed weights through the core once, so for large q-nets (above kBigWeights
// bytes: beyond L2 and a good part of a shared L3) small blocks cost more than the idle
// time they save: their rows are instead cut into equal blocks, as many as the full-size
// blocks rounded up to a multiple of the thread count (d = 768, L = 6, 256 documents on 2
// threads under load: guided blocks 49-59 GFLOP/s, four equal 66-row blocks 60-80).
constexpr size_t kBigWeights = size_t(2) << 20;

struct Schedule {
  std::vector<Task> tasks;
  int64_t max_rows = 0;
};

Schedule make_schedule(int64_t Q, int64_t items, int num_threads, int64_t block, const KernelOps& ops,
                       size_t weight_bytes) {
  Schedule sc;
  const int64_t B = block_rows(block, ops);
  const bool big = weight_bytes > kBigWeights;
  const int64_t nb = (items + B - 1) / B;
  const bool guided = block <= 0 && num_threads > 1 && Q * nb < 8 * num_threads;
  int64_t left = Q * items;
  for (int64_t q = 0; q < Q; ++q)
    for (int64_t s0 = 0; s0 < items;) {
      int64_t bl = B;
      if (guided && big) {
        const int64_t nbq = round_up(nb, (num_threads + Q - 1) / Q);  // blocks of this query
        bl = std::min(B, round_up((items + nbq - 1) / nbq, ops.mr));
      } else if (guided) {
        bl = round_up((left + 2 * num_threads - 1) / (2 * num_threads), ops.mr);
        bl = std::min(B, std::max<int64_t>(2 * ops.mr, bl));
      }
      bl = std::min(bl, items - s0);
      sc.tasks.push_back({q, s0, bl});
      s0 += bl;
      left -= bl;
    }
  sc.max_rows = B;
  return sc;
}

}  // namespace
}  // namespace cpu

// Every query packed at once (see PackedQNets in qnet_kernel.h).
struct PackedQNets::Impl {
  const cpu::KernelOps* ops = nullptr;
  cpu::PackPlan plan;
  int64_t Q = 0;
  std::vector<int64_t> dims;
  DType wdtype = DType::F32;
  bool flags[6] = {};
  float eps = 0.0f;
  cpu::AlignedBuf buf;
  std::vector<cpu::PackedLayer> layers;
  std::vector<cpu::PackedQuery> views;
};

namespace cpu {
namespace {

void flags_of(const QNetView& qn, bool* f) {
  f[0] = qn.relu, f[1] = qn.layer_norm, f[2] = qn.residual, f[3] = qn.residual_on_last,
  f[4] = qn.layer_norm_before_residual, f[5] = qn.bf16;
}

// Packs queries [q0, q0 + gq) of qn at base (pl.bytes apart) on up to `threads` threads,
// one per min_part_micros() of packing work.
void pack_group(const QNetView& qn, const PackPlan& pl, const PackTasks& tasks, const KernelOps& ops,
                int64_t q0, int64_t gq, char* base, PackedLayer* layers, PackedQuery* views, int threads) {
  const int64_t ntasks = static_cast<int64_t>(tasks.layer.size());
  const int64_t nl = std::max(1, qn.num_layers);
  const int nt = threads_worth(threads, static_cast<double>(gq) * pack_bytes(qn, pl) * kMicrosPerPackByte);
  parallel_tasks(nt, gq * ntasks, [&](int, int64_t t) {
    const int64_t qi = t / ntasks, ti = t % ntasks;
    char* b = base + qi * pl.bytes;
    pack_task(qn, q0 + qi, pl, ops, tasks.layer[ti], tasks.index[ti], b);
    if (tasks.layer[ti] < 0) views[qi] = make_view(qn, pl, b, layers + qi * nl);
  });
}

// Runs every (query, block) pair: `load(ws, q, start, rows, rp)` fills a block of `items`
// rows of query q, `emit(participant, q, start, rows, scores)` consumes its scores.
// Without `packed`, queries are packed in groups bounded by kPackBudget, each group on
// the threads before its blocks run. Threads: at most num_threads, one per
// min_part_micros() of the call's q-net work (parallel.h).
template <class Load, class Emit>
void run_pairs(const QNetView& qn, int64_t items, int num_threads, int64_t block,
               const PackedQNets* packed, Load load, Emit emit) {
  const KernelOps& ops = packed ? *packed->impl().ops : kernel_ops(active_isa());
  const PackPlan pl = packed ? packed->impl().plan : make_plan(qn, ops);
  const ForwardFn fwd = forward_for(ops, pl.format);
  const int64_t Q = qn.num_queries;
  const double micros = static_cast<double>(Q * items) *
                        static_cast<double>(qnet_flops(qn.dims, qn.num_layers)) * kMicrosPerFlop;
  const int nt = threads_worth(num_threads, micros);
  const Schedule sc = make_schedule(Q, items, nt, block, ops, pl.bytes);

  PackTasks ptasks;
  AlignedBuf pbuf;
  std::vector<PackedLayer> layers;
  std::vector<PackedQuery> own_views;
  int64_t G = Q;
  char* pbase = nullptr;
  const PackedQuery* views = nullptr;
  if (packed) {
    views = packed->impl().views.data();
  } else {
    ptasks = make_tasks(qn, pl);
    G = std::max<int64_t>(1, std::min<int64_t>(Q, kPackBudget / pl.bytes));
    pbase = static_cast<char*>(pbuf.get(G * pl.bytes));
    layers.resize(static_cast<size_t>(G * std::max(1, qn.num_layers)));
    own_views.resize(static_cast<size_t>(G));
    views = own_views.data();
  }
  // Queries [g0, g0 + G) are packed (or were, by the caller) before their blocks run.
  for (int64_t g0 = 0; g0 < Q; g0 += G) {
    const int64_t g1 = std::min(Q, g0 + G);
    if (!packed) pack_group(qn, pl, ptasks, ops, g0, g1 - g0, pbase, layers.data(), own_views.data(), num_threads);
    // Tasks are query-major: this group's are a contiguous range.
    const int64_t t0 = std::lower_bound(sc.tasks.begin(), sc.tasks.end(), g0,
                                        [](const Task& t, int64_t q) { return t.q < q; }) - sc.tasks.begin();
    const int64_t t1 = std::lower_bound(sc.tasks.begin(), sc.tasks.end(), g1,
                                        [](const Task& t, int64_t q) { return t.q < q; }) - sc.tasks.begin();
    parallel_tasks(nt, t1 - t0, [&](int tid, int64_t i) {
      ThreadScratch& ts = scratch();
      const Workspace ws = ts.ws(sc.max_rows, pl.max_width, pl.format == PackFormat::BF16_PAIRS);
      float* scores = ts.score_buf(sc.max_rows);
      const Task& t = sc.tasks[t0 + i];
      const int64_t rp = round_up(t.rows, ops.mr);
      load(ws, t.q, t.start, t.rows, rp);
      fwd(views[packed ? t.q : t.q - g0], ws, t.rows, scores);
      emit(tid, t.q, t.start, t.rows, scores);
    });
  }
}

}  // namespace
}  // namespace cpu

using namespace cpu;

void score_dense(const QNetView& qn, const VectorsView& v, float* out, int num_threads,
                 int64_t block, const PackedQNets* packed) {
  const KernelOps& ops = kernel_ops(active_isa());
  run_pairs(
      qn, v.n, num_threads, block, packed,
      [&](const Workspace& ws, int64_t, int64_t start, int64_t rows, int64_t rp) {
        load_rows(ops, v, nullptr, start, rows, rp, ws);
      },
      [&](int, int64_t q, int64_t start, int64_t rows, const float* s) {
        std::memcpy(out + q * v.n + start, s, rows * sizeof(float));
      });
}

void score_gather(const QNetView& qn, const VectorsView& v, const int64_t* ids, int64_t m,
                  float* out, int num_threads, int64_t block, const PackedQNets* packed) {
  const KernelOps& ops = kernel_ops(active_isa());
  run_pairs(
      qn, m, num_threads, block, packed,
      [&](const Workspace& ws, int64_t q, int64_t start, int64_t rows, int64_t rp) {
        load_rows(ops, v, ids + q * m + start, 0, rows, rp, ws);
      },
      [&](int, int64_t q, int64_t start, int64_t rows, const float* s) {
        std::memcpy(out + q * m + start, s, rows * sizeof(float));
      });
}

namespace {
struct Cand {
  float score;
  int64_t id;
};
// Best first, ties to the lower id; padding (id -1) after every real entry.
inline bool cand_better(const Cand& a, const Cand& b) {
  if ((a.id < 0) != (b.id < 0)) return b.id < 0;
  return a.score > b.score || (a.score == b.score && a.id < b.id);
}
}  // namespace

void exact_topk(const QNetView& qn, const VectorsView& v, int64_t k, float* out_scores,
                int64_t* out_ids, int num_threads, int64_t block, const PackedQNets* packed) {
  const KernelOps& ops = kernel_ops(active_isa());
  const int64_t Q = qn.num_queries;
  const int64_t kk = std::min(k, std::max<int64_t>(v.n, 1));  // running list length
  const int T = std::max(1, num_threads);
  // Per-participant running lists for every query: each participant's blocks of a query
  // arrive in increasing id order (tasks are claimed in increasing order), which is what
  // topk_merge_row's tie rule relies on.
  std::vector<float> run_s(static_cast<size_t>(T * Q * kk), -std::numeric_limits<float>::infinity());
  std::vector<int64_t> run_i(static_cast<size_t>(T * Q * kk), -1);
  run_pairs(
      qn, v.n, num_threads, block, packed,
      [&](const Workspace& ws, int64_t, int64_t start, int64_t rows, int64_t rp) {
        load_rows(ops, v, nullptr, start, rows, rp, ws);
      },
      [&](int tid, int64_t q, int64_t start, int64_t rows, const float* s) {
        const size_t o = static_cast<size_t>((tid * Q + q) * kk);
        topk_merge_row(s, rows, start, run_s.data() + o, run_i.data() + o, kk);
      });
  std::vector<Cand> c;
  for (int64_t q = 0; q < Q; ++q) {
    c.clear();
    for (int t = 0; t < T; ++t) {
      const size_t o = static_cast<size_t>((t * Q + q) * kk);
      for (int64_t j = 0; j < kk; ++j)
        if (run_i[o + j] >= 0) c.push_back({run_s[o + j], run_i[o + j]});
    }
    const int64_t keep = std::min<int64_t>(k, static_cast<int64_t>(c.size()));
    std::partial_sort(c.begin(), c.begin() + keep, c.end(), cand_better);
    for (int64_t j = 0; j < k; ++j) {
      out_scores[q * k + j] = j < keep ? c[j].score : -std::numeric_limits<float>::infinity();
      out_ids[q * k + j] = j < keep ? c[j].id : -1;
    }
  }
}

// ----------------------------------------------------------------- single-query gathers

struct PackedQNet::Impl {
  const KernelOps* ops = nullptr;
  PackPlan plan;
  AlignedBuf buf;
  std::vector<PackedLayer> layers;
  PackedQuery view;
  ForwardFn fwd = nullptr;
  int64_t flops = 0;

  void pack(const QNetView& qn, int64_t q, bool bf16 = false, int threads = 1) {
    ops = &kernel_ops(active_isa());
    flops = qnet_flops(qn.dims, qn.num_layers);
    plan = make_plan(qn, *ops, bf16);
    char* base = static_cast<char*>(buf.get(plan.bytes));
    const PackTasks t = make_tasks(qn, plan);
    const int nt = threads_worth(threads, pack_bytes(qn, plan) * kMicrosPerPackByte);
    parallel_tasks(nt, static_cast<int64_t>(t.layer.size()),
                   [&](int, int64_t i) { pack_task(qn, q, plan, *ops, t.layer[i], t.index[i], base); });
    layers.resize(static_cast<size_t>(std::max(1, qn.num_layers)));
    view = make_view(qn, plan, base, layers.data());
    fwd = forward_for(*ops, plan.format);
  }

  void gather(const VectorsView& v, const int64_t* ids, int64_t m, float* out) const {
    ThreadScratch& ts = scratch();
    // Equal blocks of at most the default size (not full blocks and a short last one),
    // so that no block is mostly padding.
    const int64_t per = std::max<int64_t>(1, (m + block_rows(0, *ops) - 1) / block_rows(0, *ops));
    const int64_t B = round_up(std::max<int64_t>(1, (m + per - 1) / per), ops->mr);
    const Workspace ws = ts.ws(B, plan.max_width, plan.format == PackFormat::BF16_PAIRS);
    for (int64_t start = 0; start < m; start += B) {
      const int64_t rows = std::min(B, m - start), rp = round_up(rows, ops->mr);
      load_rows(*ops, v, ids + start, 0, rows, rp, ws);
      fwd(view, ws, rows, out + start);
    }
  }
};

PackedQNet::PackedQNet(const QNetView& qn, int64_t q, bool bf16, int threads) : impl_(new Impl) {
  BufPool::get().take(impl_->buf, make_plan(qn, kernel_ops(active_isa()), bf16).bytes);
  impl_->pack(qn, q, bf16, threads);
}

void PackedQNet::repack(const QNetView& qn, int64_t q, bool bf16, int threads) { impl_->pack(qn, q, bf16, threads); }
bool PackedQNet::bf16() const { return impl_->plan.format == PackFormat::BF16_PAIRS; }
PackedQNet::~PackedQNet() { BufPool::get().give(impl_->buf); }

void PackedQNet::score_gather(const VectorsView& v, const int64_t* ids, int64_t m, float* out) const {
  impl_->gather(v, ids, m, out);
}

int64_t PackedQNet::flops_per_row() const { return impl_->flops; }

void score_gather_query(const QNetView& qn, int64_t q, const VectorsView& v, const int64_t* ids,
                        int64_t m, float* out) {
  thread_local PackedQNet::Impl impl;  // reuses its packing buffer across calls
  impl.pack(qn, q);
  impl.gather(v, ids, m, out);
}

PackedQNets::PackedQNets(const QNetView& qn, int num_threads) : impl_(new Impl) {
  Impl& im = *impl_;
  im.ops = &kernel_ops(active_isa());
  im.plan = make_plan(qn, *im.ops);
  im.Q = qn.num_queries;
  im.dims.assign(qn.dims, qn.dims + qn.num_layers + 2);
  im.wdtype = qn.wdtype;
  flags_of(qn, im.flags);
  im.eps = qn.eps;
  const int64_t nl = std::max(1, qn.num_layers);
  im.layers.resize(static_cast<size_t>(im.Q * nl));
  im.views.resize(static_cast<size_t>(im.Q));
  char* base = static_cast<char*>(im.buf.get(std::max<size_t>(1, im.Q * im.plan.bytes)));
  const PackTasks tasks = make_tasks(qn, im.plan);
  // Packing 1 MB takes a fraction of a millisecond on one thread: only large batches
  // of q-nets are packed on several (pack_group's threshold).
  pack_group(qn, im.plan, tasks, *im.ops, 0, im.Q, base, im.layers.data(), im.views.data(), num_threads);
}
PackedQNets::~PackedQNets() = default;
int64_t PackedQNets::num_queries() const { return impl_->Q; }
size_t PackedQNets::bytes() const { return static_cast<size_t>(impl_->Q) * impl_->plan.bytes; }

bool PackedQNets::matches(const QNetView& qn) const {
  const Impl& im = *impl_;
  bool f[6];
  flags_of(qn, f);
  return qn.num_queries == im.Q && qn.wdtype == im.wdtype &&
         qn.eps == im.eps && std::equal(f, f + 6, im.flags) &&
         static_cast<size_t>(qn.num_layers + 2) == im.dims.size() &&
         std::equal(im.dims.begin(), im.dims.end(), qn.dims);
}

bool PackedQNets::for_active_isa() const { return impl_->ops == &kernel_ops(active_isa()); }

double fma_peak_gflops(int num_threads, double seconds) {
  const KernelOps* ops = &kernel_ops(active_isa());
  if (!ops->fma_loop) ops = &kernel_ops_portable();
  const int nt = std::max(1, num_threads);
  using Clock = std::chrono::steady_clock;
  auto since = [](Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); };
  // Calibrate the iteration count on one thread, then time all threads together; the
  // best of five rounds, so that a moment of load from other processes does not count.
  float sink = 0.0f;
  int64_t iters = 1 << 16;
  for (;;) {
    const Clock::time_point t0 = Clock::now();
    ops->fma_loop(iters, &sink);
    const double dt = since(t0);
    if (dt > 0.01 || iters > (int64_t(1) << 40)) {
      iters = std::max<int64_t>(1, static_cast<int64_t>(iters * (seconds / 5) / std::max(dt, 1e-9)));
      break;
    }
    iters *= 4;
  }
  double best = 0.0;
  for (int round = 0; round < 5; ++round) {
    std::vector<int64_t> flops(static_cast<size_t>(nt), 0);
    std::vector<float> sinks(static_cast<size_t>(nt));
    // One loop per participant: a helper wakes within microseconds of a loop that
    // lasts a tenth of a second or more, so the loops overlap as with a barrier.
    const Clock::time_point t0 = Clock::now();
    parallel_tasks(nt, nt, [&](int, int64_t t) { flops[t] = ops->fma_loop(iters, &sinks[t]); });
    const double dt = since(t0);
    int64_t total = 0;
    for (int t = 0; t < nt; ++t) total += flops[t], sink += sinks[t];
    best = std::max(best, static_cast<double>(total) / dt / 1e9);
  }
  return sink == sink ? best : best;  // sink read: the loops' results are used
}

bool has_bf16_kernel() { return kernel_ops(active_isa()).forward_bf16 != nullptr; }

const char* kernel_name(bool bf16) {
  const KernelOps& ops = kernel_ops(active_isa());
  if (bf16 && ops.forward_bf16) {
    switch (ops.isa) {
      case Isa::Amx: return "amx (tdpbf16ps)";
      case Isa::AmxEmulated: return "amx_emulated (tdpbf16ps in C++)";
      default: return "avx512_bf16 (vdpbf16ps)";
    }
  }
  return ops.isa == Isa::Avx512Bf16 || ops.isa == Isa::Amx || ops.isa == Isa::AmxEmulated ? "avx512" : isa_name(ops.isa);
}

}  // namespace hyp
