// pybind11 module cascade_kernels._C: the CPU backend's entry points.
//
// Interface choice: NO torch C++ headers (they make the build slow and tie it to one torch ABI).
// The Python wrapper (cascade_kernels/ops/verify/cpu.py) passes every tensor as its address
// (tensor.data_ptr()) with shapes and a dtype code (codes.h); the outputs are allocated by the caller,
// so tensors are read and written in place, zero-copy. The GIL is released while the batch is verified.
// verify_call, the common case's whole-call entry, takes the tensors as Python objects and reads them
// through DLPack's C exchange API instead (below).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "continuous_cpu.h"
#include "philox.h"
#include "verify_cpu.h"

namespace py = pybind11;

template <class T>
static T* as_ptr(uintptr_t p) {
    return reinterpret_cast<T*>(p);
}

// 0 (greedy) or a temperature that stays positive and finite in float32 (validation.temperature_in_range):
// the walk divides float32 logits by it, and 0 or inf there would make NaN rows, which top-k's select
// does not expect. The Python boundary rejects the others; this is the kernels' own guard.
static bool temperature_in_range(double t) { return t == 0.0 || (t >= 0x1p-149 && t <= static_cast<double>(FLT_MAX)); }

static void verify_py(int64_t B, int64_t N, int64_t V, int64_t L, uintptr_t tokens, uintptr_t parents,
                      int64_t parents_stride, uintptr_t target, int target_dtype, bool cfg, double cfg_scale,
                      uintptr_t draft, int draft_dtype, uintptr_t hidden, int hidden_dtype, int64_t D, int method,
                      uintptr_t iparams, uintptr_t fparams, uintptr_t neighbors, int64_t nb_stride, bool transport,
                      double eps, double temperature, int64_t top_k, double top_p, uintptr_t seeds,
                      uintptr_t accept_len, uintptr_t accepted_nodes, uintptr_t next_token, uintptr_t tvd,
                      uintptr_t status, int num_threads) {
    if (!temperature_in_range(temperature))
        throw std::invalid_argument("temperature must be 0 or within float32's positive range");
    ck::VerifyParams P;
    P.B = B; P.N = N; P.V = V; P.L = L;
    P.tokens = as_ptr<const int64_t>(tokens);
    P.parents = as_ptr<const int32_t>(parents);
    P.parents_stride = parents_stride;
    P.target = as_ptr<const void>(target);
    P.target_dtype = target_dtype;
    P.cfg = cfg; P.cfg_scale = cfg_scale;
    P.draft = draft ? as_ptr<const void>(draft) : nullptr;
    P.draft_dtype = draft_dtype;
    P.hidden = hidden ? as_ptr<const void>(hidden) : nullptr;
    P.hidden_dtype = hidden_dtype; P.D = D;
    P.method = method;
    P.iparams = as_ptr<const int64_t>(iparams);
    P.fparams = as_ptr<const double>(fparams);
    P.neighbors = neighbors ? as_ptr<const int64_t>(neighbors) : nullptr;
    P.nb_stride = nb_stride;
    P.transport = transport; P.eps = eps; P.temperature = temperature;
    P.top_k = top_k; P.top_p = top_p;
    P.seeds = as_ptr<const int64_t>(seeds);
    P.accept_len = as_ptr<int32_t>(accept_len);
    P.accepted_nodes = as_ptr<int32_t>(accepted_nodes);
    P.next_token = as_ptr<int64_t>(next_token);
    P.tvd = as_ptr<float>(tvd);
    P.status = as_ptr<int32_t>(status);
    P.num_threads = num_threads;
    py::gil_scoped_release release;
    ck::verify_cpu(P);
}

