// verify_continuous's CPU backend; the contract is docs/CONTINUOUS.md, the executable definition
// cascade_kernels/ops/verify_continuous/reference.py (+ mixture.py). One OpenMP task per sequence.
#include "continuous_cpu.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "philox.h"

namespace py = pybind11;

namespace ck {
namespace {

constexpr float kHalfLog2Pi = 0.91893853320467274178f;
constexpr float kTwoPi = 6.2831855f;
constexpr float kUMin = 2.3283064365386963e-10f;  // 2**-32
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Mix {  // one mixture: [K], [K, D], [K, D]
    const float* lg;
    const float* mu;
    const float* ls;
    int64_t K;
};

Mix at(const Mixtures& g, int64_t b, int64_t i, int64_t D) {
    const int64_t r = b * g.P + i;
    return {g.logits + r * g.K, g.means + r * g.K * D, g.log_scales + r * g.K * D, g.K};
}

bool finite(const Mix& g, int64_t D) {
    for (int64_t k = 0; k < g.K; ++k)
        if (!std::isfinite(g.lg[k])) return false;
    for (int64_t e = 0; e < g.K * D; ++e)
        if (!std::isfinite(g.mu[e]) || !std::isfinite(g.ls[e])) return false;
    return true;
}

float max_of(const float* v, int64_t n) {
    float m = v[0];
    for (int64_t k = 1; k < n; ++k) m = std::max(m, v[k]);
    return m;
}

// A mixture's x-independent terms, computed once per (sequence, position) and reused by every
// evaluation there (the residual sampler evaluates p and q at each proposal): exp(-ls) and
// log_softmax(lg). The values, hence the results, are those computed inline by the reference.
struct Prepared {
    std::vector<float> inv_scale;  // [K, D]
    std::vector<float> log_w;      // [K]
    std::vector<float> t;          // [K] scratch
    void prepare(const Mix& g, int64_t D) {
        inv_scale.resize(g.K * D);
        log_w.resize(g.K);
        t.resize(g.K);
        const float m = max_of(g.lg, g.K);
        float se = 0.f;
        for (int64_t k = 0; k < g.K; ++k) se += std::exp(g.lg[k] - m);
        const float lse = std::log(se);
        for (int64_t k = 0; k < g.K; ++k) log_w[k] = g.lg[k] - m - lse;
        for (int64_t e = 0; e < g.K * D; ++e) inv_scale[e] = std::exp(-g.ls[e]);
    }
};

// log sum_k softmax(lg)_k N(x; mu_k, exp(ls_k)^2) as mixture.mixture_log_prob; `pre` = prepare(g);
// inv_t: the acceptance test's 1 / accept_temperature (1 elsewhere: an exact product).
float log_prob(const Mix& g, int64_t D, const float* x, Prepared& pre, float inv_t = 1.f) {
    float* t = pre.t.data();
    for (int64_t k = 0; k < g.K; ++k) {
        float c = 0.f;
        for (int64_t d = 0; d < D; ++d) {
            const float z = (x[d] - g.mu[k * D + d]) * pre.inv_scale[k * D + d] * inv_t;
            c += -0.5f * z * z - g.ls[k * D + d];
        }
        t[k] = pre.log_w[k] + (c - static_cast<float>(D) * kHalfLog2Pi);
    }
    const float mt = max_of(t, g.K);
    if (mt == kNegInf) return kNegInf;
    float s = 0.f;
    for (int64_t k = 0; k < g.K; ++k) s += std::exp(t[k] - mt);
    return mt + std::log(s);
}

// Inverse CDF in index order (mixture.choose_component): #{k : c_k <= u S} clamped to K - 1.
int64_t choose_component(const Mix& g, float u) {
    const float m = max_of(g.lg, g.K);
    float S = 0.f;
    for (int64_t k = 0; k < g.K; ++k) S += std::exp(g.lg[k] - m);
    const float target = u * S;
    float c = 0.f;
    int64_t n = 0;
    for (int64_t k = 0; k < g.K; ++k) {
        c += std::exp(g.lg[k] - m);
        n += (c <= target);
    }
    return std::min(n, g.K - 1);
}

// Proposal number n from q into y (mixture.draw_uniforms + reference.py's y); returns the residual u.
float propose(const Mix& q, int64_t D, int64_t seed, int64_t n, float* y) {
    const int64_t k = choose_component(q, uniform(seed, STREAM_CONT_COMPONENT, n));
    for (int64_t d = 0; d < D; ++d) {
        const int64_t base = (n * D + d) * 2;
        const float u1 = std::max(uniform(seed, STREAM_CONT_NORMAL, base), kUMin);
        const float u2 = uniform(seed, STREAM_CONT_NORMAL, base + 1);
        const float z = std::sqrt(-2.0f * std::log(u1)) * std::cos(kTwoPi * u2);
        y[d] = q.mu[k * D + d] + std::exp(q.ls[k * D + d]) * z;
    }
    return uniform(seed, STREAM_CONT_RESIDUAL, n);
}

void verify_one(const ContinuousParams& P, int64_t b, Prepared& pp, Prepared& pq, std::vector<float>& y,
                std::vector<float>& best) {
    const int64_t L = P.L, D = P.D, M = P.M;
    const int64_t seed = P.seeds[b];
    int32_t status = 0;
    // The walk: stop at the first position that is not finite or whose draft is rejected.
    int64_t s = 0;
    bool tgt_ok = true, drf_ok = true;
    for (; s < L; ++s) {
        const Mix q = at(P.q, b, s, D), p = at(P.p, b, s, D);
        const float* x = P.draft + (b * L + s) * D;
        tgt_ok = finite(q, D);
        drf_ok = finite(p, D) && std::all_of(x, x + D, [](float v) { return std::isfinite(v); });
        if (!tgt_ok || !drf_ok) break;
        pq.prepare(q, D);  // still prepared for the residual sampler if this draft is rejected
        pp.prepare(p, D);
        const float ratio = log_prob(q, D, x, pq, P.inv_t) - log_prob(p, D, x, pp, P.inv_t);
        const float u = uniform(seed, STREAM_CONT_ACCEPT, s);
        if (!(ratio >= 0.f || u < std::exp(ratio))) break;  // NaN ratio: rejected
    }
    if (s == L) {  // every draft accepted: the bonus position
        tgt_ok = finite(at(P.q, b, L, D), D);
        drf_ok = true;
    }
    if (!tgt_ok || !drf_ok) status |= CONT_STATUS_NONFINITE;
    // The token after the accepted drafts: residual sampler, or the first draw from q (bonus / broken draft).
    float* out = P.next + b * D;
    std::fill(out, out + D, 0.f);
    int32_t proposals = 0;
    if (tgt_ok) {
        const bool direct = !drf_ok || s == L;
        const Mix q = at(P.q, b, s, D), p = at(P.p, b, std::min(s, L - 1), D);
        float best_r = -1.f;
        bool done = false;
        for (int64_t j = 0; j < M && !done; ++j) {
            const float ur = propose(q, D, seed, s * M + j, y.data());
            proposals = static_cast<int32_t>(j + 1);
            if (direct) {
                std::copy(y.begin(), y.end(), out);
                done = true;
                break;
            }
            const float d = log_prob(p, D, y.data(), pp) - log_prob(q, D, y.data(), pq);
            const float r = d < 0.f ? 1.f - std::exp(d) : 0.f;
            if (r > best_r) {
                best_r = r;
                std::copy(y.begin(), y.end(), best.begin());
            }
            if (d < 0.f && ur < r) {
                std::copy(y.begin(), y.end(), out);
                done = true;
            }
        }
        if (!done) {  // exhausted: the proposal with the largest residual ratio (the first on ties)
            std::copy(best.begin(), best.end(), out);
            status |= CONT_STATUS_PROPOSALS_EXHAUSTED;
        }
    }
    if (!std::all_of(out, out + D, [](float v) { return std::isfinite(v); })) {
        std::fill(out, out + D, 0.f);
        status |= CONT_STATUS_NONFINITE;
    }
    P.accept_len[b] = static_cast<int32_t>(s);
    P.proposals[b] = proposals;
    P.status[b] = status;
}

}  // namespace

void verify_continuous_cpu(const ContinuousParams& P) {
    const int nt = std::max(1, std::min<int>(P.num_threads, static_cast<int>(P.B)));
#pragma omp parallel num_threads(nt)
    {
        Prepared pp, pq;
        std::vector<float> y(P.D), best(P.D);
#pragma omp for schedule(dynamic)
        for (int64_t b = 0; b < P.B; ++b) verify_one(P, b, pp, pq, y, best);
    }
}

}  // namespace ck

