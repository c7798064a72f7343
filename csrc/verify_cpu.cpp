// The verification walk of the CPU backend (SPEC §3-6 and docs/SEMANTICS.md), decision for decision
// the same as cascade_kernels/reference/verify.py.
//
// Per sequence (one OpenMP task each, schedule(dynamic)), only the rows the walk visits are read:
//   1. prep_row: guidance + temperature into a float32 scratch row, with the row max and NaN count;
//   2. top-k (optional): the k-th largest by std::nth_element on a copy, then exponentials only for
//      the kept entries; otherwise exp(x - max) over the row, summed in the same pass;
//   3. top-p (optional): the threshold from a progressive partial sort of the non-zero probabilities.
// A distribution is kept *lazily* as (w, d) with q(i) = w[i] / d, which equals the reference's
// element-wise division bit for bit; a rejection writes the next residual in one pass (zeroed /
// transported entries are handled as "patches" between vectorised segments) and returns its sum,
// which becomes the next divisor. Scalars follow the reference's float32/float64 conventions
// (np.float32 rounding of tvd, r, charges; float32 running sums in order for prefix sums).
#include "verify_cpu.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "kernels.h"
#include "philox.h"

namespace ck {

namespace {

constexpr float F_INF = std::numeric_limits<float>::infinity();

inline float f32(double x) { return static_cast<float>(x); }

struct Dist {  // q(i) = w[i] / d
    float* w;
    float d;
    float at(int64_t i) const { return w[i] / d; }
};

size_t dtype_size(int dt) { return dt == DT_F32 ? 4 : (dt == DT_F64 ? 8 : 2); }

const void* row_ptr(const void* base, int dt, int64_t row, int64_t V) {
    return static_cast<const char*>(base) + static_cast<size_t>(row) * static_cast<size_t>(V) * dtype_size(dt);
}

struct Work {
    int64_t V;
    std::unique_ptr<float[]> A, W, P, S;
    std::unique_ptr<int32_t[]> idx;
    std::vector<int32_t> kid_start, kid_list, depth, path;
    std::vector<int64_t> seen, absorbed, block, nb;
    std::vector<float> masses, norms;
    std::vector<char> norm_ok;
    std::vector<std::pair<int64_t, float>> patches;
    explicit Work(int64_t V_)
        : V(V_), A(new float[V_]), W(new float[V_]), P(new float[V_]), S(new float[V_]), idx(new int32_t[V_]) {}
};

struct Relaxation {
    double r = 0.0;
    double charge = 0.0;
    bool cool = false;
    double w = 1.0;
    // absorbed tokens are in Work::absorbed
};

class Walker {
   public:
    Walker(const VerifyParams& P, const Kernels* K, Work& wk) : P_(P), K_(K), wk_(wk), V_(P.V) {}

    void run(int64_t b);

   private:
    const VerifyParams& P_;
    const Kernels* K_;
    Work& wk_;
    int64_t V_;
    int64_t b_ = 0;
    const int64_t* tok_ = nullptr;
    const int32_t* par_ = nullptr;