// ---------------------------------------------------------------------------------------------------
// The whole-call entry (verify_call below; cascade_kernels/ops/verify/cpu.py): the tensors arrive as Python
// objects and are read through DLPack's C exchange API (dlpack.h v1.x, `__dlpack_c_exchange_api__`):
// one C call fills a DLTensor (data, device, dtype, shape, strides) without torch's Python getters, whose
// many distinct code paths and objects dominate a call made with cold caches. The structs below are the
// spec's (DLPack's stable ABI), declared here; no torch header is included.
namespace dl {
struct Device {
    int32_t device_type;  // kDLCPU = 1
    int32_t device_id;
};
struct DataType {
    uint8_t code;  // kDLInt = 0, kDLFloat = 2, kDLBfloat = 4
    uint8_t bits;
    uint16_t lanes;
};
struct Tensor {
    void* data;
    Device device;
    int32_t ndim;
    DataType dtype;
    int64_t* shape;
    int64_t* strides;  // nullptr: compact row-major
    uint64_t byte_offset;
};
struct Version {
    uint32_t major, minor;
};
struct ApiHeader {
    Version version;
    ApiHeader* prev_api;
};
struct Api {
    ApiHeader header;
    void* managed_tensor_allocator;
    void* managed_tensor_from_py_object_no_sync;
    void* managed_tensor_to_py_object_no_sync;
    int (*dltensor_from_py_object_no_sync)(void* py_object, Tensor* out);  // may be nullptr
    void* current_work_stream;
};
}  // namespace dl

static const dl::Api* g_dlpack = nullptr;

// What the whole-call entry recognises (set_call_entry; kept for the life of the process).
struct CallTypes {
    PyTypeObject *tensor, *tree, *packed, *output;  // torch.Tensor, ck.Tree, PackedMethod, ck.VerifyOutput
    PyObject* method;       // the base class ck.methods.Method
    PyObject* new_outputs;  // (B, L) -> fresh VerifyOutput with backend "cpu"
    PyObject* as_cpu;       // out -> out._replace(backend="cpu")
    PyObject* num_threads;  // torch.get_num_threads
    PyObject* samplings;    // validation.DRAFT_SAMPLINGS
    // interned names
    PyObject *whole_call, *packed_name, *host, *code, *neighbors, *embeddings, *ints_ptr, *floats_ptr,
        *default_eps, *name, *cpu, *transport, *standard;
};
static CallTypes g_call{};

// Registers torch's exchange API and what the whole-call entry recognises; false when the capsule is not a
// usable DLPack 1.x table (the entry then declines every call).
static bool set_call_entry(py::object capsule, py::object tensor, py::object tree, py::object method,
                           py::object packed, py::object output, py::object new_outputs, py::object as_cpu,
                           py::object num_threads, py::object samplings) {
    void* p = PyCapsule_GetPointer(capsule.ptr(), "dlpack_exchange_api");
    if (!p) {
        PyErr_Clear();
        return false;
    }
    const auto* api = static_cast<const dl::Api*>(p);
    for (const py::object* t : {&tensor, &tree, &packed, &output, &method})
        if (!PyType_Check(t->ptr())) return false;
    if (api->header.version.major != 1 || !api->dltensor_from_py_object_no_sync) return false;
    auto keep = [](const py::object& o) { return o.inc_ref().ptr(); };  // references held for good
    auto type = [&](const py::object& o) { return reinterpret_cast<PyTypeObject*>(keep(o)); };
    auto intern = [](const char* s) { return PyUnicode_InternFromString(s); };
    g_call = CallTypes{type(tensor), type(tree), type(packed), type(output), keep(method), keep(new_outputs),
                       keep(as_cpu), keep(num_threads), keep(samplings), intern("whole_call"), intern("packed"),
                       intern("host"), intern("code"), intern("neighbors"), intern("embeddings"), intern("ints_ptr"),
                       intern("floats_ptr"), intern("default_eps"), intern("name"), intern("cpu"),
                       intern("transport"), intern("standard")};
    g_dlpack = api;
    return true;
}

enum Kind { K_I64, K_I32, K_F32, K_BF16, K_F16, K_F64, K_OTHER };

// A contiguous CPU tensor of exactly type torch.Tensor with `ndim` dimensions: its data, shape and kind.
struct View {
    const void* data = nullptr;
    int64_t shape[3] = {0, 0, 0};
    Kind kind = K_OTHER;
    int64_t bytes = 0;  // contiguous: the memory it spans
};

// Whether two views' memory overlaps.
static bool overlap(const View& x, const View& y) {
    const char *a = static_cast<const char*>(x.data), *b = static_cast<const char*>(y.data);
    return x.bytes > 0 && y.bytes > 0 && a < b + y.bytes && b < a + x.bytes;
}

