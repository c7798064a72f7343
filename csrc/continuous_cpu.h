// verify_continuous's CPU backend (docs/CONTINUOUS.md): exact speculative verification of chains of
// continuous tokens with diagonal Gaussian-mixture densities. Same draws and float32 operations, in
// the same order, as cascade_kernels/ops/verify_continuous/reference.py.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>

#include "codes.h"  // STREAM_CONT_* (indices: docs/CONTINUOUS.md), CONT_STATUS_*

namespace ck {

struct Mixtures {  // contiguous float32 [B, P, K], [B, P, K, D], [B, P, K, D]
    const float* logits = nullptr;
    const float* means = nullptr;
    const float* log_scales = nullptr;
    int64_t P = 0, K = 0;
};

struct ContinuousParams {
    int64_t B = 0, L = 0, D = 0, M = 0;
    float inv_t = 1.f;             // 1 / accept_temperature (float32), the acceptance test only
    const float* draft = nullptr;  // [B, L, D]
    Mixtures p, q;                 // p: P = L, q: P = L + 1
    const int64_t* seeds = nullptr;  // [B]
    int32_t* accept_len = nullptr;   // [B]
    float* next = nullptr;           // [B, D]
    int32_t* proposals = nullptr;    // [B]
    int32_t* status = nullptr;       // [B]
    int num_threads = 1;
};

void verify_continuous_cpu(const ContinuousParams& P);

}  // namespace ck

// Adds `verify_continuous` to the module (called from PYBIND11_MODULE in bindings.cpp).
void register_continuous(pybind11::module_& m);
