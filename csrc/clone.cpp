// pybench._C as a Python module: the one Python function it exports (the module-tree clone walk of
// pybench.prune.clone) and the init that loading runs. Plain CPython, no torch headers: its own small
// translation unit, so editing it does not rebuild the op registrations.
#include <Python.h>

#include <algorithm>
#include <vector>

namespace pybench {
namespace {

// ---- clone: pybench.prune.clone.clone_module's walk, in C --------------------------------------------------------
// Copying a module tree in Python costs a few microseconds per module (its ~25 attributes, ~12 empty hook
// dictionaries, three dictionaries of tensors and children), which is most of pb.apply on a small model. This is
// the same walk, step for step, with pybench.prune.clone supplying what needs Python: the "plain class" test, the copy
// of a tensor missing from the memo, and copy.deepcopy (see clone.clone_module, the reference).
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
    {"clone_module", clone_module, METH_VARARGS, "pybench.prune.clone.clone_module's walk, in C (see there)."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace
}  // namespace pybench

// Importing pybench._C runs the op registrations of ops.cpp and cpu/, cuda/; its one Python function serves
// pybench.prune.clone.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, pybench::methods};
  return PyModule_Create(&module_def);
}
