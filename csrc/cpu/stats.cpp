// CPU kernels of channel_stats and activation_stats.
//
// One read of the input: each task walks its share of a channel (runs layout) or of the rows (rows layout) in
// chunks that fit in L1, reduces a chunk in fp32 lanes the compiler vectorises (a second pass for M2 hits L1, not
// memory), and folds chunks into fp64 totals with Chan's merge. Tasks write partials that pybench.h merges exactly.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <cstring>
#include <type_traits>
#include <vector>

#include "../pybench.h"

// Clone the hot loops for AVX2+FMA machines and keep a baseline copy; the loader picks one at start-up.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define PYBENCH_SIMD __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define PYBENCH_SIMD
#endif

namespace pybench {
namespace {

constexpr int64_t kChunk = 4096;       // elements per fp32 partial (16 KiB of fp32: stays in L1)
constexpr int64_t kRowBlock = 16384;   // elements per block of rows in the rows layout
constexpr int kLanes = 16;             // independent accumulators: lets the compiler vectorise the reductions

// Below this many elements a call runs on the calling thread: entering a parallel region costs more than the
// work, and on an oversubscribed machine a waiting OpenMP team can cost a whole scheduler time slice.
constexpr int64_t kParallelMin = int64_t(1) << 18;

template <typename F>
void parallel_tasks(int64_t tasks, int64_t elements, const F& body) {
  if (elements < kParallelMin) {
    body(int64_t(0), tasks);
  } else {
    at::parallel_for(0, tasks, 1, body);
  }
}

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// ---- reductions over contiguous memory (fp32 or fp64) --------------------------------------------------------
// out = {sum |x|, sum x^2, sum x}
template <typename A>
inline __attribute__((always_inline)) void moments_impl(const A* __restrict__ p, int64_t n, A* out) {
  A a[kLanes] = {}, q[kLanes] = {}, s[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const A v = p[i + j];
      a[j] += std::fabs(v);
      q[j] += v * v;
      s[j] += v;
    }
  }
  A sa = 0, sq = 0, ss = 0;
  for (int j = 0; j < kLanes; ++j) {
    sa += a[j];
    sq += q[j];
    ss += s[j];
  }
  for (; i < n; ++i) {
    sa += std::fabs(p[i]);
    sq += p[i] * p[i];
    ss += p[i];
  }
  out[0] = sa;
  out[1] = sq;
  out[2] = ss;
}

// out = {sum x, zero count, M2 about the chunk's own mean}: two passes, the second over L1-resident data
template <typename A>
inline __attribute__((always_inline)) void welford_impl(const A* __restrict__ p, int64_t n, A* out) {
  A s[kLanes] = {}, z[kLanes] = {}, m[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      s[j] += p[i + j];
      z[j] += p[i + j] == A(0) ? A(1) : A(0);
    }
  }
  A sum = 0, zeros = 0;
  for (int j = 0; j < kLanes; ++j) {
    sum += s[j];
    zeros += z[j];
  }
  for (; i < n; ++i) {
    sum += p[i];
    zeros += p[i] == A(0) ? A(1) : A(0);
  }
  const A mean = sum / A(n);
  for (i = 0; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const A d = p[i + j] - mean;
      m[j] += d * d;
    }
  }
  A m2 = 0;
  for (int j = 0; j < kLanes; ++j) m2 += m[j];
  for (; i < n; ++i) m2 += (p[i] - mean) * (p[i] - mean);
  out[0] = sum;
  out[1] = zeros;
  out[2] = m2;
}

// column-wise over a block of rows [rows, cols], row stride = cols: acc[c] += ...
template <typename A>
inline __attribute__((always_inline)) void rows_moments_impl(const A* __restrict__ p, int64_t rows, int64_t cols,
                                                              A* __restrict__ a, A* __restrict__ q,
                                                              A* __restrict__ s) {
  for (int64_t r = 0; r < rows; ++r) {
    const A* row = p + r * cols;
    for (int64_t c = 0; c < cols; ++c) {
      const A v = row[c];
      a[c] += std::fabs(v);
      q[c] += v * v;
      s[c] += v;
    }
  }
}

