// CUDA kernels of channel_stats and activation_stats.
//
// One read of the input, coalesced: in the runs layout ([outer, C, inner], NCHW) a block reduces one channel's
// share of runs with consecutive threads on consecutive elements; in the rows layout ([rows, C], channels_last) a
// warp reads 32 consecutive channels of a row. Threads accumulate in fp32 (fp64 for fp64 input): plain sums for
// channel_stats, Welford + zero count for activation_stats; warps and blocks combine with the exact Chan merge, and
// the per-block partials are merged on the device by pybench.h's finish_activation_stats.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../pybench.h"

namespace pybench {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / kWarp;  // rows layout: blocks of 32 channels x 8 rows

template <typename A>
__device__ __forceinline__ A shfl_down(A v, int delta) {
  return __shfl_down_sync(0xffffffffu, v, delta);
}

// sum |x|, sum x^2, sum x
template <typename A>
struct Moments {
  static constexpr int kFields = 3;
  A abs = 0, sq = 0, sum = 0;
  __device__ void push(A x) {
    abs += fabs(x);
    sq += x * x;
    sum += x;
  }
  __device__ void merge(const Moments& o) {
    abs += o.abs;
    sq += o.sq;
    sum += o.sum;
  }
  __device__ Moments down(int delta) const {
    Moments r;
    r.abs = shfl_down(abs, delta);
    r.sq = shfl_down(sq, delta);
    r.sum = shfl_down(sum, delta);
    return r;
  }
  __device__ void store(A* p) const {
    p[0] = abs;
    p[1] = sq;
    p[2] = sum;
  }
};

// count, mean, M2 (Welford), zero count
template <typename A>
struct Welford {
  static constexpr int kFields = 4;
  A n = 0, mean = 0, m2 = 0, zeros = 0;
  __device__ void push(A x) {
    n += A(1);
    const A d = x - mean;
    mean += d / n;
    m2 += d * (x - mean);
    zeros += x == A(0) ? A(1) : A(0);
  }
  __device__ void merge(const Welford& o) {  // Chan et al.
    if (o.n == A(0)) return;
    const A total = n + o.n, d = o.mean - mean;
    mean += d * (o.n / total);
    m2 += o.m2 + d * d * (n * o.n / total);
    n = total;
    zeros += o.zeros;
  }
  __device__ Welford down(int delta) const {
    Welford r;
    r.n = shfl_down(n, delta);
    r.mean = shfl_down(mean, delta);
    r.m2 = shfl_down(m2, delta);
    r.zeros = shfl_down(zeros, delta);
    return r;
  }
  __device__ void store(A* p) const {
    p[0] = n;
    p[1] = mean;
    p[2] = m2;
    p[3] = zeros;
  }
};

// Reduces a 1-D block's accumulators; the result is valid in thread 0.
template <typename Acc>
__device__ Acc block_reduce(Acc acc) {
  __shared__ alignas(Acc) unsigned char raw[sizeof(Acc) * (kThreads / kWarp)];
  Acc* warps = reinterpret_cast<Acc*>(raw);
  for (int d = kWarp / 2; d > 0; d /= 2) acc.merge(acc.down(d));
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  if (lane == 0) warps[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    acc = lane < blockDim.x / kWarp ? warps[lane] : Acc();
    for (int d = kWarp / 2; d > 0; d /= 2) acc.merge(acc.down(d));
  }
  return acc;
}

// grid (C, pieces): block (c, s) reduces runs o in piece s of channel c; partial[c, s, :]
template <typename T, typename Acc, typename A>
__global__ void __launch_bounds__(kThreads) runs_kernel(const T* __restrict__ x, int64_t outer, int64_t channels,
                                                        int64_t inner, int64_t pieces, A* __restrict__ partial) {
  const int64_t c = blockIdx.x, s = blockIdx.y;
  const int64_t o0 = s * outer / pieces, o1 = (s + 1) * outer / pieces;
  Acc acc;
  if (inner >= blockDim.x) {  // long runs: each thread strides along a run, coalesced
    for (int64_t o = o0; o < o1; ++o) {
      const T* run = x + (o * channels + c) * inner;
      for (int64_t i = threadIdx.x; i < inner; i += blockDim.x) acc.push(static_cast<A>(run[i]));
    }
  } else {  // short runs (7x7 maps, 3x3 filters): threads walk (run, element) pairs
    const int64_t total = (o1 - o0) * inner;
    for (int64_t e = threadIdx.x; e < total; e += blockDim.x) {
      const int64_t o = o0 + e / inner, i = e % inner;
      acc.push(static_cast<A>(x[(o * channels + c) * inner + i]));
    }
  }
  acc = block_reduce(acc);
  if (threadIdx.x == 0) acc.store(partial + (c * pieces + s) * Acc::kFields);
}

// grid (ceil(C / 32), pieces), block (32, 8): column c over rows in piece s; partial[c, s, :]
template <typename T, typename Acc, typename A>
__global__ void __launch_bounds__(kThreads) rows_kernel(const T* __restrict__ x, int64_t rows, int64_t channels,
                                                        int64_t pieces, A* __restrict__ partial) {
  __shared__ alignas(Acc) unsigned char raw[sizeof(Acc) * kThreads];
  Acc* tile = reinterpret_cast<Acc*>(raw);  // [8][32]
  const int64_t c = int64_t(blockIdx.x) * kWarp + threadIdx.x, s = blockIdx.y;
  const int64_t r0 = s * rows / pieces, r1 = (s + 1) * rows / pieces;
  Acc acc;
  if (c < channels) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += blockDim.y) acc.push(static_cast<A>(x[r * channels + c]));
  }
  tile[threadIdx.y * kWarp + threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < channels) {
    for (int k = 1; k < kRowsPerBlock; ++k) acc.merge(tile[k * kWarp + threadIdx.x]);
    acc.store(partial + (c * pieces + s) * Acc::kFields);
  }
}

