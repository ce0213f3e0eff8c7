// Shared pieces of the pybench ops: argument checks, the [outer, C, inner] layout view, and the exact merge of
// per-task activation statistics. Kernels live in cpu/ and cuda/; schemas in ops.cpp.
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <optional>
#include <vector>

#ifdef __CUDACC__
#include <c10/cuda/CUDAException.h>
#endif

namespace pybench {

// How a reduction over "every index but `dim`" reads a tensor:
//  - runs: contiguous [outer, C, inner]; channel c owns `outer` runs of `inner` elements (NCHW, conv filters);
//  - rows: [rows, C] with C contiguous (channels_last activations, in-features of a linear, any dim with inner 1).
struct ChannelView {
  at::Tensor data;  // the tensor the strides below describe (a copy only when neither layout applies)
  int64_t outer = 1;
  int64_t channels = 0;
  int64_t inner = 1;
  bool rows = false;  // true: read as [outer * inner, channels] with row stride `channels`
};
ChannelView channel_view(const at::Tensor& t, int64_t dim);

// Validation shared by every device; messages name the argument and the expectation.
int64_t check_channel_stats(const at::Tensor& w, int64_t dim);  // returns dim normalised to [0, rank)
void check_activation_stats(const at::Tensor& x, const std::optional<at::Tensor>& state);
void check_channel_gather(const at::Tensor& w, const std::optional<at::Tensor>& out_idx,
                          const std::optional<at::Tensor>& in_idx);

// The list ops: every tensor on ws[0]'s device; channel_gather_list's three lists of one length.
void check_same_device(const char* op, at::TensorList ws);
void check_gather_list(at::TensorList ws, const c10::List<std::optional<at::Tensor>>& out_idx,
                       const c10::List<std::optional<at::Tensor>>& in_idx);

// channel_gather reads w as [rows, cols, inner] (1-D: cols = inner = 1) and writes out_sizes.
struct GatherShape {
  int64_t rows = 0, cols = 1, inner = 1;
  std::vector<int64_t> out_sizes;
};
GatherShape gather_shape(const at::Tensor& w, const std::optional<at::Tensor>& out_idx,
                         const std::optional<at::Tensor>& in_idx);

// dtype of channel_stats' result: fp64 for fp64 input, else fp32.
at::ScalarType stats_dtype(const at::Tensor& t);

// partials: [C, S, 4] (count, mean, M2, zeros) of S disjoint pieces of each channel, any float dtype.
// Returns their exact merge (Chan et al.), merged into `state` when given; dtype of state, else fp64.
at::Tensor finish_activation_stats(const at::Tensor& partials, const std::optional<at::Tensor>& state);

#ifdef __CUDACC__
// Multiprocessors of the current device (cudaDeviceGetAttribute: no cuBLAS/cuSPARSE headers needed).
inline int64_t sm_count() {
  int device = 0, count = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}
#endif

}  // namespace pybench