template <typename A>
inline __attribute__((always_inline)) void rows_welford_impl(const A* __restrict__ p, int64_t rows, int64_t cols,
                                                              A* __restrict__ sum, A* __restrict__ zeros,
                                                              A* __restrict__ m2) {
  for (int64_t r = 0; r < rows; ++r) {
    const A* row = p + r * cols;
    for (int64_t c = 0; c < cols; ++c) {
      sum[c] += row[c];
      zeros[c] += row[c] == A(0) ? A(1) : A(0);
    }
  }
  const A inv = A(1) / A(rows);
  for (int64_t c = 0; c < cols; ++c) sum[c] *= inv;  // sum becomes the block mean
  for (int64_t r = 0; r < rows; ++r) {
    const A* row = p + r * cols;
    for (int64_t c = 0; c < cols; ++c) {
      const A d = row[c] - sum[c];
      m2[c] += d * d;
    }
  }
}

// fp32 runs: explicit 8-wide vectors (GCC/Clang vector extensions) with two accumulators each, so the code is
// the same whatever the auto-vectoriser decides: one AVX register in the x86-64-v3 clone, two SSE halves otherwise.
typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));

#pragma GCC diagnostic ignored "-Wpsabi"  // the helpers below are always inlined: no vector crosses a call

#define PYBENCH_INLINE inline __attribute__((always_inline))
PYBENCH_INLINE f32x8 load8(const float* p) {
  f32x8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
PYBENCH_INLINE float hsum(f32x8 v) {
  float s = 0;
  for (int j = 0; j < 8; ++j) s += v[j];
  return s;
}
PYBENCH_INLINE f32x8 vabs(f32x8 v) { return reinterpret_cast<f32x8>(reinterpret_cast<i32x8>(v) & 0x7fffffff); }

PYBENCH_SIMD void moments_f32(const float* p, int64_t n, float* out) {
  f32x8 a0 = {}, a1 = {}, q0 = {}, q1 = {}, s0 = {}, s1 = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const f32x8 u = load8(p + i), v = load8(p + i + 8);
    a0 += vabs(u);
    a1 += vabs(v);
    q0 += u * u;
    q1 += v * v;
    s0 += u;
    s1 += v;
  }
  float sa = hsum(a0 + a1), sq = hsum(q0 + q1), ss = hsum(s0 + s1);
  for (; i < n; ++i) {
    sa += std::fabs(p[i]);
    sq += p[i] * p[i];
    ss += p[i];
  }
  out[0] = sa;
  out[1] = sq;
  out[2] = ss;
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define PYBENCH_BLOCK8 1
// moments_f32 of 8 runs of n elements, `stride` apart, giving each run the bits moments_f32's x86-64-v3 clone
// gives it: the same 16-wide blocks (fused squares), its horizontal sums in lane order done as 8 vertical adds of
// a transpose, and its tail as GCC compiled it (squares rounded before the add, but for the last n % 4 elements:
// fused). Filters of a few dozen elements (1x1 and depthwise convs) spend most of moments_f32 in those sums and
// that tail, one run at a time. Only the x86-64-v3 clone is matched: callers check `block8_ok()`.
__attribute__((target("arch=x86-64-v3"))) inline void transpose8(__m256* r) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// lane c: ((0 + v[c][0]) + v[c][1]) + ... + v[c][7], the order of hsum()
__attribute__((target("arch=x86-64-v3"))) inline __m256 hsums8(__m256* v) {
  transpose8(v);
  __m256 s = _mm256_setzero_ps();
  for (int j = 0; j < 8; ++j) s = _mm256_add_ps(s, v[j]);
  return s;
}

// Prefetch distance, in floats: the hardware prefetcher alone leaves a cold weight's stream latency-bound here
// (efficientnet_b0's convs, out of cache: 1.42 -> 1.04 ms).
constexpr int64_t kPrefetch = 1024;

// `last`: the tensor's last element (prefetches stay inside the tensor)
__attribute__((target("arch=x86-64-v3"))) void moments8_v3(const float* p, int64_t stride, int64_t n, float* out,
                                                            const float* last) {
  const __m256 mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const int64_t blocks = n & ~int64_t(15);
  const auto ahead = [last](const float* at) {
    _mm_prefetch(reinterpret_cast<const char*>(std::min(at + kPrefetch, last)), _MM_HINT_T0);
  };
  __m256 sa = _mm256_setzero_ps(), sq = _mm256_setzero_ps(), ss = _mm256_setzero_ps();
  if (blocks > 0) {
    __m256 a[8], q[8], s[8];
    for (int c = 0; c < 8; ++c) {
      const float* run = p + c * stride;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, q0 = a0, q1 = a0, s0 = a0, s1 = a0;
      for (int64_t i = 0; i < blocks; i += 16) {
        ahead(run + i);
        const __m256 u = _mm256_loadu_ps(run + i), v = _mm256_loadu_ps(run + i + 8);
        a0 = _mm256_add_ps(a0, _mm256_and_ps(u, mask));
        a1 = _mm256_add_ps(a1, _mm256_and_ps(v, mask));
        q0 = _mm256_fmadd_ps(u, u, q0);
        q1 = _mm256_fmadd_ps(v, v, q1);
        s0 = _mm256_add_ps(s0, u);
        s1 = _mm256_add_ps(s1, v);
      }
      a[c] = _mm256_add_ps(a0, a1);
      q[c] = _mm256_add_ps(q0, q1);
      s[c] = _mm256_add_ps(s0, s1);
    }
    sa = hsums8(a);
    sq = hsums8(q);
    ss = hsums8(s);
  } else {  // short filters (depthwise): the block's lines, ahead; moments_f32 adds up zero vectors, +0
    for (int64_t i = 0; i < 8 * stride; i += 16) ahead(p + i);
  }
  const int64_t tail = n - blocks, rounded = tail - (tail & 3);
  const __m256i at = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                        _mm256_set1_epi32(static_cast<int32_t>(stride)));
  for (int64_t t = 0; t < tail; ++t) {
    const __m256 x = _mm256_i32gather_ps(p + blocks + t, at, 4);
    sa = _mm256_add_ps(sa, _mm256_and_ps(x, mask));
    if (t < rounded) {
      __m256 sq_x = _mm256_mul_ps(x, x);
      asm("" : "+x"(sq_x));  // keep the product rounded: no contraction into an FMA here
      sq = _mm256_add_ps(sq, sq_x);
    } else {
      sq = _mm256_fmadd_ps(x, x, sq);
    }
    ss = _mm256_add_ps(ss, x);
  }
  alignas(32) float r[3][8];
  _mm256_store_ps(r[0], sa);
  _mm256_store_ps(r[1], sq);
  _mm256_store_ps(r[2], ss);
  for (int c = 0; c < 8; ++c) {
    out[3 * c] = r[0][c];
    out[3 * c + 1] = r[1][c];
    out[3 * c + 2] = r[2][c];
  }
}