// Launches the reduction of `v` with accumulator Acc<A>; returns partials [C, pieces, Acc::kFields] of dtype A.
template <template <typename> class Acc>
at::Tensor reduce_channels(const ChannelView& v, const at::Tensor& input) {
  const int64_t target_blocks = 8 * sm_count();
  const int64_t col_blocks = v.rows ? (v.channels + kWarp - 1) / kWarp : v.channels;
  const int64_t per_column = v.rows ? v.outer / kRowsPerBlock : v.outer;  // pieces must not exceed the work
  const int64_t pieces = std::clamp<int64_t>((target_blocks + col_blocks - 1) / col_blocks, 1,
                                             std::clamp<int64_t>(per_column, 1, 65535));
  const at::ScalarType acc_type = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor partial = at::zeros({v.channels, pieces, Acc<float>::kFields}, input.options().dtype(acc_type));
  if (input.numel() == 0) return partial;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "pybench_reduce_channels", [&] {
    using A = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* x = v.data.const_data_ptr<scalar_t>();
    A* out = partial.data_ptr<A>();
    if (v.rows) {
      const dim3 grid{unsigned(col_blocks), unsigned(pieces)}, block{kWarp, kRowsPerBlock};
      rows_kernel<scalar_t, Acc<A>, A><<<grid, block, 0, stream>>>(x, v.outer, v.channels, pieces, out);
    } else {
      const dim3 grid{unsigned(v.channels), unsigned(pieces)};
      runs_kernel<scalar_t, Acc<A>, A><<<grid, kThreads, 0, stream>>>(x, v.outer, v.channels, v.inner, pieces, out);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return partial;
}

at::Tensor channel_stats_cuda(const at::Tensor& w, int64_t dim) {
  dim = check_channel_stats(w, dim);
  const c10::cuda::CUDAGuard guard(w.device());
  const ChannelView v = channel_view(w, dim);
  return reduce_channels<Moments>(v, w).sum(1).to(stats_dtype(w));
}

std::vector<at::Tensor> channel_stats_list_cuda(at::TensorList ws, int64_t dim) {
  check_same_device("channel_stats_list", ws);
  std::vector<at::Tensor> out;
  out.reserve(ws.size());
  for (const at::Tensor& w : ws) out.push_back(channel_stats_cuda(w, dim));
  return out;
}

at::Tensor activation_stats_cuda(const at::Tensor& x, const std::optional<at::Tensor>& state) {
  check_activation_stats(x, state);
  const c10::cuda::CUDAGuard guard(x.device());
  const ChannelView v = channel_view(x, 1);
  return finish_activation_stats(reduce_channels<Welford>(v, x), state);
}

}  // namespace
}  // namespace pybench

TORCH_LIBRARY_IMPL(pybench, CUDA, m) {
  m.impl("channel_stats", &pybench::channel_stats_cuda);
  m.impl("channel_stats_list", &pybench::channel_stats_list_cuda);
  m.impl("activation_stats", &pybench::activation_stats_cuda);
}