    bool process_row(const void* c, const void* u, int dtype, float T, float* out_buf, Dist& out);
    int64_t nan_safe_argmax_target(int64_t node);
    int64_t argmax(const Dist& q);
    int64_t inverse_cdf(const Dist& q, float u);
    int64_t final_token(const Dist& q, bool greedy, float u) { return greedy ? argmax(q) : inverse_cdf(q, u); }
    Relaxation relax(const Dist& q, int64_t x, int32_t child, double tvd);
    int64_t prefix_within(const std::vector<float>& masses, double cap);
    float cosine(int32_t i, int32_t j);
    float norm(int32_t i);
    bool greedy_accepts(const Dist& q, int64_t x, const Relaxation& rel);
    float residual(const Dist& q, const Dist* p, int64_t x, const Relaxation& rel, bool sampled, float* dst);
    void collect_live(const std::vector<int32_t>& nodes, const Dist& q, int64_t x, std::vector<int64_t>& out);
};

// SPEC §2 steps 1-5 on one row; false when the row is not a distribution (docs/SEMANTICS.md).
bool Walker::process_row(const void* c, const void* u, int dtype, float T, float* A, Dist& out) {
    const RowStats st = K_->prep_row(c, u, dtype, static_cast<float>(P_.cfg_scale), T, A, V_);
    // Validity is judged on the whole row, before top-k masks anything (docs/SEMANTICS.md).
    if (st.n_nan > 0 || !std::isfinite(st.max)) return false;
    float S_total;
    if (P_.top_k > 0) {
        const int64_t kk = P_.top_k;
        float* S = wk_.S.get();
        float kth = st.max;
        if (kk > 1) {
            std::memcpy(S, A, sizeof(float) * static_cast<size_t>(V_));
            std::nth_element(S, S + (kk - 1), S + V_, std::greater<float>());
            kth = S[kk - 1];
        }
        int32_t* idx = wk_.idx.get();
        int64_t nk = 0;
        for (int64_t i = 0; i < V_; ++i) {
            const float v = A[i];
            if (v >= kth) {
                idx[nk] = static_cast<int32_t>(i);
                S[nk] = v;
                ++nk;
            }
        }
        S_total = K_->exp_sum(S, st.max, nk);
        std::memset(A, 0, sizeof(float) * static_cast<size_t>(V_));
        for (int64_t j = 0; j < nk; ++j) A[idx[j]] = S[j];
    } else {
        S_total = K_->exp_sum(A, st.max, V_);
    }
    out = Dist{A, S_total};
    if (P_.top_p < 1.0) {
        K_->div_sum(A, S_total, A, 0, V_);  // the softmax probabilities
        float* S = wk_.S.get();
        int64_t n = 0;
        for (int64_t i = 0; i < V_; ++i)
            if (A[i] > 0.0f) S[n++] = A[i];
        const float pf = static_cast<float>(P_.top_p);
        float run = 0.0f;
        int64_t found = -1, done = 0, chunk = 256;
        while (done < n && found < 0) {
            const int64_t upto = std::min(n, done + chunk);
            std::partial_sort(S + done, S + upto, S + n, std::greater<float>());
            for (int64_t j = done; j < upto; ++j) {
                run += S[j];
                if (!(run < pf)) {
                    found = j;
                    break;
                }
            }
            done = upto;
            chunk *= 2;
        }
        float t;
        if (found >= 0) t = S[found];
        else if (n < V_) t = 0.0f;  // srt[V - 1] is a zero
        else t = S[n - 1];          // the smallest probability
        const float kept = K_->keep_ge_sum(A, t, A, V_);
        out = Dist{A, kept};
    }
    return true;
}

// argmax of the guided target logits with NaN read as -inf and +-inf clamped to the finite range
// (torch.nan_to_num(x, nan=-inf)), lowest index on ties.
int64_t Walker::nan_safe_argmax_target(int64_t node) {
    const int64_t row = b_ * P_.N + node;
    const void* c = row_ptr(P_.target, P_.target_dtype, row, V_);
    const void* u = P_.cfg ? row_ptr(P_.target, P_.target_dtype, row + P_.B * P_.N, V_) : nullptr;
    const float s = static_cast<float>(P_.cfg_scale);
    const float fmax = std::numeric_limits<float>::max();
    float best = 0.0f;
    int64_t arg = -1;
    for (int64_t i = 0; i < V_; ++i) {
        float g = load_float(c, P_.target_dtype, i);
        if (u) {
            const float un = load_float(u, P_.target_dtype, i);
            g = un + s * (g - un);
        }
        float key = g != g ? -F_INF : (g > fmax ? fmax : (g < -fmax ? -fmax : g));
        if (arg < 0 || key > best) {
            best = key;
            arg = i;
        }
    }
    return arg < 0 ? 0 : arg;
}

int64_t Walker::argmax(const Dist& q) {
    const float m = K_->max_div(q.w, q.d, 0, V_);
    for (int64_t i = 0; i < V_; ++i)
        if (q.at(i) == m) return i;
    return 0;  // unreachable for a distribution
}

// SPEC §6: smallest i with w_0 + ... + w_i > u * sum(w), float32 running sums in index order;
// never an index whose weight is 0.
int64_t Walker::inverse_cdf(const Dist& q, float u) {
    float total = 0.0f;
    for (int64_t i = 0; i < V_; ++i) total += q.at(i);
    const float thr = u * total;
    float run = 0.0f;
    int64_t i = V_ - 1;
    for (int64_t j = 0; j < V_; ++j) {
        run += q.at(j);
        if (run > thr) {
            i = j;
            break;
        }
    }
    if (q.at(i) > 0.0f) return i;
    for (int64_t j = i + 1; j < V_; ++j)
        if (q.at(j) > 0.0f) return j;
    for (int64_t j = V_ - 1; j >= 0; --j)
        if (q.at(j) > 0.0f) return j;
    return std::min<int64_t>(std::max<int64_t>(i, 0), V_ - 1);  // no mass at all: never out of range
}

// Length of the longest prefix whose float32 running sum (in order) is <= float32(cap).
int64_t Walker::prefix_within(const std::vector<float>& masses, double cap) {
    const float c = f32(cap);
    float run = 0.0f;
    int64_t m = 0;
    for (float v : masses) {
        run += v;
        if (!(run <= c)) break;
        ++m;
    }
    return m;
}

float Walker::norm(int32_t i) {
    if (!wk_.norm_ok[i]) {
        const int64_t D = P_.D;
        const int64_t base = (b_ * P_.N + i) * D;
        double s = 0.0;
        for (int64_t k = 0; k < D; ++k) {
            const double v = load_float(P_.hidden, P_.hidden_dtype, base + k);
            s += v * v;
        }
        wk_.norms[i] = static_cast<float>(std::sqrt(s));
        wk_.norm_ok[i] = 1;
    }
    return wk_.norms[i];
}

// dot(a, b) / max(|a| |b|, 1e-12) in float32 (accumulated in double); NaN compares false later.
float Walker::cosine(int32_t i, int32_t j) {
    const int64_t D = P_.D;
    const int64_t bi = (b_ * P_.N + i) * D, bj = (b_ * P_.N + j) * D;
    double dot = 0.0;
    if (P_.hidden_dtype == DT_F32) {
        const float* h = static_cast<const float*>(P_.hidden);
        for (int64_t k = 0; k < D; ++k) dot += static_cast<double>(h[bi + k]) * h[bj + k];
    } else {
        for (int64_t k = 0; k < D; ++k)
            dot += static_cast<double>(load_float(P_.hidden, P_.hidden_dtype, bi + k)) *
                   load_float(P_.hidden, P_.hidden_dtype, bj + k);
    }
    float den = norm(i) * norm(j);
    den = den < 1e-12f ? 1e-12f : den;
    return static_cast<float>(dot) / den;
}

// Sorted unique tokens (in [0, V)) of ``nodes`` with q > 0, not x and not already absorbed.
void Walker::collect_live(const std::vector<int32_t>& nodes, const Dist& q, int64_t x, std::vector<int64_t>& out) {
    out.clear();
    for (int32_t n : nodes) {
        const int64_t t = tok_[n];
        if (t < 0 || t >= V_ || t == x || !(q.at(t) > 0.0f)) continue;
        if (std::find(wk_.absorbed.begin(), wk_.absorbed.end(), t) != wk_.absorbed.end()) continue;
        out.push_back(t);
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
}

// SPEC §4: the absorbed set (into wk_.absorbed), r(x) and the charge of candidate x at node child.
Relaxation Walker::relax(const Dist& q, int64_t x, int32_t child, double tvd) {
    Relaxation rel;
    const float qxf = q.at(x);
    const double qx = qxf;
    const double left = P_.eps - tvd;
    wk_.absorbed.clear();
    switch (P_.method) {
        case M_EXACT:
            rel.r = qx;
            return rel;
        case M_COOL: {
            const int d = wk_.depth[child];
            const double w = std::max(P_.fparams[FP_COOL_WMIN],
                                      P_.fparams[FP_COOL_DELTA] * std::exp(-P_.fparams[FP_COOL_NU] * (d - 1)));
            const double r = f32(std::min(std::min(1.0, w * qx), qx + left));
            rel.r = r;
            rel.charge = f32(r - qx);
            rel.cool = true;
            rel.w = w;
            return rel;
        }
        case M_LANTERN: {
            const int64_t* row = P_.neighbors + x * P_.nb_stride;
            wk_.nb.clear();
            wk_.masses.clear();
            for (int64_t k = 0; k < P_.iparams[IP_N_NEIGHBORS]; ++k) {
                const int64_t t = row[k];
                if (t < 0 || t >= V_) continue;
                wk_.nb.push_back(t);
                wk_.masses.push_back(q.at(t));
            }
            // LANTERN++'s cap (lam - 1) q(x) is 0 when q(x) = 0, also for lam = inf
            const double cap = !P_.iparams[IP_LANTERN_PP] ? P_.fparams[FP_LANTERN_DELTA]
                               : (qx > 0.0 ? P_.fparams[FP_LANTERN_LAM_M1] * qx : 0.0);
            const int64_t m = prefix_within(wk_.masses, std::min(cap, left));
            wk_.absorbed.assign(wk_.nb.begin(), wk_.nb.begin() + m);
            break;
        }
        case M_GSD: {
            const int64_t G = std::min<int64_t>(P_.iparams[IP_GSD_G], V_);  // never more than V tokens
            const float dpf = static_cast<float>(P_.fparams[FP_GSD_DP]);
            // the G nearest (distance, then id) live tokens within dp, kept sorted by insertion
            std::vector<std::pair<float, int64_t>> best;
            best.reserve(static_cast<size_t>(G) + 1);
            if (G > 0) {
                for (int64_t i = 0; i < V_; ++i) {
                    const float v = q.at(i);
                    if (!(v > 0.0f) || i == x) continue;
                    const float dist = std::fabs(v - qxf);
                    if (!(dist < dpf)) continue;
                    if (static_cast<int64_t>(best.size()) == G && !(dist < best.back().first)) continue;
                    auto pos = best.end();
                    while (pos != best.begin() && (pos - 1)->first > dist) --pos;
                    best.insert(pos, {dist, i});
                    if (static_cast<int64_t>(best.size()) > G) best.pop_back();
                }
            }
            wk_.masses.clear();
            for (auto& e : best) wk_.masses.push_back(q.at(e.second));
            const int64_t m = prefix_within(wk_.masses, left);
            for (int64_t k = 0; k < m; ++k) wk_.absorbed.push_back(best[k].second);
            break;
        }
        case M_CASCADE: {
            double charge = 0.0;
            const int32_t parent = par_[child];
            for (int blk = 0; blk < 2; ++blk) {
                std::vector<int32_t> nodes;
                if (blk == 0) {
                    if (!P_.iparams[IP_USE_INTERCHANGE]) continue;
                    const float tau = static_cast<float>(P_.fparams[FP_TAU_POS]);
                    for (int32_t k = wk_.kid_start[parent]; k < wk_.kid_start[parent + 1]; ++k) {
                        const int32_t s = wk_.kid_list[k];
                        if (s != child && cosine(child, s) >= tau) nodes.push_back(s);
                    }
                } else {
                    if (!P_.iparams[IP_USE_CONVERGENCE]) continue;
                    const float tau = static_cast<float>(P_.fparams[FP_TAU_SEQ]);
                    for (int32_t k = wk_.kid_start[child]; k < wk_.kid_start[child + 1]; ++k) {
                        const int32_t g = wk_.kid_list[k];
                        if (cosine(child, g) >= tau) nodes.push_back(g);
                    }
                }
                collect_live(nodes, q, x, wk_.block);
                float mass = 0.0f;
                for (int64_t t : wk_.block) mass += q.at(t);
                if (f32(tvd + charge + static_cast<double>(mass)) <= f32(P_.eps)) {
                    wk_.absorbed.insert(wk_.absorbed.end(), wk_.block.begin(), wk_.block.end());
                    charge = f32(charge + static_cast<double>(mass));
                }
            }
            rel.r = f32(qx + charge);
            rel.charge = charge;
            return rel;
        }
        default:
            break;
    }
    float mass = 0.0f;
    for (int64_t t : wk_.absorbed) mass += q.at(t);
    rel.r = f32(qx + static_cast<double>(mass));
    rel.charge = mass;
    return rel;
}

// SPEC §5: x wins the relaxed argmax (its mass plus what it absorbed; ties go to the candidate).
bool Walker::greedy_accepts(const Dist& q, int64_t x, const Relaxation& rel) {
    std::vector<int64_t> excl(wk_.absorbed);
    excl.push_back(x);
    std::sort(excl.begin(), excl.end());
    float best = 0.0f;  // the excluded entries count as zeros
    int64_t lo = 0;
    for (int64_t e : excl) {
        if (e > lo) best = std::max(best, K_->max_div(q.w, q.d, lo, e));
        lo = std::max(lo, e + 1);
    }
    if (lo < V_) best = std::max(best, K_->max_div(q.w, q.d, lo, V_));
    double best_other = best;
    if (rel.cool) {
        const double qx = q.at(x);
        best_other *= qx < 1.0 ? (1.0 - rel.r) / (1.0 - qx) : 0.0;
    }
    return rel.r >= best_other;
}

// SPEC §3 residual after rejecting x, written to dst (unnormalized); returns its float32 sum.
float Walker::residual(const Dist& q, const Dist* p, int64_t x, const Relaxation& rel, bool sampled, float* dst) {
    if (sampled && rel.cool) {
        return K_->cool_sum(q.w, q.d, p->w, p->d, static_cast<float>(rel.w), dst, 0, V_);
    }
    auto& patches = wk_.patches;
    patches.clear();
    if (!sampled) {
        patches.push_back({x, 0.0f});
        if (P_.transport)
            for (int64_t t : wk_.absorbed) patches.push_back({t, 0.0f});
    } else if (P_.transport) {
        patches.push_back({x, static_cast<float>(rel.r)});
        for (int64_t t : wk_.absorbed) patches.push_back({t, 0.0f});
    }
    std::sort(patches.begin(), patches.end(),
              [](const std::pair<int64_t, float>& a, const std::pair<int64_t, float>& b) { return a.first < b.first; });
    float total = 0.0f;
    int64_t lo = 0;
    auto segment = [&](int64_t a, int64_t e) {
        if (e <= a) return 0.0f;
        return sampled ? K_->sub_sum(q.w, q.d, p->w, p->d, dst, a, e) : K_->div_sum(q.w, q.d, dst, a, e);
    };
    for (const auto& pt : patches) {
        if (pt.first < lo) continue;  // duplicate (not expected)
        total += segment(lo, pt.first);
        float v = pt.second;
        if (sampled) {
            v = v - p->at(pt.first);
            v = v < 0.0f ? 0.0f : v;
        }
        dst[pt.first] = v;
        total += v;
        lo = pt.first + 1;
    }
    total += segment(lo, V_);
    return total;
}

void Walker::run(int64_t b) {
    b_ = b;
    const int64_t N = P_.N;
    tok_ = P_.tokens + b * N;
    par_ = P_.parents + b * P_.parents_stride;
    // children in increasing node index (CSR), depths
    auto& ks = wk_.kid_start;
    auto& kl = wk_.kid_list;
    auto& depth = wk_.depth;
    ks.assign(N + 1, 0);
    depth.assign(N, 0);
    for (int64_t i = 1; i < N; ++i) {
        const int32_t p = par_[i];
        if (p >= 0 && p < i) {
            ks[p + 1]++;
            depth[i] = depth[p] + 1;
        }
    }
    for (int64_t i = 0; i < N; ++i) ks[i + 1] += ks[i];
    kl.assign(std::max<int64_t>(ks[N], 1), 0);
    {
        std::vector<int32_t> fill(ks.begin(), ks.end() - 1);
        for (int64_t i = 1; i < N; ++i) {
            const int32_t p = par_[i];
            if (p >= 0 && p < i) kl[fill[p]++] = static_cast<int32_t>(i);
        }
    }
    if (P_.method == M_CASCADE) {
        wk_.norms.assign(N, 0.0f);
        wk_.norm_ok.assign(N, 0);
    }

    const int64_t seed = P_.seeds[b];
    float u_sample = uniform(seed, STREAM_SAMPLE, 0);
    u_sample = u_sample < 0x1p-32f ? 0x1p-32f : u_sample;
    const bool greedy = P_.temperature == 0.0;
    const bool sampled = P_.draft != nullptr && !greedy;
    const float T = greedy ? 1.0f : static_cast<float>(P_.temperature);

    std::vector<int32_t> path{0};
    int32_t u = 0, status = 0;
    double tvd = 0.0;
    int64_t next = 0;
    float* A = wk_.A.get();
    float* Wb = wk_.W.get();
    float* Pb = wk_.P.get();
    while (true) {
        const int64_t row = b * N + u;
        const void* c = row_ptr(P_.target, P_.target_dtype, row, V_);
        const void* un = P_.cfg ? row_ptr(P_.target, P_.target_dtype, row + P_.B * N, V_) : nullptr;
        Dist qu{A, 1.0f};
        if (!process_row(c, un, P_.target_dtype, T, A, qu)) {
            next = nan_safe_argmax_target(u);
            status |= STATUS_NONFINITE_TARGET;
            break;
        }
        bool any_child = false, bad_token = false;
        for (int32_t k = ks[u]; k < ks[u + 1]; ++k) {
            const int64_t t = tok_[kl[k]];
            any_child |= t >= 0;
            bad_token |= t < -1 || t >= V_;
        }
        if (bad_token) {
            status |= STATUS_BAD_TOKEN;
            next = final_token(qu, greedy, u_sample);
            break;
        }
        if (!any_child) {
            next = final_token(qu, greedy, u_sample);
            break;
        }
        Dist pd{Pb, 1.0f};
        if (sampled) {
            const void* dr = row_ptr(P_.draft, P_.draft_dtype, row, V_);
            if (!process_row(dr, nullptr, P_.draft_dtype, T, Pb, pd)) {
                status |= STATUS_NONFINITE_DRAFT;
                next = final_token(qu, greedy, u_sample);
                break;
            }
        }
        Dist q = qu;
        wk_.seen.clear();
        int32_t accepted = -1;
        bool empty = false;
        for (int32_t k = ks[u]; k < ks[u + 1]; ++k) {
            const int32_t ch = kl[k];
            const int64_t x = tok_[ch];
            if (x < 0) continue;
            if (!sampled) {
                if (std::find(wk_.seen.begin(), wk_.seen.end(), x) != wk_.seen.end()) continue;
                wk_.seen.push_back(x);
            }
            const Relaxation rel = relax(q, x, ch, tvd);
            tvd = f32(tvd + rel.charge);
            bool ok;
            const double U = uniform(seed, STREAM_ACCEPT, ch);
            if (greedy) {
                ok = greedy_accepts(q, x, rel);
            } else if (sampled) {
                const double px = pd.at(x);
                double ratio;
                if (px == 0.0) ratio = rel.r > 0 ? 1.0 : 0.0;
                else ratio = f32(rel.r / px);
                ok = U < std::min(1.0, ratio);
            } else {
                ok = U < rel.r;
            }
            if (ok) {
                accepted = ch;
                break;
            }
            const float total = residual(q, sampled ? &pd : nullptr, x, rel, sampled, Wb);
            if (!(total > 0.0f && std::isfinite(total))) {
                status |= STATUS_EMPTY_RESIDUAL;
                empty = true;
                break;
            }
            q = Dist{Wb, total};
        }
        if (accepted >= 0) {
            u = accepted;
            path.push_back(u);
            continue;
        }
        next = empty ? argmax(qu) : final_token(q, greedy, u_sample);
        break;
    }
    if (next < 0 || next >= V_) next = 0;  // never out of range (unreachable)
    P_.accept_len[b] = static_cast<int32_t>(path.size() - 1);
    int32_t* nodes = P_.accepted_nodes + b * P_.L;
    for (size_t i = 0; i < path.size() && static_cast<int64_t>(i) < P_.L; ++i) nodes[i] = path[i];
    P_.next_token[b] = next;
    P_.tvd[b] = static_cast<float>(tvd);
    P_.status[b] = status;
}

}  // namespace

const char* kernels_isa() { return select_kernels()->isa; }

void verify_cpu(const VerifyParams& P) {
    const Kernels* K = select_kernels();
    const int64_t B = P.B;
    int nt = std::max(1, P.num_threads);
    if (nt > B) nt = static_cast<int>(B);
#pragma omp parallel num_threads(nt)
    {
        Work wk(P.V);
        Walker walker(P, K, wk);
#pragma omp for schedule(dynamic)
        for (int64_t b = 0; b < B; ++b) walker.run(b);
    }
}

}  // namespace ck
