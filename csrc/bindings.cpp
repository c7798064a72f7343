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

#include <cfloat>
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
// The whole-call entry (cascade_kernels/ops/verify/cpu.py:verify_call): the tensors arrive as Python
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
static PyTypeObject* g_tensor_type = nullptr;

// Registers torch's exchange API and the torch.Tensor type; false when it is not a usable DLPack 1.x table.
static bool set_exchange_api(py::object capsule, py::object tensor_type) {
    void* p = PyCapsule_GetPointer(capsule.ptr(), "dlpack_exchange_api");
    if (!p) {
        PyErr_Clear();
        return false;
    }
    const auto* api = static_cast<const dl::Api*>(p);
    if (api->header.version.major != 1 || !api->dltensor_from_py_object_no_sync || !PyType_Check(tensor_type.ptr()))
        return false;
    Py_INCREF(tensor_type.ptr());  // kept for the life of the process
    g_tensor_type = reinterpret_cast<PyTypeObject*>(tensor_type.ptr());
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

static bool read_plain(py::handle obj, int ndim, View& v) {
    if (Py_TYPE(obj.ptr()) != g_tensor_type) return false;
    dl::Tensor t;
    if (g_dlpack->dltensor_from_py_object_no_sync(obj.ptr(), &t) != 0) {  // e.g. requires grad, meta
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

// The common-case call: false (nothing read or written) unless every tensor is in the form the general
// path would pass on unchanged (see cpu.py:verify_call, which checked the Python-object arguments).
static bool verify_call_py(py::handle tokens, py::handle logits, py::handle hidden, py::handle seed, int64_t seed_int,
                           py::handle neighbors, py::handle o_len, py::handle o_nodes, py::handle o_next,
                           py::handle o_tvd, py::handle o_status, int64_t tree_batch, int64_t tree_n, int64_t L,
                           uintptr_t parents, int method, uintptr_t iparams, uintptr_t fparams, bool cascade,
                           bool transport, double eps, double temperature, int64_t top_k, double top_p,
                           int num_threads) {
    constexpr int64_t LIMIT = (int64_t{1} << 31) - 1;
    if (!g_dlpack || !temperature_in_range(temperature)) return false;
    View tk, lg, hd, sd, nb, a, n, nt, tv, st;
    if (!read_plain(tokens, 2, tk) || tk.kind != K_I64) return false;
    const int64_t B = tk.shape[0], N = tk.shape[1];
    if (B * N >= LIMIT || tree_n != N || (tree_batch != 1 && tree_batch != B)) return false;
    if (!read_plain(logits, 3, lg) || !(lg.kind == K_F32 || lg.kind == K_BF16 || lg.kind == K_F16)) return false;
    const int64_t V = lg.shape[2];
    if (lg.shape[0] != B || lg.shape[1] != N || V >= LIMIT || top_k > V) return false;
    if (cascade) {
        if (!read_plain(hidden, 3, hd) || hd.kind < K_F32 || hd.kind > K_F64) return false;
        if (hd.shape[0] != B || hd.shape[1] != N) return false;
    } else if (!hidden.is_none()) {
        return false;
    }
    if (!seed.is_none() && (!read_plain(seed, 1, sd) || sd.kind != K_I64 || sd.shape[0] != B)) return false;
    if (!neighbors.is_none() && (!read_plain(neighbors, 2, nb) || nb.kind != K_I64 || nb.shape[0] != V)) return false;
    if (!read_plain(o_len, 1, a) || a.kind != K_I32 || a.shape[0] != B) return false;
    if (!read_plain(o_nodes, 2, n) || n.kind != K_I32 || n.shape[0] != B || n.shape[1] != L) return false;
    if (!read_plain(o_next, 1, nt) || nt.kind != K_I64 || nt.shape[0] != B) return false;
    if (!read_plain(o_tvd, 1, tv) || tv.kind != K_F32 || tv.shape[0] != B) return false;
    if (!read_plain(o_status, 1, st) || st.kind != K_I32 || st.shape[0] != B) return false;
    const View* outs[] = {&a, &n, &nt, &tv, &st};
    const View* ins[] = {&tk, &lg, &hd, &sd, &nb};  // views not read stay empty (bytes 0)
    for (int i = 0; i < 5; ++i) {  // outputs sharing memory: the general path names them
        for (int j = i + 1; j < 5; ++j)
            if (overlap(*outs[i], *outs[j])) return false;
        for (const View* v : ins)
            if (overlap(*outs[i], *v)) return false;
    }
    thread_local std::vector<int64_t> int_seeds;
    if (seed.is_none()) int_seeds.assign(static_cast<size_t>(B), seed_int);  // an int seed: every sequence's
    ck::VerifyParams P;
    P.B = B; P.N = N; P.V = V; P.L = L;
    P.tokens = static_cast<const int64_t*>(tk.data);
    P.parents = as_ptr<const int32_t>(parents);
    P.parents_stride = tree_batch == 1 ? 0 : N;
    P.target = lg.data;
    P.target_dtype = float_code(lg.kind);
    P.hidden = cascade ? hd.data : nullptr;
    P.hidden_dtype = cascade ? float_code(hd.kind) : 0;
    P.D = cascade ? hd.shape[2] : 0;
    P.method = method;
    P.iparams = as_ptr<const int64_t>(iparams);
    P.fparams = as_ptr<const double>(fparams);
    P.neighbors = neighbors.is_none() ? nullptr : static_cast<const int64_t*>(nb.data);
    P.nb_stride = neighbors.is_none() ? 0 : nb.shape[1];
    P.transport = transport; P.eps = eps; P.temperature = temperature;
    P.top_k = top_k; P.top_p = top_p;
    P.seeds = seed.is_none() ? int_seeds.data() : static_cast<const int64_t*>(sd.data);
    P.accept_len = static_cast<int32_t*>(const_cast<void*>(a.data));
    P.accepted_nodes = static_cast<int32_t*>(const_cast<void*>(n.data));
    P.next_token = static_cast<int64_t*>(const_cast<void*>(nt.data));
    P.tvd = static_cast<float*>(const_cast<void*>(tv.data));
    P.status = static_cast<int32_t*>(const_cast<void*>(st.data));
    P.num_threads = B == 1 ? 1 : num_threads;
    py::gil_scoped_release release;
    ck::verify_cpu(P);
    return true;
}

PYBIND11_MODULE(_C, m) {
    m.doc() = "cascade_kernels C++ CPU backend (raw data pointers; see cascade_kernels/ops/verify/cpu.py)";
    m.def("verify", &verify_py, "Verify a batch of draft trees into caller-allocated outputs (docs/CONTRACT.md).");
    m.def("set_exchange_api", &set_exchange_api,
          "Register torch's DLPack C exchange API capsule and the torch.Tensor type for verify_call; False if "
          "unusable.");
    m.def("verify_call", &verify_call_py,
          "ck.verify's common case with the tensors as objects (cpu.py:verify_call); False when not in that form.");
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
