// pybind11 module cascade_kernels._C: the CPU backend's entry points.
//
// Interface choice: NO torch C++ headers (they make the build slow and tie it to one torch ABI).
// The Python wrapper (cascade_kernels/cpu.py) makes every input a contiguous CPU tensor and passes
// its address (tensor.data_ptr()) as an integer, plus the shapes and a dtype code
// (0 float32, 1 bfloat16, 2 float16, 3 float64); it also allocates the outputs and passes their
// addresses. So the tensors are read and written in place, zero-copy; the wrapper keeps them alive
// for the duration of the call. The GIL is released while the batch is verified (OpenMP threads).
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "continuous_cpu.h"
#include "philox.h"
#include "verify_cpu.h"

namespace py = pybind11;

template <class T>
static T* as_ptr(uintptr_t p) {
    return reinterpret_cast<T*>(p);
}

static int64_t verify_py(int64_t B, int64_t N, int64_t V, uintptr_t tokens, uintptr_t parents, uintptr_t target,
                         int target_dtype, bool cfg, double cfg_scale, uintptr_t draft, int draft_dtype,
                         uintptr_t hidden, int hidden_dtype, int64_t D, int method, uintptr_t neighbors,
                         int64_t nb_stride, int64_t n_neighbors, double lantern_delta, double lantern_lam,
                         int64_t gsd_G, double gsd_dp, double tau_pos, double tau_seq, bool use_interchange,
                         bool use_convergence, double cool_delta, double cool_nu, double cool_wmin, bool transport,
                         double eps, double temperature, int64_t top_k, double top_p, uintptr_t seeds,
                         uintptr_t accept_len, uintptr_t accepted_nodes, uintptr_t next_token, uintptr_t tvd,
                         uintptr_t status, int num_threads) {
    ck::VerifyParams P;
    P.B = B; P.N = N; P.V = V;
    P.tokens = as_ptr<const int64_t>(tokens);
    P.parents = as_ptr<const int32_t>(parents);
    P.target = as_ptr<const void>(target);
    P.target_dtype = target_dtype;
    P.cfg = cfg; P.cfg_scale = cfg_scale;
    P.draft = draft ? as_ptr<const void>(draft) : nullptr;
    P.draft_dtype = draft_dtype;
    P.hidden = hidden ? as_ptr<const void>(hidden) : nullptr;
    P.hidden_dtype = hidden_dtype; P.D = D;
    P.method = method;
    P.neighbors = neighbors ? as_ptr<const int64_t>(neighbors) : nullptr;
    P.nb_stride = nb_stride; P.n_neighbors = n_neighbors;
    P.lantern_delta = lantern_delta; P.lantern_lam = lantern_lam;
    P.gsd_G = gsd_G; P.gsd_dp = gsd_dp;
    P.tau_pos = tau_pos; P.tau_seq = tau_seq;
    P.use_interchange = use_interchange; P.use_convergence = use_convergence;
    P.cool_delta = cool_delta; P.cool_nu = cool_nu; P.cool_wmin = cool_wmin;
    P.transport = transport; P.eps = eps; P.temperature = temperature;
    P.top_k = top_k; P.top_p = top_p;
    P.seeds = as_ptr<const int64_t>(seeds);
    P.accept_len = as_ptr<int32_t>(accept_len);
    P.accepted_nodes = as_ptr<int32_t>(accepted_nodes);
    P.next_token = as_ptr<int64_t>(next_token);
    P.tvd = as_ptr<float>(tvd);
    P.status = as_ptr<int32_t>(status);
    P.num_threads = num_threads;
    if (P.method == ck::M_CASCADE && !P.hidden) throw std::invalid_argument("cascade needs hidden states");
    if (P.method == ck::M_LANTERN && !P.neighbors) throw std::invalid_argument("lantern needs its neighbour table");
    py::gil_scoped_release release;
    return ck::verify_cpu(P);
}

PYBIND11_MODULE(_C, m) {
    m.doc() = "cascade_kernels C++ CPU backend (raw data pointers; see cascade_kernels/cpu.py)";
    m.def("verify", &verify_py, "Verify a batch of draft trees (SPEC §3-6); returns L = max depth + 1.");
    m.def("uniform", [](int64_t seed, uint32_t stream, int64_t index) { return ck::uniform(seed, stream, index); },
          "Philox uniform(seed, stream, index), as cascade_kernels.philox.uniform.");
    m.def("isa", []() { return std::string(ck::kernels_isa()); }, "Instruction set of the row kernels in use.");
    register_continuous(m);
}
