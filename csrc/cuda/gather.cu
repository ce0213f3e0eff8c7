// CUDA kernel of channel_gather: out[o, i, k] = w[out_idx[o], in_idx[i], k], one thread per output element in a
// grid-stride loop (consecutive threads write consecutive elements; reads are contiguous along k).
// Copies are by element size, so one instantiation serves every dtype of that width.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../pybench.h"

namespace pybench {
namespace {

constexpr int kThreads = 256;

template <typename E>
__global__ void __launch_bounds__(kThreads)
    gather_kernel(const E* __restrict__ src, E* __restrict__ dst, int64_t n_out, int64_t n_in, int64_t cols,
                  int64_t inner, const int64_t* __restrict__ out_idx, const int64_t* __restrict__ in_idx) {
  const int64_t total = n_out * n_in * inner;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const int64_t k = e % inner, t = e / inner;
    const int64_t i = t % n_in, o = t / n_in;
    const int64_t so = out_idx != nullptr ? out_idx[o] : o;
    const int64_t si = in_idx != nullptr ? in_idx[i] : i;
    dst[e] = src[(so * cols + si) * inner + k];
  }
}

at::Tensor channel_gather_cuda(const at::Tensor& w_in, const std::optional<at::Tensor>& out_idx,
                               const std::optional<at::Tensor>& in_idx) {
  check_channel_gather(w_in, out_idx, in_idx);
  const c10::cuda::CUDAGuard guard(w_in.device());
  const at::Tensor w = w_in.contiguous();
  const GatherShape g = gather_shape(w, out_idx, in_idx);
  at::Tensor out = at::empty(g.out_sizes, w.options());
  if (out.numel() == 0) return out;
  const at::Tensor o = out_idx.has_value() ? out_idx->to(at::kLong).contiguous() : at::Tensor();
  const at::Tensor i = in_idx.has_value() ? in_idx->to(at::kLong).contiguous() : at::Tensor();
  const int64_t n_out = g.out_sizes[0], n_in = w.dim() > 1 ? g.out_sizes[1] : 1;
  const int64_t sms = sm_count();
  const int64_t blocks = std::clamp<int64_t>((out.numel() + kThreads - 1) / kThreads, 1, 32 * sms);
  const int64_t* op = o.defined() ? o.const_data_ptr<int64_t>() : nullptr;
  const int64_t* ip = i.defined() ? i.const_data_ptr<int64_t>() : nullptr;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  switch (w.element_size()) {
    case 2:
      gather_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<const uint16_t*>(w.const_data_ptr()),
                                                     static_cast<uint16_t*>(out.data_ptr()), n_out, n_in, g.cols,
                                                     g.inner, op, ip);
      break;
    case 4:
      gather_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<const uint32_t*>(w.const_data_ptr()),
                                                     static_cast<uint32_t*>(out.data_ptr()), n_out, n_in, g.cols,
                                                     g.inner, op, ip);
      break;
    default:
      gather_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<const uint64_t*>(w.const_data_ptr()),
                                                     static_cast<uint64_t*>(out.data_ptr()), n_out, n_in, g.cols,
                                                     g.inner, op, ip);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::vector<at::Tensor> channel_gather_list_cuda(at::TensorList ws,
                                                 const c10::List<std::optional<at::Tensor>>& out_idx,
                                                 const c10::List<std::optional<at::Tensor>>& in_idx) {
  check_gather_list(ws, out_idx, in_idx);
  std::vector<at::Tensor> out;
  out.reserve(ws.size());
  for (size_t k = 0; k < ws.size(); ++k) out.push_back(channel_gather_cuda(ws[k], out_idx.get(k), in_idx.get(k)));
  return out;
}

}  // namespace
}  // namespace pybench

TORCH_LIBRARY_IMPL(pybench, CUDA, m) {
  m.impl("channel_gather", &pybench::channel_gather_cuda);
  m.impl("channel_gather_list", &pybench::channel_gather_list_cuda);
}