static bool read_plain(PyObject* obj, int ndim, View& v) {
    if (Py_TYPE(obj) != g_call.tensor) return false;
    dl::Tensor t;
    if (g_dlpack->dltensor_from_py_object_no_sync(obj, &t) != 0) {  // e.g. requires grad, meta
        PyErr_Clear();
        return false;
    }
    if (t.device.device_type != 1 || t.ndim != ndim || t.dtype.lanes != 1) return false;
    int64_t expect = 1;  // torch's is_contiguous: the strides of the dims of size > 1
    for (int d = ndim - 1; d >= 0; --d) {
        if (t.shape[d] < 1 || (t.shape[d] != 1 && t.strides && t.strides[d] != expect)) return false;
        expect *= t.shape[d];
        v.shape[d] = t.shape[d];
    }
    const uint8_t c = t.dtype.code, b = t.dtype.bits;
    v.kind = c == 0 && b == 64 ? K_I64 : c == 0 && b == 32 ? K_I32 : c == 2 && b == 32 ? K_F32
             : c == 4 && b == 16 ? K_BF16 : c == 2 && b == 16 ? K_F16 : c == 2 && b == 64 ? K_F64 : K_OTHER;
    v.data = static_cast<const char*>(t.data) + t.byte_offset;
    v.bytes = expect * (b / 8);
    return true;
}

static int float_code(Kind k) {
    return k == K_F32 ? ck::DT_F32 : k == K_BF16 ? ck::DT_BF16 : k == K_F16 ? ck::DT_F16 : ck::DT_F64;
}

// An owned reference (nullptr: none, or a failed call whose error was cleared).
struct Ref {
    PyObject* p;
    explicit Ref(PyObject* q) : p(q) {
        if (!p) PyErr_Clear();
    }
    Ref(const Ref&) = delete;
    Ref& operator=(const Ref&) = delete;
    ~Ref() { Py_XDECREF(p); }
    PyObject* release() {
        PyObject* q = p;
        p = nullptr;
        return q;
    }
};

static Ref attr(PyObject* o, PyObject* name) { return Ref(PyObject_GetAttr(o, name)); }

// An exact int (not bool) that fits int64.
static bool exact_int(PyObject* o, int64_t& v) {
    if (!PyLong_CheckExact(o)) return false;
    int overflow = 0;
    v = PyLong_AsLongLongAndOverflow(o, &overflow);
    return overflow == 0 && !(v == -1 && PyErr_Occurred());
}

static bool str_is(PyObject* o, PyObject* interned) {
    return o == interned || PyUnicode_Compare(o, interned) == 0;  // exact str objects only (checked before)
}

// The tree's and the method's parts the walk reads, from the objects prepared by the general path (a ck.Tree's
// whole_call; a method packed by an earlier call, without a reference-only option): false otherwise.
struct CallPlan {
    int64_t tree_batch, tree_n, L;
    uintptr_t parents, iparams, fparams;
    int method;
    PyObject* packed;     // borrowed from the method's __dict__ (the caller holds a reference while the GIL is out)
    PyObject* neighbors;  // borrowed from the packed method
    double default_eps;   // the method's budget when the call passes none (HUGE_VAL: unbounded)
};

