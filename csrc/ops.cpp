// Schemas of the pybench ops (declared once, here), the checks and merges every device shares, and the
// Python module that loading registers them from. Device kernels register in cpu/*.cpp and cuda/*.cu.
#include <Python.h>

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

namespace pybench {
namespace {

// ---- clone: pybench._clone.clone_module's walk, in C ------------------------------------------------------------
// Copying a module tree in Python costs a few microseconds per module (its ~25 attributes, ~12 empty hook
// dictionaries, three dictionaries of tensors and children), which is most of pb.apply on a small model. This is
// the same walk, step for step, with pybench._clone supplying what needs Python: the "plain class" test, the copy
// of a tensor missing from the memo, and copy.deepcopy (see _clone.clone_module, the reference).
struct Clone {
  PyObject* memo;        // dict: id(original) -> copy
  PyObject* plain;       // dict: class -> bool, filled through is_plain
  PyObject* is_plain;    // callable(cls) -> bool
  PyObject* tensor;      // callable(t, memo) -> copy of a tensor that is not in the memo
  PyObject* deepcopy;    // copy.deepcopy
  PyObject* fallback;    // callable(module, memo): the Python walk, for a module of unusual layout
  std::vector<PyTypeObject*> atomic;      // types whose values are shared
  std::vector<PyTypeObject*> containers;  // container types made new when empty
  PyObject* no_args = nullptr;            // ()
};

bool is_one_of(const std::vector<PyTypeObject*>& types, PyTypeObject* t) {
  return std::find(types.begin(), types.end(), t) != types.end();
}

// memo[id(obj)] as a new reference; nullptr without an exception when absent (or None, as memo.get() is None)
PyObject* memo_get(const Clone& c, PyObject* obj) {
  PyObject* key = PyLong_FromVoidPtr(obj);
  if (key == nullptr) return nullptr;
  PyObject* got = PyDict_GetItemWithError(c.memo, key);
  Py_DECREF(key);
  return got == Py_None ? nullptr : Py_XNewRef(got);
}

int is_plain(const Clone& c, PyObject* cls) {
  PyObject* known = PyDict_GetItemWithError(c.plain, cls);
  if (known == nullptr) {
    if (PyErr_Occurred()) return -1;
    PyObject* answer = PyObject_CallOneArg(c.is_plain, cls);
    if (answer == nullptr) return -1;
    const int truth = PyObject_IsTrue(answer);
    Py_DECREF(answer);
    return truth;
  }
  return PyObject_IsTrue(known);
}

bool is_atomic(const Clone& c, PyObject* v) {
  if (is_one_of(c.atomic, Py_TYPE(v))) return true;
  if (!PyTuple_CheckExact(v)) return false;
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(v); ++i) {
    if (!is_one_of(c.atomic, Py_TYPE(PyTuple_GET_ITEM(v, i)))) return false;
  }
  return true;
}

// an attribute's copy (a new reference): shared when immutable, new when an empty container, else deepcopy
PyObject* copy_value(const Clone& c, PyObject* v) {
  if (is_atomic(c, v)) return Py_NewRef(v);
  PyTypeObject* t = Py_TYPE(v);
  if (is_one_of(c.containers, t)) {
    const Py_ssize_t n = PyObject_Length(v);
    if (n < 0) return nullptr;
    if (n == 0) {
      if (t == &PyDict_Type) return PyDict_New();
      if (t == &PyList_Type) return PyList_New(0);
      if (t == &PySet_Type) return PySet_New(nullptr);
      return PyObject_CallNoArgs(reinterpret_cast<PyObject*>(t));
    }
  }
  return PyObject_CallFunctionObjArgs(c.deepcopy, v, c.memo, nullptr);
}

PyObject* clone(const Clone& c, PyObject* module);

// a copy of the dict `d` (exact dict: checked by the caller) with each value copied by `one`
template <typename F>
PyObject* copy_dict(PyObject* d, const F& one) {
  PyObject* out = PyDict_Copy(d);  // then each value replaced: the keys never change while it is walked
  if (out == nullptr) return nullptr;
  PyObject *key, *value;
  Py_ssize_t pos = 0;
  while (PyDict_Next(out, &pos, &key, &value)) {
    PyObject* v = one(value);
    if (v == nullptr || PyDict_SetItem(out, key, v) < 0) {
      Py_XDECREF(v);
      Py_DECREF(out);
      return nullptr;
    }
    Py_DECREF(v);
  }
  return out;
}

const char* const kDicts[3] = {"_parameters", "_buffers", "_modules"};

// the module's copy of its __dict__ `src`: its dictionaries of tensors and children first (so that other
// attributes holding the same objects find their copies in the memo), then its other attributes in order
PyObject* copy_state(const Clone& c, PyObject* src) {
  PyObject* made[3] = {nullptr, nullptr, nullptr};
  for (int k = 0; k < 3; ++k) {
    made[k] = copy_dict(PyDict_GetItemString(src, kDicts[k]), [&](PyObject* v) -> PyObject* {
      if (v == Py_None) return Py_NewRef(v);
      if (k == 2) return clone(c, v);
      PyObject* got = memo_get(c, v);
      if (got != nullptr || PyErr_Occurred()) return got;
      return PyObject_CallFunctionObjArgs(c.tensor, v, c.memo, nullptr);
    });
    if (made[k] == nullptr) {
      for (PyObject* m : made) Py_XDECREF(m);
      return nullptr;
    }
  }
  // a copy of src, its values then replaced in place (the keys do not change): deepcopy runs Python code, which
  // must not see this walk a dict it could change
  PyObject* state = PyDict_Copy(src);
  for (int k = 0; k < 3 && state != nullptr; ++k) {
    if (PyDict_SetItemString(state, kDicts[k], made[k]) < 0) Py_CLEAR(state);
  }
  PyObject *key, *value;
  Py_ssize_t pos = 0;
  while (state != nullptr && PyDict_Next(state, &pos, &key, &value)) {
    if (value == made[0] || value == made[1] || value == made[2] || is_atomic(c, value)) continue;
    PyObject* copy = copy_value(c, value);
    if (copy == nullptr || PyDict_SetItem(state, key, copy) < 0) Py_CLEAR(state);
    Py_XDECREF(copy);
  }
  for (PyObject* m : made) Py_DECREF(m);
  return state;
}

PyObject* clone(const Clone& c, PyObject* module) {
  PyObject* got = memo_get(c, module);
  if (got != nullptr || PyErr_Occurred()) return got;
  PyTypeObject* cls = Py_TYPE(module);
  const int plain = is_plain(c, reinterpret_cast<PyObject*>(cls));
  if (plain < 0) return nullptr;
  if (!plain) return PyObject_CallFunctionObjArgs(c.deepcopy, module, c.memo, nullptr);
  PyObject* src = PyObject_GenericGetDict(module, nullptr);
  if (src == nullptr) return nullptr;
  for (const char* name : kDicts) {
    PyObject* d = PyDict_GetItemString(src, name);  // borrowed
    if (d == nullptr || !PyDict_CheckExact(d)) {  // not the usual layout: the Python walk
      Py_DECREF(src);
      return PyObject_CallFunctionObjArgs(c.fallback, module, c.memo, nullptr);
    }
  }
  PyObject* copy = cls->tp_new(cls, c.no_args, nullptr);  // cls.__new__(cls)
  PyObject* key = copy == nullptr ? nullptr : PyLong_FromVoidPtr(module);
  bool ok = key != nullptr && PyDict_SetItem(c.memo, key, copy) == 0;
  PyObject* state = ok ? copy_state(c, src) : nullptr;
  ok = state != nullptr && PyObject_GenericSetDict(copy, state, nullptr) == 0;
  Py_DECREF(src);
  Py_XDECREF(key);
  Py_XDECREF(state);
  if (!ok) Py_CLEAR(copy);
  return copy;
}

std::vector<PyTypeObject*> types_of(PyObject* frozen) {
  std::vector<PyTypeObject*> out;
  PyObject* it = PyObject_GetIter(frozen);
  if (it == nullptr) return out;
  while (PyObject* t = PyIter_Next(it)) {
    if (PyType_Check(t)) out.push_back(reinterpret_cast<PyTypeObject*>(t));  // alive: the frozenset holds it
    Py_DECREF(t);
  }
  Py_DECREF(it);
  return out;
}

PyObject* clone_module(PyObject*, PyObject* args) {
  Clone c{};
  PyObject *module, *atomic, *containers;
  if (!PyArg_ParseTuple(args, "OO!O!OOOO!O!O:clone_module", &module, &PyDict_Type, &c.memo, &PyDict_Type, &c.plain,
                        &c.is_plain, &c.tensor, &c.deepcopy, &PyFrozenSet_Type, &atomic, &PyFrozenSet_Type,
                        &containers, &c.fallback)) {
    return nullptr;
  }
  c.atomic = types_of(atomic);
  c.containers = types_of(containers);
  if (PyErr_Occurred()) return nullptr;
  c.no_args = PyTuple_New(0);
  if (c.no_args == nullptr) return nullptr;
  PyObject* out = clone(c, module);
  Py_DECREF(c.no_args);
  return out;
}

PyMethodDef methods[] = {
    {"clone_module", clone_module, METH_VARARGS, "pybench._clone.clone_module's walk, in C (see there)."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace
}  // namespace pybench

// Importing pybench._C runs the registrations above; its one Python function serves pybench._clone.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, pybench::methods};
  return PyModule_Create(&module_def);
}
