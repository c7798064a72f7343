// The CPU backend's verification walk (CONTRACT §3-6, docs/CONTRACT.md): one call for the whole batch.
#pragma once
#include <cstdint>
#include <vector>

#include "codes.h"

namespace ck {

struct VerifyParams {
    int64_t B = 0, N = 0, V = 0;
    const int64_t* tokens = nullptr;   // [B, N]
    const int32_t* parents = nullptr;  // [B, N], or [1, N] shared by the batch (parents_stride 0)
    int64_t parents_stride = 0;
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
    const int64_t* iparams = nullptr;    // [N_INT_PARAMS], slots IP_* (codes.h; methods.pack)
    const double* fparams = nullptr;     // [N_FLOAT_PARAMS], slots FP_*
    const int64_t* neighbors = nullptr;  // LANTERN [V, nb_stride]
    int64_t nb_stride = 0;
    bool transport = true;
    double eps = 0.0;
    double temperature = 1.0;
    int64_t top_k = 0;
    double top_p = 1.0;
    const int64_t* seeds = nullptr;  // [B]
    // outputs
    int32_t* accept_len = nullptr;      // [B]
    int32_t* accepted_nodes = nullptr;  // [B, L], written whole (-1 after the path)
    int64_t L = 1;                      // max depth of the tree + 1
    int64_t* next_token = nullptr;      // [B]
    float* tvd = nullptr;               // [B]
    int32_t* status = nullptr;          // [B]
    int num_threads = 1;
};

// Runs the walk of every sequence.
void verify_cpu(const VerifyParams& P);

const char* kernels_isa();

// Tests: Kernels::prefix_blocks' total of v[0..n) (the float32 running sum in index order).
float running_sum(const float* v, int64_t n);

// Tests: Kernels::chain_prefix of w[0..n) with the divisors divs and the zeroed ids zero (ascending): the
// running sums before each block, then the total (the inverse CDF's view of a lazily divided row).
std::vector<float> chain_running_sums(const float* w, int64_t n, const std::vector<float>& divs,
                                      const std::vector<int64_t>& zero);

// Tests: Kernels::kth_largest on a copy of v[0..n).
float kth_largest(const float* v, int64_t n, int64_t k);

// Tests: Kernels::row_max_compact_ge over the guided row (c, u: nullptr without CFG; T == 1) beside
// Kernels::row_max and Kernels::row_compact_ge on the same row: both must give the same bits.
struct MaxCompact {
    float max = 0.0f, plain_max = 0.0f;
    bool has_nan = false, plain_has_nan = false;
    std::vector<float> vals, plain_vals;
    std::vector<int32_t> idx, plain_idx;
};
MaxCompact max_compact(const void* c, const void* u, int dtype, float s, float t, int64_t n);

// Tests: Kernels::dots of a[0..n) with the rows b[j][0..n) (CASCADE's cosines of one node), in one call.
std::vector<double> dots(const float* a, const std::vector<const float*>& b, int64_t n);

// Tests: the weights of a float32 row by Kernels::row_exp_sum with and without its float64 sum, against
// Kernels::sum_f64 of the weights written.
struct ExpSums {
    float fused_sum = 0.0f, sum = 0.0f;
    double fused_wsum = 0.0, wsum = 0.0;
    bool same_weights = false;
};
ExpSums exp_sums(const float* row, int64_t n);

// Tests: the weights exp(x) of a float32 row (no shift) by Kernels::row_exp_sum into out[0..n): K_LANES-wide
// groups on the vector path, the rest (all of a row shorter than one group) on the scalar one.
void row_weights(const float* row, int64_t n, float* out);

}  // namespace ck