static bool read_plan(PyObject* method, PyObject* wc, PyObject* packed, CallPlan& c) {
    if (!PyTuple_CheckExact(wc) || PyTuple_GET_SIZE(wc) != 4) return false;
    int64_t ptr;
    if (!exact_int(PyTuple_GET_ITEM(wc, 0), c.tree_batch) || !exact_int(PyTuple_GET_ITEM(wc, 1), c.tree_n) ||
        !exact_int(PyTuple_GET_ITEM(wc, 2), c.L) || !exact_int(PyTuple_GET_ITEM(wc, 3), ptr))
        return false;
    c.parents = static_cast<uintptr_t>(ptr);
    Ref name = attr(method, g_call.name);
    if (!name.p || !PyUnicode_CheckExact(name.p) || PyUnicode_GET_LENGTH(name.p) == 0) return false;
    if (Py_TYPE(packed) != g_call.packed) return false;
    c.packed = packed;
    Ref host = attr(packed, g_call.host), emb = attr(packed, g_call.embeddings), code = attr(packed, g_call.code);
    if (!host.p || !emb.p || !code.p || emb.p != Py_None) return false;
    Ref ok = attr(host.p, g_call.whole_call), ip = attr(host.p, g_call.ints_ptr), fp = attr(host.p, g_call.floats_ptr);
    int64_t m, ipv, fpv;
    if (ok.p != Py_True || !ip.p || !fp.p || !exact_int(code.p, m) || !exact_int(ip.p, ipv) || !exact_int(fp.p, fpv))
        return false;
    c.method = static_cast<int>(m);
    c.iparams = static_cast<uintptr_t>(ipv);
    c.fparams = static_cast<uintptr_t>(fpv);
    Ref nb = attr(packed, g_call.neighbors);
    if (!nb.p) return false;
    c.neighbors = nb.p;  // the packed method holds it
    Ref d = attr(method, g_call.default_eps);  // None: unbounded
    if (!d.p) return false;
    c.default_eps = d.p == Py_None ? HUGE_VAL : PyFloat_AsDouble(d.p);
    if (c.default_eps == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return false;
    }
    return true;
}

// The plans of the last few (tree, method) pairs. A decode loop passes the same prepared tree and method objects
// every step, and a step calls with cold caches, where each of read_plan's dozen attribute lookups (one of them a
// Python property) costs cache misses. An entry is keyed by weak references to the two objects (a dead object's
// never matches, and its death empties the entry) and is used only while the tree's whole_call and the method's
// __dict__["packed"] are still the objects it was read from (it holds them), so it is what read_plan would read
// again: those are immutable, and so are the method's name and default_eps (methods are frozen dataclasses).
struct PlanEntry {
    PyObject *tree = nullptr, *method = nullptr;      // weak references (callback: forget_plans)
    PyObject *whole_call = nullptr, *packed = nullptr;  // held
    CallPlan plan{};
};
constexpr int PLAN_ENTRIES = 4;  // a loop comparing methods alternates a few of them
static PlanEntry g_plans[PLAN_ENTRIES];
static int g_plan_next = 0;  // the entry the next new pair replaces (round robin)
static PyObject* g_forget = nullptr;  // forget_plans as a Python callable (the weak references' callback)

// Whether weak reference ref refers to obj (false once its referent died).
static bool refers_to(PyObject* ref, PyObject* obj) {
#if PY_VERSION_HEX >= 0x030D0000
    PyObject* got = nullptr;
    if (PyWeakref_GetRef(ref, &got) < 0) {
        PyErr_Clear();
        return false;
    }
    Py_XDECREF(got);  // (the caller holds obj: comparing the address after the decref is safe)
    return got == obj;
#else
    return PyWeakref_GetObject(ref) == obj;
#endif
}

// Empties e; the references go after e is empty (their deallocation may run Python code, which may call again).
static void clear_entry(PlanEntry& e) {
    PyObject* held[] = {e.tree, e.method, e.whole_call, e.packed};
    e = PlanEntry{};
    for (PyObject* o : held) Py_XDECREF(o);
}

// The weak references' callback: a tree or a method died; the entry keyed by it goes.
static PyObject* forget_plans(PyObject*, PyObject* ref) {
    for (PlanEntry& e : g_plans)
        if (e.tree == ref || e.method == ref) clear_entry(e);
    Py_RETURN_NONE;
}

static PyMethodDef k_forget_def = {"forget_plans", forget_plans, METH_O, nullptr};

// The tree's whole_call and the method's packed form (owned references), or false.
static bool plan_sources(PyObject* parents, PyObject* method, Ref& wc, Ref& packed) {
    wc.p = PyObject_GetAttr(parents, g_call.whole_call);  // (batch, num_nodes, L, host parents address) on the CPU
    if (!wc.p) {
        PyErr_Clear();
        return false;
    }
    Ref dict(PyObject_GenericGetDict(method, nullptr));
    if (!dict.p || !PyDict_Check(dict.p)) return false;
    packed.p = PyDict_GetItemWithError(dict.p, g_call.packed_name);  // (borrowed: a reference taken below)
    if (!packed.p) {
        PyErr_Clear();
        return false;
    }
    Py_INCREF(packed.p);
    return true;
}

