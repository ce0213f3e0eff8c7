// CPU kernel of channel_gather: out[o, i, k] = w[out_idx[o], in_idx[i], k] in one pass over the output.
// Copies are by element size, so one instantiation serves every dtype of that width.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "../pybench.h"

namespace pybench {
namespace {

std::vector<int64_t> to_indices(const std::optional<at::Tensor>& idx) {
  if (!idx.has_value()) return {};
  const at::Tensor i = idx->contiguous();
  std::vector<int64_t> out(i.numel());
  if (i.scalar_type() == at::kLong) {
    std::memcpy(out.data(), i.const_data_ptr<int64_t>(), out.size() * sizeof(int64_t));
  } else {
    const int32_t* p = i.const_data_ptr<int32_t>();
    for (size_t k = 0; k < out.size(); ++k) out[k] = p[k];
  }
  return out;
}

// w viewed as [rows, cols, inner]; rows / cols pick through `out` / `in` (empty: all of them, in order).
template <typename E>
void gather(const E* src, E* dst, int64_t rows, int64_t cols, int64_t inner, const std::vector<int64_t>& out,
            const std::vector<int64_t>& in) {
  const int64_t n_out = out.empty() ? rows : static_cast<int64_t>(out.size());
  const int64_t n_in = in.empty() ? cols : static_cast<int64_t>(in.size());
  const int64_t row_elems = n_in * inner;
  // grain: rows worth at least 256K elements per task, so small weights are copied on the calling thread
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(row_elems, 1));
  at::parallel_for(0, n_out, grain, [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o) {
      const E* row = src + (out.empty() ? o : out[o]) * cols * inner;
      E* to = dst + o * row_elems;
      if (in.empty()) {
        std::memcpy(to, row, sizeof(E) * cols * inner);
      } else if (inner == 1) {
        for (int64_t i = 0; i < n_in; ++i) to[i] = row[in[i]];
      } else if (inner <= 16) {  // 3x3 / 5x5 filters: a call to memcpy per run costs more than the copy
        for (int64_t i = 0; i < n_in; ++i) {
          const E* from = row + in[i] * inner;
          for (int64_t k = 0; k < inner; ++k) to[i * inner + k] = from[k];
        }
      } else {
        for (int64_t i = 0; i < n_in; ++i) std::memcpy(to + i * inner, row + in[i] * inner, sizeof(E) * inner);
      }
    }
  });
}

at::Tensor channel_gather_cpu(const at::Tensor& w_in, const std::optional<at::Tensor>& out_idx,
                              const std::optional<at::Tensor>& in_idx) {
  check_channel_gather(w_in, out_idx, in_idx);
  const at::Tensor w = w_in.contiguous();
  const GatherShape g = gather_shape(w, out_idx, in_idx);
  at::Tensor out = at::empty(g.out_sizes, w.options());
  if (out.numel() == 0) return out;
  // An explicit empty index already made numel() zero above, so empty vectors here mean "take all".
  const std::vector<int64_t> o = to_indices(out_idx), i = to_indices(in_idx);
  switch (w.element_size()) {
    case 2:
      gather(static_cast<const uint16_t*>(w.const_data_ptr()), static_cast<uint16_t*>(out.data_ptr()), g.rows, g.cols,
             g.inner, o, i);
      break;
    case 4:
      gather(static_cast<const uint32_t*>(w.const_data_ptr()), static_cast<uint32_t*>(out.data_ptr()), g.rows, g.cols,
             g.inner, o, i);
      break;
    default:
      gather(static_cast<const uint64_t*>(w.const_data_ptr()), static_cast<uint64_t*>(out.data_ptr()), g.rows, g.cols,
             g.inner, o, i);
  }
  return out;
}

}  // namespace
}  // namespace pybench

TORCH_LIBRARY_IMPL(pybench, CPU, m) {
  m.impl("channel_gather", &pybench::channel_gather_cpu);
}