template <class T>
static T* ptr(uintptr_t p) {
    return reinterpret_cast<T*>(p);
}

void register_continuous(py::module_& m) {
    m.def(
        "verify_continuous",
        [](int64_t B, int64_t L, int64_t D, int64_t M, uintptr_t draft, int64_t Kp, uintptr_t p_logits,
           uintptr_t p_means, uintptr_t p_log_scales, int64_t Kq, uintptr_t q_logits, uintptr_t q_means,
           uintptr_t q_log_scales, uintptr_t seeds, uintptr_t accept_len, uintptr_t next, uintptr_t proposals,
           uintptr_t status, int num_threads, float inv_t) {
            ck::ContinuousParams P;
            P.B = B; P.L = L; P.D = D; P.M = M;
            P.inv_t = inv_t;
            P.draft = ptr<const float>(draft);
            P.p = {ptr<const float>(p_logits), ptr<const float>(p_means), ptr<const float>(p_log_scales), L, Kp};
            P.q = {ptr<const float>(q_logits), ptr<const float>(q_means), ptr<const float>(q_log_scales), L + 1, Kq};
            P.seeds = ptr<const int64_t>(seeds);
            P.accept_len = ptr<int32_t>(accept_len);
            P.next = ptr<float>(next);
            P.proposals = ptr<int32_t>(proposals);
            P.status = ptr<int32_t>(status);
            P.num_threads = num_threads;
            py::gil_scoped_release release;
            ck::verify_continuous_cpu(P);
        },
        "verify_continuous on contiguous float32 CPU buffers (docs/CONTINUOUS.md; see "
        "cascade_kernels/ops/verify_continuous/cpu.py).");
}