static bool plan_call(PyObject* parents, PyObject* method, CallPlan& c) {
    if (Py_TYPE(parents) != g_call.tree) return false;
    Ref wc(nullptr), packed(nullptr);
    int slot = -1;  // the entry of this pair, else the next to replace
    for (int i = 0; i < PLAN_ENTRIES && slot < 0; ++i) {
        const PlanEntry& e = g_plans[i];
        if (!e.tree || !e.method || !refers_to(e.tree, parents) || !refers_to(e.method, method)) continue;
        if (!plan_sources(parents, method, wc, packed)) return false;
        if (e.whole_call == wc.p && e.packed == packed.p) {
            c = e.plan;
            return true;
        }
        slot = i;  // the pair's tree or method changed since: its entry is read again
    }
    if (PyObject_IsInstance(method, g_call.method) != 1) {
        PyErr_Clear();
        return false;
    }
    if (!wc.p && !plan_sources(parents, method, wc, packed)) return false;
    if (!read_plan(method, wc.p, packed.p, c)) return false;
    if (slot < 0) {
        slot = g_plan_next;
        g_plan_next = (g_plan_next + 1) % PLAN_ENTRIES;
    }
    PlanEntry fresh;
    fresh.tree = PyWeakref_NewRef(parents, g_forget);
    fresh.method = fresh.tree ? PyWeakref_NewRef(method, g_forget) : nullptr;
    if (!fresh.method) {  // (an object without weak references: no entry)
        PyErr_Clear();
        clear_entry(fresh);
        return true;
    }
    fresh.whole_call = wc.release();
    fresh.packed = packed.release();
    fresh.plan = c;
    std::swap(g_plans[slot], fresh);
    clear_entry(fresh);  // the entry replaced, once the new one is in place
    return true;
}

// The call's TVD budget: eps (a float >= 0), or the method's default when None; false otherwise.
static bool call_eps(PyObject* eps, const CallPlan& c, double& out) {
    if (eps == Py_None) {
        out = c.default_eps;
        return true;
    }
    if (!PyFloat_CheckExact(eps)) return false;
    out = PyFloat_AS_DOUBLE(eps);
    return out >= 0.0;
}

// The GIL released for the walk and taken back however the walk ends (an exception included).
struct GilReleased {
    PyThreadState* state = PyEval_SaveThread();
    GilReleased() = default;
    GilReleased(const GilReleased&) = delete;
    GilReleased& operator=(const GilReleased&) = delete;
    ~GilReleased() { PyEval_RestoreThread(state); }
};

