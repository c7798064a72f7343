// pybind11 module cascade_kernels._C: the CPU backend's entry points.
//
// Interface choice: NO torch C++ headers (they make the build slow and tie it to one torch ABI).
// The Python wrapper (cascade_kernels/ops/verify/cpu.py) passes every tensor as its address
// (tensor.data_ptr()) with shapes and a dtype code (codes.h); the outputs are allocated by the caller,
// so tensors are read and written in place, zero-copy. The GIL is released while the batch is verified.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "continuous_cpu.h"
#include "philox.h"
#include "verify_cpu.h"

namespace py = pybind11;

template <class T>
static T* as_ptr(uintptr_t p) {
    return reinterpret_cast<T*>(p);
}

static void verify_py(int64_t B, int64_t N, int64_t V, int64_t L, uintptr_t tokens, uintptr_t parents,
                      int64_t parents_stride, uintptr_t target, int target_dtype, bool cfg, double cfg_scale,
                      uintptr_t draft, int draft_dtype, uintptr_t hidden, int hidden_dtype, int64_t D, int method,
                      uintptr_t iparams, uintptr_t fparams, uintptr_t neighbors, int64_t nb_stride, bool transport,
                      double eps, double temperature, int64_t top_k, double top_p, uintptr_t seeds,
                      uintptr_t accept_len, uintptr_t accepted_nodes, uintptr_t next_token, uintptr_t tvd,
                      uintptr_t status, int num_threads) {
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

PYBIND11_MODULE(_C, m) {
    m.doc() = "cascade_kernels C++ CPU backend (raw data pointers; see cascade_kernels/ops/verify/cpu.py)";
    m.def("verify", &verify_py, "Verify a batch of draft trees into caller-allocated outputs (docs/CONTRACT.md).");
    m.def("uniform", [](int64_t seed, uint32_t stream, int64_t index) { return ck::uniform(seed, stream, index); },
          "Philox uniform(seed, stream, index), as cascade_kernels.philox.uniform.");
    m.def("isa", []() { return std::string(ck::kernels_isa()); }, "Instruction set of the row kernels in use.");
    m.def("running_sum", [](uintptr_t v, int64_t n) { return ck::running_sum(as_ptr<const float>(v), n); },
          "The float32 running sum of n floats at address v as the inverse CDF takes it (tests: it must equal "
          "a serial loop bit for bit).");
    m.def("kth_largest",
          [](uintptr_t v, int64_t n, int64_t k) { return ck::kth_largest(as_ptr<const float>(v), n, k); },
          "The k-th largest of n floats (no NaN) at address v, as the top-k select takes it (tests).");
    m.def("exp_sums", [](uintptr_t v, int64_t n) {
              const ck::ExpSums e = ck::exp_sums(as_ptr<const float>(v), n);
              return py::make_tuple(e.fused_sum, e.sum, e.fused_wsum, e.wsum, e.same_weights);
          },
          "(float32 sum, float64 sum) of the weights exp(x - max) of n floats at v, with the float64 sum taken in "
          "the weights' pass and without: (fused, plain, fused float64, sum_f64 of the weights, same weights) "
          "(tests: they must agree bit for bit).");
    register_continuous(m);
}
