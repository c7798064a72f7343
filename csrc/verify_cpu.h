// The CPU backend's verification walk (SPEC §3-6, docs/SEMANTICS.md): one call for the whole batch.
#pragma once
#include <cstdint>

namespace ck {

enum MethodCode : int { M_EXACT = 0, M_LANTERN = 1, M_GSD = 2, M_CASCADE = 3, M_COOL = 4 };

struct VerifyParams {
    int64_t B = 0, N = 0, V = 0;
    const int64_t* tokens = nullptr;   // [B, N]
    const int32_t* parents = nullptr;  // [B, N]
    const void* target = nullptr;      // [B or 2B, N, V]
    int target_dtype = 0;
    bool cfg = false;
    double cfg_scale = 0.0;
    const void* draft = nullptr;  // [B, N, V] or nullptr (deterministic drafting / greedy)
    int draft_dtype = 0;
    const void* hidden = nullptr;  // [B, N, D] (CASCADE)
    int hidden_dtype = 0;
    int64_t D = 0;
    int method = M_EXACT;
    const int64_t* neighbors = nullptr;  // LANTERN [V, nb_stride]
    int64_t nb_stride = 0, n_neighbors = 0;
    double lantern_delta = 0.1, lantern_lam = -1.0;  // lam < 0: plain LANTERN
    int64_t gsd_G = 14;
    double gsd_dp = 0.15;
    double tau_pos = 0.85, tau_seq = 0.5;
    bool use_interchange = true, use_convergence = true;
    double cool_delta = 2.0, cool_nu = 0.7, cool_wmin = 1.0;
    bool transport = true;
    double eps = 0.0;
    double temperature = 1.0;
    int64_t top_k = 0;
    double top_p = 1.0;
    const int64_t* seeds = nullptr;  // [B]
    // outputs
    int32_t* accept_len = nullptr;      // [B]
    int32_t* accepted_nodes = nullptr;  // [B, N], pre-filled with -1
    int64_t* next_token = nullptr;      // [B]
    float* tvd = nullptr;               // [B]
    int32_t* status = nullptr;          // [B]
    int num_threads = 1;
};

// Runs the walk of every sequence; returns L = (deepest node's depth) + 1 over the batch.
int64_t verify_cpu(const VerifyParams& P);

const char* kernels_isa();

}  // namespace ck