// The resolver of PYBENCH_SIMD picks the x86-64-v3 clone on exactly these CPUs.
bool block8_ok() {
  static const bool ok = __builtin_cpu_supports("x86-64-v3");
  return ok;
}
#endif

PYBENCH_SIMD void welford_f32(const float* p, int64_t n, float* out) {
  f32x8 s0 = {}, s1 = {};
  i32x8 z0 = {}, z1 = {};  // comparisons give -1 per zero lane
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const f32x8 u = load8(p + i), v = load8(p + i + 8);
    s0 += u;
    s1 += v;
    z0 += u == 0.f;
    z1 += v == 0.f;
  }
  float sum = hsum(s0 + s1), zeros = 0;
  for (int j = 0; j < 8; ++j) zeros -= float(z0[j] + z1[j]);
  for (; i < n; ++i) {
    sum += p[i];
    zeros += p[i] == 0.f ? 1.f : 0.f;
  }
  const float mean = sum / float(n);
  f32x8 m0 = {}, m1 = {};
  for (i = 0; i + 16 <= n; i += 16) {
    const f32x8 u = load8(p + i) - mean, v = load8(p + i + 8) - mean;
    m0 += u * u;
    m1 += v * v;
  }
  float m2 = hsum(m0 + m1);
  for (; i < n; ++i) m2 += (p[i] - mean) * (p[i] - mean);
  out[0] = sum;
  out[1] = zeros;
  out[2] = m2;
}

PYBENCH_SIMD void rows_moments_f32(const float* p, int64_t rows, int64_t cols, float* a, float* q, float* s) {
  rows_moments_impl(p, rows, cols, a, q, s);
}
PYBENCH_SIMD void rows_welford_f32(const float* p, int64_t rows, int64_t cols, float* s, float* z, float* m) {
  rows_welford_impl(p, rows, cols, s, z, m);
}

