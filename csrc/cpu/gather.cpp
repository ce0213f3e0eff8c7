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

// The indices of one dim: int64 contiguous ones are read in place (surgery's), others converted once.
struct Indices {
  const int64_t* data = nullptr;  // nullptr: all of the dim, in order
  int64_t size = 0;
  std::vector<int64_t> owned;
  at::Tensor keep;  // holds a contiguous copy alive
  explicit Indices(const std::optional<at::Tensor>& idx) {
    if (!idx.has_value()) return;
    size = idx->numel();
    if (idx->scalar_type() == at::kLong) {
      keep = idx->contiguous();
      data = keep.const_data_ptr<int64_t>();
      return;
    }
    const at::Tensor i = idx->contiguous();
    const int32_t* p = i.const_data_ptr<int32_t>();
    owned.assign(p, p + size);
    data = owned.data();
  }
  bool all() const { return data == nullptr; }
};

// w viewed as [rows, cols, inner]; rows / cols pick through `out` / `in` (all(): all of them, in order).
template <typename E>
void gather(const E* src, E* dst, int64_t rows, int64_t cols, int64_t inner, const Indices& out, const Indices& in) {
  const int64_t n_out = out.all() ? rows : out.size;
  const int64_t n_in = in.all() ? cols : in.size;
  const int64_t row_elems = n_in * inner;
  // grain: rows worth at least 256K elements per task, so small weights are copied on the calling thread
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(row_elems, 1));
  at::parallel_for(0, n_out, grain, [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o) {
      const E* row = src + (out.all() ? o : out.data[o]) * cols * inner;
      E* to = dst + o * row_elems;
      if (in.all()) {
        if (row_elems <= 16) {  // a norm layer's vectors, depthwise filters: a call to memcpy costs more
          for (int64_t k = 0; k < row_elems; ++k) to[k] = row[k];
        } else {
          std::memcpy(to, row, sizeof(E) * row_elems);
        }
      } else if (inner == 1) {
        for (int64_t i = 0; i < n_in; ++i) to[i] = row[in.data[i]];
      } else if (inner <= 16) {  // 3x3 / 5x5 filters: a call to memcpy per run costs more than the copy
        for (int64_t i = 0; i < n_in; ++i) {
          const E* from = row + in.data[i] * inner;
          for (int64_t k = 0; k < inner; ++k) to[i * inner + k] = from[k];
        }
      } else {
        for (int64_t i = 0; i < n_in; ++i) std::memcpy(to + i * inner, row + in.data[i] * inner, sizeof(E) * inner);
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
  // An explicit empty index already made numel() zero above.
  const Indices o(out_idx), i(in_idx);
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

std::vector<at::Tensor> channel_gather_list_cpu(at::TensorList ws, const c10::List<std::optional<at::Tensor>>& out_idx,
                                                const c10::List<std::optional<at::Tensor>>& in_idx) {
  check_gather_list(ws, out_idx, in_idx);
  std::vector<at::Tensor> out;
  out.reserve(ws.size());
  for (size_t k = 0; k < ws.size(); ++k) out.push_back(channel_gather_cpu(ws[k], out_idx.get(k), in_idx.get(k)));
  return out;
}

}  // namespace
}  // namespace pybench

TORCH_LIBRARY_IMPL(pybench, CPU, m) {
  m.impl("channel_gather", &pybench::channel_gather_cpu);
  m.impl("channel_gather_list", &pybench::channel_gather_list_cpu);
}
