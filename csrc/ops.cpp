// Schemas of the pybench ops (declared once, here), the checks and merges every device shares, and the
// registrations that loading pybench._C runs (its module init is in clone.cpp). Device kernels register in
// cpu/*.cpp and cuda/*.cu.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "pybench.h"

namespace pybench {
namespace {

std::string dtype_name(const at::Tensor& t) {  // as Python spells it: torch.int64, not Long
  return "torch." + std::string(c10::getDtypeNames(t.scalar_type()).first);
}

bool is_float(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

void check_float(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK_TYPE(is_float(t.scalar_type()), op, ": ", arg,
                   " must be a floating-point tensor (float16, bfloat16, float32 or float64), got ", dtype_name(t));
}

// Smallest and largest index. On the CPU a plain loop: aminmax + item() are two more dispatches per index, which
// cost more than the check itself for the small index vectors of surgery.
template <typename I>
std::pair<int64_t, int64_t> minmax_of(const I* p, int64_t n) {
  int64_t lo = p[0], hi = p[0];
  for (int64_t k = 1; k < n; ++k) {
    lo = std::min<int64_t>(lo, p[k]);
    hi = std::max<int64_t>(hi, p[k]);
  }
  return {lo, hi};
}

std::pair<int64_t, int64_t> index_range(const at::Tensor& i) {
  if (i.device().is_cpu()) {
    const at::Tensor c = i.contiguous();
    return c.scalar_type() == at::kLong ? minmax_of(c.const_data_ptr<int64_t>(), c.numel())
                                        : minmax_of(c.const_data_ptr<int32_t>(), c.numel());
  }
  auto [lo, hi] = at::aminmax(i);
  return {lo.item<int64_t>(), hi.item<int64_t>()};
}

void check_index(const at::Tensor& w, const std::optional<at::Tensor>& idx, const char* arg, int64_t dim) {
  if (!idx.has_value()) return;
  const at::Tensor& i = *idx;
  TORCH_CHECK_TYPE(i.scalar_type() == at::kLong || i.scalar_type() == at::kInt, "channel_gather: ", arg,
                   " must be an int32 or int64 tensor, got ", dtype_name(i));
  TORCH_CHECK_VALUE(i.dim() == 1, "channel_gather: ", arg, " must be 1-D, got shape ", i.sizes());
  TORCH_CHECK_VALUE(i.device() == w.device(), "channel_gather: ", arg, " is on ", i.device(), " but w is on ",
                    w.device(), "; move ", arg, " to w's device");
  if (i.numel() == 0) return;
  const auto [lo, hi] = index_range(i);
  const int64_t size = w.size(dim);
  TORCH_CHECK_INDEX(lo >= 0 && hi < size, "channel_gather: ", arg, " holds ", lo < 0 ? lo : hi,
                    ", out of range for dim ", dim, " of w (size ", size, "; valid 0..", size - 1, ")");
}

}  // namespace

at::ScalarType stats_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

int64_t check_channel_stats(const at::Tensor& w, int64_t dim) {
  check_float("channel_stats", "w", w);
  TORCH_CHECK_VALUE(w.dim() > 0, "channel_stats: w must have at least 1 dimension, got a 0-d tensor");
  TORCH_CHECK_INDEX(dim >= -w.dim() && dim < w.dim(), "channel_stats: dim ", dim,
                    " is out of range for w of rank ", w.dim(), " (expected ", -w.dim(), "..", w.dim() - 1, ")");
  return dim < 0 ? dim + w.dim() : dim;
}

void check_activation_stats(const at::Tensor& x, const std::optional<at::Tensor>& state) {
  check_float("activation_stats", "x", x);
  TORCH_CHECK_VALUE(x.dim() >= 2, "activation_stats: x must have shape (N, C, ...) with at least 2 dimensions, ",
                    "got shape ", x.sizes());
  if (!state.has_value()) return;
  const at::Tensor& s = *state;
  const int64_t c = x.size(1);
  TORCH_CHECK_VALUE(s.dim() == 2 && s.size(0) == c && s.size(1) == 4, "activation_stats: state must have shape ",
                    "[C, 4] = [", c, ", 4] (count, mean, M2, zeros), got ", s.sizes());
  TORCH_CHECK_TYPE(s.scalar_type() == at::kFloat || s.scalar_type() == at::kDouble,
                   "activation_stats: state must be float32 or float64, got ", dtype_name(s));
  TORCH_CHECK_VALUE(s.device() == x.device(), "activation_stats: state is on ", s.device(), " but x is on ",
                    x.device(), "; keep the running state on x's device");
}

void check_channel_gather(const at::Tensor& w, const std::optional<at::Tensor>& out_idx,
                          const std::optional<at::Tensor>& in_idx) {
  check_float("channel_gather", "w", w);
  TORCH_CHECK_VALUE(w.dim() > 0, "channel_gather: w must have at least 1 dimension, got a 0-d tensor");
  TORCH_CHECK_VALUE(!in_idx.has_value() || w.dim() >= 2,
                    "channel_gather: in_idx needs w of rank >= 2 (dim 1), got rank ", w.dim());
  check_index(w, out_idx, "out_idx", 0);
  check_index(w, in_idx, "in_idx", 1);
}

void check_same_device(const char* op, at::TensorList ws) {
  for (size_t k = 1; k < ws.size(); ++k) {
    TORCH_CHECK_VALUE(ws[k].device() == ws[0].device(), op, ": ws[", k, "] is on ", ws[k].device(),
                      " but ws[0] is on ", ws[0].device(), "; one call takes tensors of one device");
  }
}

void check_gather_list(at::TensorList ws, const c10::List<std::optional<at::Tensor>>& out_idx,
                       const c10::List<std::optional<at::Tensor>>& in_idx) {
  TORCH_CHECK_VALUE(out_idx.size() == ws.size() && in_idx.size() == ws.size(),
                    "channel_gather_list: ws, out_idx and in_idx must have the same length, got ", ws.size(), ", ",
                    out_idx.size(), " and ", in_idx.size());
  check_same_device("channel_gather_list", ws);
}

GatherShape gather_shape(const at::Tensor& w, const std::optional<at::Tensor>& out_idx,
                         const std::optional<at::Tensor>& in_idx) {
  GatherShape g;
  g.rows = w.size(0);
  g.cols = w.dim() > 1 ? w.size(1) : 1;
  for (int64_t d = 2; d < w.dim(); ++d) g.inner *= w.size(d);
  g.out_sizes = w.sizes().vec();
  if (out_idx.has_value()) g.out_sizes[0] = out_idx->numel();
  if (in_idx.has_value()) g.out_sizes[1] = in_idx->numel();
  return g;
}

ChannelView channel_view(const at::Tensor& t, int64_t dim) {
  ChannelView v;
  v.channels = t.size(dim);
  for (int64_t d = 0; d < dim; ++d) v.outer *= t.size(d);
  for (int64_t d = dim + 1; d < t.dim(); ++d) v.inner *= t.size(d);
  if (t.is_contiguous()) {
    v.data = t;
    v.rows = v.inner == 1;
  } else if (t.movedim(dim, -1).is_contiguous()) {  // channels_last and friends: no copy needed
    v.data = t;
    v.rows = true;
  } else {  // any other strides (a sliced view, say): one copy, then the runs layout
    v.data = t.contiguous();
    v.rows = v.inner == 1;
  }
  if (v.rows) {
    v.outer *= v.inner;
    v.inner = 1;
  }
  return v;
}

at::Tensor finish_activation_stats(const at::Tensor& partials, const std::optional<at::Tensor>& state) {
  const at::Tensor p = partials.to(at::kDouble);
  const at::Tensor n_s = p.select(2, 0), mean_s = p.select(2, 1);
  const at::Tensor n = n_s.sum(1);
  const at::Tensor safe_n = at::where(n > 0, n, at::ones_like(n));
  const at::Tensor mean = (n_s * mean_s).sum(1) / safe_n;
  // M2 of the union = sum of the pieces' M2 + their spread around the common mean (exact, any number of pieces).
  const at::Tensor m2 = p.select(2, 2).sum(1) + (n_s * (mean_s - mean.unsqueeze(1)).square()).sum(1);
  at::Tensor out = at::stack({n, mean, m2, p.select(2, 3).sum(1)}, 1);
  if (!state.has_value()) return out;
  at::Tensor merged = finish_activation_stats(at::stack({state->to(at::kDouble), out}, 1), std::nullopt);
  return merged.to(state->scalar_type());
}

}  // namespace pybench

TORCH_LIBRARY(pybench, m) {
  m.def("channel_stats(Tensor w, int dim) -> Tensor");
  m.def("activation_stats(Tensor x, Tensor? state=None) -> Tensor");
  m.def("channel_gather(Tensor w, Tensor? out_idx, Tensor? in_idx) -> Tensor");
  // Batched forms: one dispatch for a whole model's weights (score and surgery call the ops once per tensor
  // otherwise, and for small models the per-call overhead is most of their time).
  m.def("channel_stats_list(Tensor[] ws, int dim) -> Tensor[]");
  m.def("channel_gather_list(Tensor[] ws, Tensor?[] out_idx, Tensor?[] in_idx) -> Tensor[]");
}