inline void moments(const float* p, int64_t n, float* out) { moments_f32(p, n, out); }
inline void moments(const double* p, int64_t n, double* out) { moments_impl(p, n, out); }
inline void welford(const float* p, int64_t n, float* out) { welford_f32(p, n, out); }
inline void welford(const double* p, int64_t n, double* out) { welford_impl(p, n, out); }
inline void rows_moments(const float* p, int64_t r, int64_t c, float* a, float* q, float* s) {
  rows_moments_f32(p, r, c, a, q, s);
}
inline void rows_moments(const double* p, int64_t r, int64_t c, double* a, double* q, double* s) {
  rows_moments_impl(p, r, c, a, q, s);
}
inline void rows_welford(const float* p, int64_t r, int64_t c, float* s, float* z, float* m) {
  rows_welford_f32(p, r, c, s, z, m);
}
inline void rows_welford(const double* p, int64_t r, int64_t c, double* s, double* z, double* m) {
  rows_welford_impl(p, r, c, s, z, m);
}

// fp16 / bf16 are widened into `buf` chunk by chunk; fp32 / fp64 are read in place.
template <typename T>
const acc_t<T>* widen(const T* p, int64_t n, std::vector<acc_t<T>>& buf) {
  if constexpr (std::is_same_v<T, acc_t<T>>) {
    return p;
  } else {
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<float>(p[i]);
    return buf.data();
  }
}

// Chan et al.: fold (nb, mean_b, m2_b) into (n, mean, m2).
inline void chan_merge(double& n, double& mean, double& m2, double nb, double mean_b, double m2_b) {
  if (nb == 0) return;
  const double total = n + nb, delta = mean_b - mean;
  mean += delta * nb / total;
  m2 += m2_b + delta * delta * n * nb / total;
  n = total;
}

inline int64_t piece_begin(int64_t s, int64_t pieces, int64_t total) { return s * total / pieces; }

// The rows layout is split into pieces of rows, at least 64 rows each.
int64_t row_pieces(const ChannelView& v) { return std::clamp<int64_t>(v.outer / 64, 1, 4 * at::get_num_threads()); }

// ---- channel_stats ------------------------------------------------------------------------------------------
// The runs layout split into tasks = pieces of `outer` x blocks of channels; each task reads its runs in memory
// order (one sequential stream per task) and owns the partial slot [c, piece] of each of its channels.
struct RunTasks {
  int64_t pieces = 1, blocks = 1;
  int64_t count() const { return pieces * blocks; }
};

RunTasks run_tasks(const ChannelView& v) {
  const int64_t want = 4 * at::get_num_threads();
  RunTasks t;
  t.pieces = std::clamp<int64_t>(want, 1, std::max<int64_t>(v.outer, 1));
  t.blocks = std::clamp<int64_t>((want + t.pieces - 1) / t.pieces, 1, std::max<int64_t>(v.channels, 1));
  return t;
}

template <typename T>
void channel_stats_runs(const ChannelView& v, double* partial, RunTasks tasks) {
  const T* base = v.data.const_data_ptr<T>();
  parallel_tasks(tasks.count(), v.data.numel(), [&](int64_t begin, int64_t end) {
    std::vector<acc_t<T>> buf(kChunk);
    std::vector<double> tot;
    acc_t<T> r[3];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / tasks.blocks, b = task % tasks.blocks;
      const int64_t c0 = piece_begin(b, tasks.blocks, v.channels), c1 = piece_begin(b + 1, tasks.blocks, v.channels);
      tot.assign(3 * (c1 - c0), 0.0);
      for (int64_t o = piece_begin(s, tasks.pieces, v.outer); o < piece_begin(s + 1, tasks.pieces, v.outer); ++o) {
        int64_t c = c0;
#ifdef PYBENCH_BLOCK8
        if constexpr (std::is_same_v<T, float>) {
          if (v.inner > 0 && v.inner <= kChunk && block8_ok()) {  // one chunk a run: 8 runs at a time
            float r8[24];
            const float* last = base + v.data.numel() - 1;
            for (; c + 8 <= c1; c += 8) {
              moments8_v3(base + (o * v.channels + c) * v.inner, v.inner, v.inner, r8, last);
              for (int k = 0; k < 24; ++k) tot[3 * (c - c0) + k] += r8[k];
            }
          }
        }
#endif
        for (; c < c1; ++c) {
          const T* run = base + (o * v.channels + c) * v.inner;
          for (int64_t i = 0; i < v.inner; i += kChunk) {
            const int64_t n = std::min(kChunk, v.inner - i);
            moments(widen(run + i, n, buf), n, r);
            for (int k = 0; k < 3; ++k) tot[3 * (c - c0) + k] += r[k];
          }
        }
      }
      for (int64_t c = c0; c < c1; ++c) {
        std::copy_n(tot.data() + 3 * (c - c0), 3, partial + (c * tasks.pieces + s) * 3);
      }
    }
  });
}