// ck.verify(tokens, parents, target_logits, method, draft_logits, hidden, residual, eps, temperature, top_k,
// top_p, cfg_scale, seed, out, draft_sampling) -- positional, as api.verify passes them -- for the common case:
// the outputs (out, or fresh ones), or None with nothing read or written unless every argument is in the form
// the general path would pass on unchanged (cascade_kernels/ops/verify/cpu.py). A declined call raises
// nothing (the general path then runs and names the argument); an error of the callbacks (new outputs, the
// thread count) or of the walk (C++, e.g. out of memory) propagates.
static PyObject* verify_call_impl(PyObject* const* args) {
    PyObject *tokens = args[0], *parents = args[1], *logits = args[2], *method = args[3], *draft = args[4],
             *hidden = args[5], *residual = args[6], *eps = args[7], *temperature = args[8], *top_k = args[9],
             *top_p = args[10], *cfg_scale = args[11], *seed = args[12], *out = args[13], *sampling = args[14];
    constexpr int64_t LIMIT = (int64_t{1} << 31) - 1;
    if (!g_dlpack || draft != Py_None || cfg_scale != Py_None) Py_RETURN_NONE;
    if (!PyUnicode_CheckExact(residual) || !PyUnicode_CheckExact(sampling)) Py_RETURN_NONE;
    const bool transport = str_is(residual, g_call.transport);
    if (!transport && !str_is(residual, g_call.standard)) Py_RETURN_NONE;  // "peer": reference only
    if (PySequence_Contains(g_call.samplings, sampling) != 1) {  // (a tuple of str: no error to clear)
        Py_RETURN_NONE;
    }
    CallPlan c;
    double budget;
    if (!plan_call(parents, method, c) || !call_eps(eps, c, budget)) Py_RETURN_NONE;
    Py_INCREF(c.packed);  // held while the GIL is out: another thread could replace method.__dict__["packed"]
    Ref packed(c.packed);
    const bool cascade = c.method == ck::M_CASCADE;
    if (hidden != Py_None && !cascade) Py_RETURN_NONE;  // (CASCADE without hidden: read_plain declines)
    int64_t k, seed_int = 0;
    if (!PyFloat_CheckExact(temperature) || !PyFloat_CheckExact(top_p) || !exact_int(top_k, k)) Py_RETURN_NONE;
    const double T = PyFloat_AS_DOUBLE(temperature), p = PyFloat_AS_DOUBLE(top_p);
    if (!temperature_in_range(T) || k < 0 || !(p > 0.0 && p <= 1.0)) Py_RETURN_NONE;  // k <= V: below
    const bool int_seed = PyLong_CheckExact(seed);
    if (int_seed ? !exact_int(seed, seed_int) : Py_TYPE(seed) != g_call.tensor) Py_RETURN_NONE;
    if (out != Py_None && (Py_TYPE(out) != g_call.output || PyTuple_GET_SIZE(out) != 6)) Py_RETURN_NONE;

    View tk, lg, hd, sd, nb, a, n, nt, tv, st;
    if (!read_plain(tokens, 2, tk) || tk.kind != K_I64) Py_RETURN_NONE;
    const int64_t B = tk.shape[0], N = tk.shape[1];
    if (B * N >= LIMIT || c.tree_n != N || (c.tree_batch != 1 && c.tree_batch != B)) Py_RETURN_NONE;
    if (!read_plain(logits, 3, lg) || !(lg.kind == K_F32 || lg.kind == K_BF16 || lg.kind == K_F16)) Py_RETURN_NONE;
    const int64_t V = lg.shape[2];
    if (lg.shape[0] != B || lg.shape[1] != N || V >= LIMIT || k > V) Py_RETURN_NONE;
    if (cascade) {
        if (!read_plain(hidden, 3, hd) || hd.kind < K_F32 || hd.kind > K_F64) Py_RETURN_NONE;
        if (hd.shape[0] != B || hd.shape[1] != N) Py_RETURN_NONE;
    }
    if (!int_seed && (!read_plain(seed, 1, sd) || sd.kind != K_I64 || sd.shape[0] != B)) Py_RETURN_NONE;
    if (c.neighbors != Py_None &&
        (!read_plain(c.neighbors, 2, nb) || nb.kind != K_I64 || nb.shape[0] != V))
        Py_RETURN_NONE;
    PyObject* made = nullptr;  // (an error in the callbacks propagates: KeyboardInterrupt, MemoryError)
    if (out == Py_None &&
        !(made = PyObject_CallFunction(g_call.new_outputs, "LL", static_cast<long long>(B), static_cast<long long>(c.L))))
        return nullptr;
    Ref fresh(made);
    PyObject* o = out == Py_None ? fresh.p : out;
    if (Py_TYPE(o) != g_call.output || PyTuple_GET_SIZE(o) != 6) Py_RETURN_NONE;  // (the callback's result)
    if (!read_plain(PyTuple_GET_ITEM(o, 0), 1, a) || a.kind != K_I32 || a.shape[0] != B) Py_RETURN_NONE;
    if (!read_plain(PyTuple_GET_ITEM(o, 1), 2, n) || n.kind != K_I32 || n.shape[0] != B || n.shape[1] != c.L)
        Py_RETURN_NONE;
    if (!read_plain(PyTuple_GET_ITEM(o, 2), 1, nt) || nt.kind != K_I64 || nt.shape[0] != B) Py_RETURN_NONE;
    if (!read_plain(PyTuple_GET_ITEM(o, 3), 1, tv) || tv.kind != K_F32 || tv.shape[0] != B) Py_RETURN_NONE;
    if (!read_plain(PyTuple_GET_ITEM(o, 4), 1, st) || st.kind != K_I32 || st.shape[0] != B) Py_RETURN_NONE;
    const View* outs[] = {&a, &n, &nt, &tv, &st};
    const View* ins[] = {&tk, &lg, &hd, &sd, &nb};  // views not read stay empty (bytes 0)
    for (int i = 0; i < 5; ++i) {  // outputs sharing memory: the general path names them
        for (int j = i + 1; j < 5; ++j)
            if (overlap(*outs[i], *outs[j])) Py_RETURN_NONE;
        for (const View* v : ins)
            if (overlap(*outs[i], *v)) Py_RETURN_NONE;
    }
    int64_t threads = 1;
    if (B > 1) {
        PyObject* got = PyObject_CallNoArgs(g_call.num_threads);
        if (!got) return nullptr;
        Ref t(got);
        if (!exact_int(t.p, threads) || threads < 1) Py_RETURN_NONE;
    }
    thread_local std::vector<int64_t> int_seeds;
    if (int_seed) int_seeds.assign(static_cast<size_t>(B), seed_int);  // an int seed: every sequence's
    ck::VerifyParams P;
    P.B = B; P.N = N; P.V = V; P.L = c.L;
    P.tokens = static_cast<const int64_t*>(tk.data);
    P.parents = as_ptr<const int32_t>(c.parents);
    P.parents_stride = c.tree_batch == 1 ? 0 : N;
    P.target = lg.data;
    P.target_dtype = float_code(lg.kind);
    P.hidden = cascade ? hd.data : nullptr;
    P.hidden_dtype = cascade ? float_code(hd.kind) : 0;
    P.D = cascade ? hd.shape[2] : 0;
    P.method = c.method;
    P.iparams = as_ptr<const int64_t>(c.iparams);
    P.fparams = as_ptr<const double>(c.fparams);
    P.neighbors = c.neighbors == Py_None ? nullptr : static_cast<const int64_t*>(nb.data);
    P.nb_stride = c.neighbors == Py_None ? 0 : nb.shape[1];
    P.transport = transport; P.eps = budget; P.temperature = T;
    P.top_k = k; P.top_p = p;
    P.seeds = int_seed ? int_seeds.data() : static_cast<const int64_t*>(sd.data);
    P.accept_len = static_cast<int32_t*>(const_cast<void*>(a.data));
    P.accepted_nodes = static_cast<int32_t*>(const_cast<void*>(n.data));
    P.next_token = static_cast<int64_t*>(const_cast<void*>(nt.data));
    P.tvd = static_cast<float*>(const_cast<void*>(tv.data));
    P.status = static_cast<int32_t*>(const_cast<void*>(st.data));
    P.num_threads = static_cast<int>(std::min<int64_t>(threads, 1 << 16));
    {
        GilReleased nogil;
        ck::verify_cpu(P);
    }
    if (fresh.p) return fresh.release();
    PyObject* backend = PyTuple_GET_ITEM(out, 5);
    if (PyUnicode_CheckExact(backend) && str_is(backend, g_call.cpu)) {
        Py_INCREF(out);
        return out;
    }
    return PyObject_CallOneArg(g_call.as_cpu, out);
}