template <typename T>
void channel_stats_rows(const ChannelView& v, double* partial, int64_t pieces) {
  const T* base = v.data.const_data_ptr<T>();
  const int64_t cols = v.channels, block = std::max<int64_t>(1, kRowBlock / cols);
  parallel_tasks(pieces, v.data.numel(), [&](int64_t begin, int64_t end) {
    std::vector<acc_t<T>> buf(block * cols), acc(3 * cols);
    for (int64_t s = begin; s < end; ++s) {
      double* tot = partial + s * 3 * cols;  // [3, cols] for this piece
      const int64_t row_end = piece_begin(s + 1, pieces, v.outer);
      for (int64_t r = piece_begin(s, pieces, v.outer); r < row_end; r += block) {
        const int64_t rows = std::min(block, row_end - r);
        std::fill(acc.begin(), acc.end(), acc_t<T>(0));
        rows_moments(widen(base + r * cols, rows * cols, buf), rows, cols, acc.data(), acc.data() + cols,
                     acc.data() + 2 * cols);
        for (int64_t k = 0; k < 3 * cols; ++k) tot[k] += acc[k];
      }
    }
  });
}

at::Tensor channel_stats_cpu(const at::Tensor& w, int64_t dim) {
  dim = check_channel_stats(w, dim);
  const ChannelView v = channel_view(w, dim);
  at::Tensor out = at::empty({v.channels, 3}, w.options().dtype(stats_dtype(w)));
  const RunTasks tasks = run_tasks(v);
  const int64_t pieces = v.rows ? row_pieces(v) : tasks.pieces;
  std::vector<double> partial(pieces * v.channels * 3, 0.0);
  if (w.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "channel_stats_cpu", [&] {
      if (v.rows) {
        channel_stats_rows<scalar_t>(v, partial.data(), pieces);
      } else {
        channel_stats_runs<scalar_t>(v, partial.data(), tasks);
      }
    });
  }
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "channel_stats_out", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int64_t c = 0; c < v.channels; ++c) {
      for (int k = 0; k < 3; ++k) {
        double t = 0;  // runs: partial[c, s, k]; rows: partial[s, k, c]
        for (int64_t s = 0; s < pieces; ++s) {
          t += v.rows ? partial[(s * 3 + k) * v.channels + c] : partial[(c * pieces + s) * 3 + k];
        }
        o[c * 3 + k] = static_cast<scalar_t>(t);
      }
    }
  });
  return out;
}

std::vector<at::Tensor> channel_stats_list_cpu(at::TensorList ws, int64_t dim) {
  check_same_device("channel_stats_list", ws);
  std::vector<at::Tensor> out;
  out.reserve(ws.size());
  for (const at::Tensor& w : ws) out.push_back(channel_stats_cpu(w, dim));
  return out;
}