static PyObject* verify_call(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs != 15) {
        PyErr_SetString(PyExc_TypeError, "verify_call takes ck.verify's 15 arguments, positionally");
        return nullptr;
    }
    try {  // C++ errors become Python exceptions, as pybind11 makes them for the other entries
        return verify_call_impl(args);
    } catch (const std::bad_alloc&) {
        return PyErr_NoMemory();
    } catch (const std::exception& e) {
        PyErr_SetString(PyExc_RuntimeError, e.what());
        return nullptr;
    }
}

static PyMethodDef k_call_defs[] = {
    {"verify_call", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(verify_call)), METH_FASTCALL,
     "ck.verify's common case, its 15 arguments positionally (cpu.py): the outputs, or None when not in that "
     "form."},
    {nullptr, nullptr, 0, nullptr}};

PYBIND11_MODULE(_C, m) {
    m.doc() = "cascade_kernels C++ CPU backend (raw data pointers; see cascade_kernels/ops/verify/cpu.py)";
    m.def("verify", &verify_py, "Verify a batch of draft trees into caller-allocated outputs (docs/CONTRACT.md).");
    m.def("set_call_entry", &set_call_entry,
          "Register torch's DLPack C exchange API capsule and the types and callables verify_call recognises "
          "(cpu.py); False if the capsule is unusable.");
    if (PyModule_AddFunctions(m.ptr(), k_call_defs) != 0) throw py::error_already_set();
    if (!(g_forget = PyCFunction_New(&k_forget_def, nullptr))) throw py::error_already_set();
    m.def("uniform", [](int64_t seed, uint32_t stream, int64_t index) { return ck::uniform(seed, stream, index); },
          "Philox uniform(seed, stream, index), as cascade_kernels.philox.uniform.");
    m.def("isa", []() { return std::string(ck::kernels_isa()); }, "Instruction set of the row kernels in use.");
    m.def("running_sum", [](uintptr_t v, int64_t n) { return ck::running_sum(as_ptr<const float>(v), n); },
          "The float32 running sum of n floats at address v as the inverse CDF takes it (tests: it must equal "
          "a serial loop bit for bit).");
    m.def("chain_running_sums",
          [](uintptr_t w, int64_t n, const std::vector<float>& divs, const std::vector<int64_t>& zero) {
              return ck::chain_running_sums(as_ptr<const float>(w), n, divs, zero);
          },
          "The float32 running sums before each block of 128 and the total of the values "
          "(((w[i] / divs[0]) / divs[1]) ...), zero at the ids in zero (ascending), as the inverse CDF takes them "
          "(tests: they must equal a serial loop bit for bit).");
    m.def("kth_largest",
          [](uintptr_t v, int64_t n, int64_t k) { return ck::kth_largest(as_ptr<const float>(v), n, k); },
          "The k-th largest of n floats (no NaN) at address v, as the top-k select takes it (tests).");
    m.def("max_compact",
          [](uintptr_t c, uintptr_t u, int dtype, float s, float t, int64_t n) {
              const ck::MaxCompact mc = ck::max_compact(as_ptr<const void>(c), u ? as_ptr<const void>(u) : nullptr,
                                                        dtype, s, t, n);
              return py::make_tuple(py::make_tuple(mc.max, mc.has_nan, mc.vals, mc.idx),
                                    py::make_tuple(mc.plain_max, mc.plain_has_nan, mc.plain_vals, mc.plain_idx));
          },
          "((max, has_nan, values, ids) of the one-pass max and top-k compaction (T == 1) of the guided row "
          "(c, u: 0 without CFG, dtype code, scale s) at threshold t, (the same by row_max and row_compact_ge)) "
          "(tests: they must agree bit for bit).");
    m.def("dots",
          [](uintptr_t a, const std::vector<uintptr_t>& b, int64_t n) {
              std::vector<const float*> rows;
              for (uintptr_t p : b) rows.push_back(as_ptr<const float>(p));
              return ck::dots(as_ptr<const float>(a), rows, n);
          },
          "The float64 dot products of n floats at a with n floats at each address in b, in one call, as "
          "CASCADE's cosines take them (tests: each must not depend on how many are taken together).");
    m.def("exp_sums", [](uintptr_t v, int64_t n) {
              const ck::ExpSums e = ck::exp_sums(as_ptr<const float>(v), n);
              return py::make_tuple(e.fused_sum, e.sum, e.fused_wsum, e.wsum, e.same_weights);
          },
          "(float32 sum, float64 sum) of the weights exp(x - max) of n floats at v, with the float64 sum taken in "
          "the weights' pass and without: (fused, plain, fused float64, sum_f64 of the weights, same weights) "
          "(tests: they must agree bit for bit).");
    m.def("row_weights", [](uintptr_t v, int64_t n, uintptr_t out) {
              ck::row_weights(as_ptr<const float>(v), n, as_ptr<float>(out));
          },
          "The weights exp(x) of n floats at v into out, as the row kernels take them (tests: the vector "
          "and scalar exponentials must agree bit for bit).");
    register_continuous(m);
}