// ---- activation_stats ---------------------------------------------------------------------------------------
// partial: [C, pieces, 4] = count, mean, M2, zeros of each piece
template <typename T>
void activation_stats_runs(const ChannelView& v, double* partial, RunTasks tasks) {
  const T* base = v.data.const_data_ptr<T>();
  parallel_tasks(tasks.count(), v.data.numel(), [&](int64_t begin, int64_t end) {
    std::vector<acc_t<T>> buf(kChunk);
    std::vector<double> n, mean, m2, zeros;
    acc_t<T> r[3];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / tasks.blocks, b = task % tasks.blocks;
      const int64_t c0 = piece_begin(b, tasks.blocks, v.channels), c1 = piece_begin(b + 1, tasks.blocks, v.channels);
      for (auto* acc : {&n, &mean, &m2, &zeros}) acc->assign(c1 - c0, 0.0);
      for (int64_t o = piece_begin(s, tasks.pieces, v.outer); o < piece_begin(s + 1, tasks.pieces, v.outer); ++o) {
        for (int64_t c = c0; c < c1; ++c) {
          const T* run = base + (o * v.channels + c) * v.inner;
          const int64_t k = c - c0;
          for (int64_t i = 0; i < v.inner; i += kChunk) {
            const int64_t len = std::min(kChunk, v.inner - i);
            welford(widen(run + i, len, buf), len, r);
            chan_merge(n[k], mean[k], m2[k], double(len), double(r[0]) / double(len), double(r[2]));
            zeros[k] += r[1];
          }
        }
      }
      for (int64_t c = c0; c < c1; ++c) {
        double* p = partial + (c * tasks.pieces + s) * 4;
        const int64_t k = c - c0;
        p[0] = n[k];
        p[1] = mean[k];
        p[2] = m2[k];
        p[3] = zeros[k];
      }
    }
  });
}

template <typename T>
void activation_stats_rows(const ChannelView& v, double* partial, int64_t pieces) {
  const T* base = v.data.const_data_ptr<T>();
  const int64_t cols = v.channels, block = std::max<int64_t>(1, kRowBlock / cols);
  parallel_tasks(pieces, v.data.numel(), [&](int64_t begin, int64_t end) {
    std::vector<acc_t<T>> buf(block * cols), acc(3 * cols);
    std::vector<double> mean(cols), m2(cols), zeros(cols);
    for (int64_t s = begin; s < end; ++s) {
      std::fill(mean.begin(), mean.end(), 0.0);
      std::fill(m2.begin(), m2.end(), 0.0);
      std::fill(zeros.begin(), zeros.end(), 0.0);
      double n = 0;
      const int64_t row_end = piece_begin(s + 1, pieces, v.outer);
      for (int64_t r = piece_begin(s, pieces, v.outer); r < row_end; r += block) {
        const int64_t rows = std::min(block, row_end - r);
        std::fill(acc.begin(), acc.end(), acc_t<T>(0));
        acc_t<T>*bmean = acc.data(), *bzeros = acc.data() + cols, *bm2 = acc.data() + 2 * cols;
        rows_welford(widen(base + r * cols, rows * cols, buf), rows, cols, bmean, bzeros, bm2);
        for (int64_t c = 0; c < cols; ++c) {
          double cn = n;  // every column has seen the same rows
          chan_merge(cn, mean[c], m2[c], double(rows), double(bmean[c]), double(bm2[c]));
          zeros[c] += bzeros[c];
        }
        n += rows;
      }
      for (int64_t c = 0; c < cols; ++c) {
        double* p = partial + (c * pieces + s) * 4;
        p[0] = n;
        p[1] = mean[c];
        p[2] = m2[c];
        p[3] = zeros[c];
      }
    }
  });
}

at::Tensor activation_stats_cpu(const at::Tensor& x, const std::optional<at::Tensor>& state) {
  check_activation_stats(x, state);
  const ChannelView v = channel_view(x, 1);
  const RunTasks tasks = run_tasks(v);
  const int64_t pieces = v.rows ? row_pieces(v) : tasks.pieces;
  at::Tensor partial = at::zeros({v.channels, pieces, 4}, x.options().dtype(at::kDouble));
  if (x.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "activation_stats_cpu", [&] {
      if (v.rows) {
        activation_stats_rows<scalar_t>(v, partial.data_ptr<double>(), pieces);
      } else {
        activation_stats_runs<scalar_t>(v, partial.data_ptr<double>(), tasks);
      }
    });
  }
  return finish_activation_stats(partial, state);
}

}  // namespace
}  // namespace pybench

TORCH_LIBRARY_IMPL(pybench, CPU, m) {
  m.impl("channel_stats", &pybench::channel_stats_cpu);
  m.impl("channel_stats_list", &pybench::channel_stats_list_cpu);
  m.impl("activation_stats", &pybench::activation_stats_cpu);
}
