// The verification walk of the CPU backend (CONTRACT §3-6 and docs/CONTRACT.md), decision for decision
// the same as cascade_kernels/ops/verify/reference.py.
//
// Per sequence (a small pool of std::threads that wait on condition variables, never spinning; one thread
// when the batch is too small to split), only the rows the walk visits are read, each in two passes:
//   1. row statistics: one read-only pass for the guided row's max and whether it holds a NaN (validity);
//      then one pass that writes the weights exp(x - max) into a scratch row and sums them (float32
//      lanes), or, with top-k, finds the k-th largest without sorting: a threshold from a strided sample,
//      one vectorised compaction of the entries above it straight from the logits, a radix select
//      (8 bits of the order-preserving key per pass, from the top of the candidates' key range) over
//      them, exponentials only for the <= k survivors (kept as a sparse list); no probability row is
//      written. At T == 1 the scaled logits are the guided ones, so top-k's compaction and the max share
//      one pass (row_max_compact_ge) when the sample pays (k > 1, V >= 4096, k not close to V, no NaN in
//      it) and 64 sampled logits show that the row's first child cannot be accepted early. When the first
//      child's acceptance U < q(x) cannot depend on anything but q(x) (Exact, or CASCADE with none of its
//      blocks; deterministic drafting, no top-p, no bad token) and a cheap upper bound of the weights' sum
//      (no exponentials: 2^t below its chord; with top-k, x surely among the survivors) already puts U
//      below q(x), the second pass is skipped and the walk moves on (Walker::accepts_without_weights): a
//      deep walk reads each accepted row with two light passes;
//   2. q(x) of each drafted child from those statistics;
//   3. top-p (optional): the threshold from a progressive partial sort of the non-zero probabilities
//      (of the <= k survivors when top-k is on); the kept row is written once.
// A distribution is kept *lazily* as (w, d) with q(i) = w[i] / d, which equals the reference's
// element-wise division bit for bit; w is the weight row or the sparse survivors. A deterministic
// rejection is pure bookkeeping: the zeroed tokens go to a small "removed" list and the residual's sum
// (the float64 sum of the weights, taken at the first rejection, minus the removed weights: exact to
// ~1e-12 relative) becomes one more divisor, q'(i) = (w[i] / d) / total, the same float operations as a
// materialised residual divided by its sum. Only the final token (inverse CDF or argmax: one pass over
// the weights, over the survivors alone with top-k), greedy acceptance, GSD and the sampled residual read
// a full row again; the sampled residual writes the next row in one pass (zeroed / transported entries
// are "patches" between vectorised segments). Scalars follow the reference's float32/float64 conventions
// (np.float32 rounding of tvd, r, charges; float32 running sums in index order for prefix sums and the
// inverse CDF, computed by blocks bit for bit).
#include "verify_cpu.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "kernels.h"
#include "philox.h"

namespace ck {

namespace {

constexpr float F_INF = std::numeric_limits<float>::infinity();
constexpr size_t MAX_REMOVED = 64;  // a longer removed list is folded into a materialised row
constexpr int MAX_CHAIN = 16;       // idem for the chain of divisors

inline float f32(double x) { return static_cast<float>(x); }

// q(i) = removed(i) ? 0 : (((w[i] / d) / div[0]) / div[1]) ..., with the base weights w in one of two forms:
//   DENSE:  w[i] in a float row (the weights written by the statistics pass, top-p's kept row, or a
//           materialised residual);
//   SPARSE: the top-k survivors, ascending ids sidx[0..n) with weights sw[0..n), zero elsewhere.
struct Dist {
    enum Kind { SPARSE, DENSE };
    Kind kind = DENSE;
    const float* sw = nullptr;
    const int32_t* sidx = nullptr;
    int64_t n = 0;
    float* w = nullptr;
    float d = 1.0f;
    double wsum = 0.0;             // float64 sum of w over the entries not removed (NaN: not taken yet)
    double scale = 1.0;            // d * div[0] * ... * div[n-1] in float64
    int ndiv = 0;
    float div[MAX_CHAIN] = {};
    std::vector<int64_t> removed;  // zeroed entries (only when ndiv > 0)
    Dist() = default;
    Dist(float* w_, float d_, double ws) : w(w_), d(d_), wsum(ws), scale(d_) {}
    static Dist sparse(const float* sw, const int32_t* sidx, int64_t n, float d, double ws) {
        Dist q(nullptr, d, ws);
        q.kind = SPARSE;
        q.sw = sw;
        q.sidx = sidx;
        q.n = n;
        return q;
    }
    bool lazy() const { return ndiv > 0; }
    bool is_removed(int64_t i) const {
        for (int64_t r : removed)
            if (r == i) return true;
        return false;
    }
    float base(int64_t i) const {
        if (kind == DENSE) return w[i];
        if (n == 0) return 0.0f;
        // a branch-free binary search: the drafted tokens' places among the survivors are random, so a search's
        // branches would mispredict about half the time
        const int32_t key = static_cast<int32_t>(i);
        const int32_t* lo = sidx;
        for (int64_t len = n; len > 1;) {
            const int64_t half = len / 2;
            lo = lo[half] < key ? lo + half : lo;
            len -= half;
        }
        lo += *lo < key ? 1 : 0;  // the first survivor id >= key, or the end
        return lo != sidx + n && *lo == key ? sw[lo - sidx] : 0.0f;
    }
    // divs[0] = d, then the chain's divisors j < upto but those equal to 1.0f (v / 1.0f == v; a rejection that
    // removed no mass, such as a drafted token outside top-k, often adds one); returns their count
    int divisors(float* divs, int upto) const {
        int n = 0;
        divs[n++] = d;
        for (int j = 0; j < upto; ++j)
            if (div[j] != 1.0f) divs[n++] = div[j];
        return n;
    }
    float chain(float v) const {
        v = v / d;
        for (int j = 0; j < ndiv; ++j) v = v / div[j];
        return v;
    }
    float at(int64_t i) const {
        if (ndiv == 0) return base(i) / d;
        return is_removed(i) ? 0.0f : chain(base(i));
    }
};

size_t dtype_size(int dt) { return dt == DT_F32 ? 4 : (dt == DT_F64 ? 8 : 2); }

const void* row_ptr(const void* base, int dt, int64_t row, int64_t V) {
    return static_cast<const char*>(base) + static_cast<size_t>(row) * static_cast<size_t>(V) * dtype_size(dt);
}

// Scratch of one thread, kept between calls (grown, never shrunk): no allocation or page faults per call.
// A: the target's weights (or top-p's kept row); W: a materialised residual; P: the drafter row; S: scratch
// (radix select, sorting, q values); R: block starts of running sums; C / CI and DC / DCI: the target's
// and the drafter's top-k survivors.
struct Work {
    int64_t cap;
    std::unique_ptr<float[]> A, W, P, S, R, C, DC;
    std::unique_ptr<int32_t[]> CI, DCI;
    std::vector<int32_t> kid_start, kid_list, depth, path, fill;
    std::vector<int64_t> seen, absorbed, block, nb, excl;
    std::vector<float> masses, norms, sample, cos_cache, cos_row, cos_fresh;
    std::vector<int32_t> cos_need, cos_at, cos_pos, cos_ids;
    std::vector<const float*> dot_rows;
    std::vector<double> dot_sums;
    std::vector<char> norm_ok;
    std::vector<std::pair<int64_t, float>> patches;
    std::vector<int64_t> patches_ids;
    std::vector<std::pair<float, int64_t>> best;
    std::vector<int32_t> nodes;
    explicit Work(int64_t V_)
        : cap(V_),
          A(new float[V_ + 16]),
          W(new float[V_ + 16]),
          P(new float[V_ + 16]),
          S(new float[V_ + 16]),
          R(new float[V_ + 16]),
          C(new float[V_ + 16]),
          DC(new float[V_ + 16]),
          CI(new int32_t[V_ + 16]),
          DCI(new int32_t[V_ + 16]) {}
};

Work& thread_work(int64_t V) {
    thread_local std::unique_ptr<Work> w;
    if (!w || w->cap < V) {
        w.reset();
        w.reset(new Work(V));
    }
    return *w;
}

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
    int32_t cos_parent_ = -1;  // the parent whose children's pairwise cosines are in wk_.cos_cache

    enum class Row { INVALID, READY, PROBE_ACCEPTED };
    Row process_row(const void* c, const void* u, int dtype, float T, float* dense, float* cand, int32_t* cidx,
                    Dist& out, int64_t probe = -1, double probe_u = 0.0, int32_t probe_parent = -1);
    bool accepts_without_weights(const RowSrc& r, int64_t x, double u, int32_t parent);
    int64_t sample_rank(int64_t k) const;
    int64_t draw_sample(const RowSrc& r, int64_t k);
    float sample_guess(int64_t rk);
    int64_t topk_survivors(const RowSrc& r, int64_t k, float* cand, int32_t* cidx, int64_t nc);
    void densify(Dist& q, float* buf);
    int64_t nan_safe_argmax_target(int64_t node);
    void materialize(Dist& q);
    const float* values(const Dist& q);
    int64_t argmax(const Dist& q);
    int64_t crossing(const float* w, int64_t n, const float* divs, int ndiv, const std::vector<int64_t>& zero,
                     float u);
    int64_t inverse_cdf(const Dist& q, float u);
    int64_t final_token(const Dist& q, bool greedy, float u) { return greedy ? argmax(q) : inverse_cdf(q, u); }
    Relaxation relax(Dist& q, int64_t x, int32_t child, double tvd);
    int64_t prefix_within(const std::vector<float>& masses, double cap);
    void cosines(int32_t i, const int32_t* js, int m, float* out);
    void sibling_cosines(int32_t parent, int32_t ci, const std::vector<int32_t>& pos, float* out);
    bool absorbable(int64_t t, const Dist& q, int64_t x, bool exact) const;
    float norm(int32_t i);
    bool greedy_accepts(Dist& q, int64_t x, const Relaxation& rel);
    float residual(const Dist& q, const Dist* p, int64_t x, const Relaxation& rel, bool sampled, float* dst);
    bool lazy_reject(Dist& q, int64_t x);
    void collect_live(const std::vector<int32_t>& nodes, const Dist& q, int64_t x, std::vector<int64_t>& out);
    bool cascade_block(int32_t child, int blk, std::vector<int32_t>& nodes, const Dist* q = nullptr, int64_t x = -1);
    bool plain_first_child(int32_t u);
    bool bad_child_token(int32_t u) const;
};

constexpr int64_t K_TOPK_SAMPLE = 1024;  // the strided sample's size (rows of at least 4096 entries)

// The rank rk of top-k's threshold guess in a strided sample of K_TOPK_SAMPLE scaled logits: a few standard
// deviations above the number of survivors expected there (so that at least k entries are >= the sample's rk-th
// largest with high probability); 0 when a sample does not pay (rows under 4096 entries, k close to V).
int64_t Walker::sample_rank(int64_t k) const {
    const int64_t ns = std::min<int64_t>(V_, K_TOPK_SAMPLE);
    const double expect = static_cast<double>(k) * ns / static_cast<double>(V_);
    const int64_t rk = static_cast<int64_t>(std::ceil(expect + 3.0 * std::sqrt(expect) + 8.0));
    return V_ < 4096 || rk >= ns ? 0 : rk;
}

// Draws that sample into wk_.sample; returns sample_rank(k), or 0 (nothing drawn or a NaN in the sample).
int64_t Walker::draw_sample(const RowSrc& r, int64_t k) {
    const int64_t rk = sample_rank(k);
    if (rk == 0) return 0;
    const int64_t ns = K_TOPK_SAMPLE;
    auto& smp = wk_.sample;
    smp.resize(static_cast<size_t>(ns));
    K_->row_sample(r, ns, V_ / ns, smp.data());
    for (float x : smp)
        if (x != x) return 0;
    return rk;
}

// The sample's rk-th largest: radix select, branch-free (a comparison sort's branches on random data mispredict
// about half the time, which a benchmark repeating one input hides: the predictor learns it).
float Walker::sample_guess(int64_t rk) {
    return K_->kth_largest(wk_.sample.data(), static_cast<int64_t>(wk_.sample.size()), rk);
}

// The top-k survivors (scaled logit >= the k-th largest, ties kept as the reference's `scaled >= kth`;
// 1 <= k <= V) into cand / cidx in index order; returns their count. nc: the count of candidates already in cand /
// cidx (the entries >= the sample's guess, compacted with the row's max by process_row), or -1: then they are
// compacted here, from a sample's guess. All entries are candidates when the guess is short (fewer than k). A
// radix select among the candidates (a copy), then the survivors filtered in place. The row is read here once
// when nc < 0, not at all otherwise (once more in either case when the guess is short: rare).
int64_t Walker::topk_survivors(const RowSrc& r, int64_t k, float* cand, int32_t* cidx, int64_t nc) {
    if (k == 1) return K_->row_compact_ge(r, r.shift, V_, cand, cidx);  // shift = the scaled row's max
    if (nc < 0) {
        const int64_t rk = draw_sample(r, k);
        if (rk > 0) nc = K_->row_compact_ge(r, sample_guess(rk), V_, cand, cidx);
    }
    if (nc < k) nc = K_->row_compact_ge(r, -F_INF, V_, cand, cidx);  // every entry
    float* tmp = wk_.S.get();
    std::memcpy(tmp, cand, sizeof(float) * static_cast<size_t>(nc));
    return K_->keep_pairs_ge(cand, cidx, nc, K_->kth_largest(tmp, nc, k));
}

// CONTRACT §2 steps 1-5 on one row; INVALID when the row is not a distribution (docs/CONTRACT.md).
// One read-only pass for the max and the NaN flag, then one more pass over the logits: without top-k it
// writes the weights exp(x - max) into `dense` and sums them (one exponential per entry, reused by the final
// token: storing them costs less than recomputing them); with top-k it compacts the candidates, and only
// the <= k survivors get exponentials (SPARSE, in cand / cidx). With top-k at T == 1 one pass does both the
// max and the compaction, from a sample's guess of the threshold (the sample needs no max), under
// draw_sample's conditions and when the first child cannot be accepted early. Top-p writes the kept
// probabilities into `dense`. probe / probe_u: the token and the acceptance uniform of the first child to try
// (deterministic drafting), or -1: when that child will be rejected unless a relaxation saves it (probe_u >= its weight
// exp(x - max), which bounds q(x) since the row's sum is >= 1), the float64 sum of the weights that the
// rejection needs is taken in the same pass (a guess: either way the results are the same). probe_parent: the
// node whose row this is, when probe is its first child: PROBE_ACCEPTED (nothing written) when that child is
// surely accepted (accepts_without_weights).
Walker::Row Walker::process_row(const void* c, const void* u, int dtype, float T, float* dense, float* cand,
                                int32_t* cidx, Dist& out, int64_t probe, double probe_u, int32_t probe_parent) {
    const float s = static_cast<float>(P_.cfg_scale);
    const int64_t k = P_.top_k > 0 ? std::min<int64_t>(P_.top_k, V_) : 0;
    const bool probe_first = probe_parent >= 0 && P_.top_p >= 1.0;
    RowStats st{};
    int64_t nk = -1;  // top-k: candidates compacted by the statistics pass, then the survivors (index order)
    if (k > 1 && T == 1.0f && sample_rank(k) > 0) {
        // T == 1: the scaled logits are the guided ones, so top-k's candidates (from a sample's guess) can be
        // compacted in the pass that finds the max. Not when the first child may be accepted without the weights
        // (its test over the whole row costs less than the sample and its select), unless 64 sampled logits
        // already put U above q(x): q(x) <= e^x / the sum of e^s over the sample, which the survivors' sum
        // exceeds (k >= 64; over the sample's largest alone otherwise)
        const RowSrc g{c, u, dtype, s, 1.0f, 0.0f, 0.0f};
        bool may_probe = false;
        if (probe_first) {
            float smp[64];
            K_->row_sample(g, 64, V_ / 64, smp);
            float m = -F_INF;
            for (float x : smp) m = x > m ? x : m;
            const double sum = k >= 64 ? K_->exp_sum(smp, m, 64) : 1.0;
            may_probe = probe_u * sum < std::exp(static_cast<double>(K_->row_scaled_at(g, probe) - m));
        }
        const int64_t rk = may_probe ? 0 : draw_sample(g, k);
        if (rk > 0) nk = K_->row_max_compact_ge(g, sample_guess(rk), V_, cand, cidx, &st);
    }
    if (nk < 0) st = K_->row_max(c, u, dtype, s, V_);
    // Validity is judged on the whole row, before top-k masks anything (docs/CONTRACT.md).
    if (st.has_nan || !std::isfinite(st.max)) return Row::INVALID;
    const RowSrc r{c, u, dtype, s, T, st.max, T == 1.0f ? st.max : 0.0f};
    if (nk < 0 && probe_first && accepts_without_weights(r, probe, probe_u, probe_parent))
        return Row::PROBE_ACCEPTED;
    float S_total;
    // the float64 sum of the weights only if a child is rejected (lazy_reject): a walk that accepts at once
    // skips it
    double wsum = std::numeric_limits<double>::quiet_NaN();
    if (P_.top_k > 0) {
        nk = topk_survivors(r, k, cand, cidx, nk);
        S_total = K_->exp_sum(cand, r.shift, nk);  // in place: the survivors' weights
        out = Dist::sparse(cand, cidx, nk, S_total, wsum);
    } else {
        const bool rejects = probe >= 0 && P_.top_p >= 1.0 &&
                             probe_u >= std::exp(static_cast<double>(K_->row_scaled_at(r, probe) - r.shift));
        S_total = K_->row_exp_sum(r, V_, dense, rejects ? &wsum : nullptr);
        out = Dist(dense, S_total, wsum);
    }
    if (P_.top_p < 1.0) {
        float* S = wk_.S.get();
        int64_t n = 0;
        if (P_.top_k > 0) {  // only the <= k survivors can be non-zero
            std::memset(dense, 0, sizeof(float) * static_cast<size_t>(V_));
            for (int64_t j = 0; j < nk; ++j) {
                const float v = cand[j] / S_total;
                dense[cidx[j]] = v;
                if (v > 0.0f) S[n++] = v;
            }
        } else {
            K_->div_sum(dense, S_total, dense, 0, V_);  // the softmax probabilities
            for (int64_t i = 0; i < V_; ++i)
                if (dense[i] > 0.0f) S[n++] = dense[i];
        }
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
        float kept;
        double ksum = 0.0;
        if (P_.top_k > 0 && t > 0.0f) {
            kept = 0.0f;
            for (int64_t j = 0; j < nk; ++j) {
                float& v = dense[cidx[j]];
                v = v >= t ? v : 0.0f;
                kept += v;
                ksum += v;
            }
        } else {
            kept = K_->keep_ge_sum(dense, t, dense, V_);
            ksum = K_->chain_div(dense, nullptr, 0, dense, 0, V_);  // float64 sum (copy in place)
        }
        out = Dist(dense, kept, ksum);
    }
    return Row::READY;
}

// Whether U < q(x) = w(x) / S (float32; S the sum of the weights, or with top-k of the survivors' weights) is
// certain without the weights: S is bounded above by row_sum_bound with a margin for the float32 sums (at most
// V / 8 + 64 additions per lane here and in the weights' pass, relative error gamma each way), its t product
// and k_exp's error (1e-4 covers both); float division is monotone, so w(x) / S_up <= q(x). With top-k, x
// survives when fewer than k scaled logits exceed its own (then the k-th largest is at most x's). About one
// cheap pass instead of the exponentials and stores of the weights (or top-k's select and compaction). x is
// parent's first child, checked for plain_first_child only once U < w(x) (the cosines it may need).
bool Walker::accepts_without_weights(const RowSrc& r, int64_t x, double u, int32_t parent) {
    const float w = K_->row_weight_at(r, x);
    if (!(u < w)) return false;  // q(x) <= w(x): the row's max weighs 1
    if (!plain_first_child(parent)) return false;
    const double gamma = (static_cast<double>(V_) / 8.0 + 64.0) * 0x1p-24;
    if (gamma > 1e-2) return false;  // (V above ~1.3M: the margin alone would not cover the sums)
    int64_t above = 0;
    const double sum = K_->row_sum_bound(r, V_, P_.top_k > 0 ? K_->row_scaled_at(r, x) : F_INF, &above);
    if (P_.top_k > 0 && above >= P_.top_k) return false;
    const double bound = sum * (1.0 + gamma) / (1.0 - gamma) * (1.0 + gamma) * (1.0 + 1e-4);
    float s_up = static_cast<float>(bound);
    if (static_cast<double>(s_up) < bound) s_up = std::nextafter(s_up, F_INF);
    return u < static_cast<double>(w / s_up);
}

// The base weights as a dense row in buf (one pass); the divisors and the removed list are kept.
void Walker::densify(Dist& q, float* buf) {
    if (q.kind == Dist::DENSE) return;
    std::memset(buf, 0, sizeof(float) * static_cast<size_t>(V_));
    for (int64_t j = 0; j < q.n; ++j) buf[q.sidx[j]] = q.sw[j];
    q.kind = Dist::DENSE;
    q.w = buf;
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

// Folds the lazy chain into a row: w <- q * div[last] (all divisors but the last applied, removed entries
// zeroed), d <- div[last]; the same values a materialised residual row would have held.
void Walker::materialize(Dist& q) {
    densify(q, wk_.A.get());
    if (!q.lazy()) return;
    float* dst = wk_.W.get();
    float divs[MAX_CHAIN + 1];
    double sum = K_->chain_div(q.w, divs, q.divisors(divs, q.ndiv - 1), dst, 0, V_);
    for (int64_t r : q.removed) {
        sum -= dst[r];
        dst[r] = 0.0f;
    }
    const float last = q.div[q.ndiv - 1];
    q = Dist(dst, last, sum);
}

// q(i) for the whole row, in wk_.S (one pass).
const float* Walker::values(const Dist& q) {
    float* S = wk_.S.get();
    float divs[MAX_CHAIN + 1];
    const int nd = q.divisors(divs, q.ndiv);
    if (q.kind == Dist::DENSE) {
        K_->chain_div(q.w, divs, nd, S, 0, V_);
    } else {
        float* v = wk_.R.get();  // the survivors' values (R: at least V entries)
        K_->chain_div(q.sw, divs, nd, v, 0, q.n);
        std::memset(S, 0, sizeof(float) * static_cast<size_t>(V_));
        for (int64_t j = 0; j < q.n; ++j) S[q.sidx[j]] = v[j];
    }
    for (int64_t r : q.removed) S[r] = 0.0f;
    return S;
}

int64_t Walker::argmax(const Dist& q) {
    const float* v = values(q);
    const float m = K_->max_div(v, 1.0f, 0, V_);
    for (int64_t i = 0; i < V_; ++i)
        if (v[i] == m) return i;
    return 0;  // unreachable for a distribution
}

// The smallest position i < n whose float32 running sum (index order) of the values (((w[j] / divs[0]) /
// divs[1]) ...), zero at the ascending positions zero, exceeds float32(u * their total); n - 1 when none does.
// The running sums by blocks, made on the fly (Kernels::chain_prefix; the values are never written), a binary
// search among the block starts (running sums never decrease), then the exact values of the one crossing block.
int64_t Walker::crossing(const float* w, int64_t n, const float* divs, int ndiv, const std::vector<int64_t>& zero,
                         float u) {
    float* starts = wk_.R.get();
    const float thr = u * K_->chain_prefix(w, divs, ndiv, zero.data(), static_cast<int64_t>(zero.size()), n, starts);
    const int64_t nb = (n + K_PREFIX_BLOCK - 1) / K_PREFIX_BLOCK;
    const int64_t b = (std::upper_bound(starts + 1, starts + nb, thr) - starts) - 1;  // the crossing block
    const int64_t lo = b * K_PREFIX_BLOCK, hi = std::min(n, lo + K_PREFIX_BLOCK);
    float* v = wk_.S.get();
    K_->chain_div(w, divs, ndiv, v, lo, hi);
    for (int64_t r : zero)
        if (r >= lo && r < hi) v[r] = 0.0f;
    float s = starts[b];
    for (int64_t j = lo; j < hi; ++j) {
        s += v[j];
        if (s > thr) return j;
    }
    return n - 1;
}

// CONTRACT §6: smallest i with q_0 + ... + q_i > u * sum(q), float32 running sums in index order (crossing);
// never an index whose q is 0 (the rare fallbacks read single values: q.at / q.chain, the same divisions).
// With top-k, over the survivors only: adding a zero leaves a float32 running sum unchanged, so the sums at the
// survivors, the total and the chosen index are those of the dense row.
int64_t Walker::inverse_cdf(const Dist& q, float u) {
    float divs[MAX_CHAIN + 1];
    const int nd = q.divisors(divs, q.ndiv);
    auto& zero = wk_.excl;  // the removed entries' positions (ids, or indices among the survivors)
    zero.clear();
    if (q.kind == Dist::SPARSE) {
        const int64_t n = q.n;
        for (int64_t r : q.removed) {
            const int32_t* e = std::lower_bound(q.sidx, q.sidx + n, static_cast<int32_t>(r));
            if (e != q.sidx + n && *e == r) zero.push_back(e - q.sidx);
        }
        std::sort(zero.begin(), zero.end());
        auto value = [&](int64_t j) {
            return std::binary_search(zero.begin(), zero.end(), j) ? 0.0f : q.chain(q.sw[j]);
        };
        for (int64_t j = n > 0 ? crossing(q.sw, n, divs, nd, zero, u) : 0; j < n; ++j)
            if (value(j) > 0.0f) return q.sidx[j];
        for (int64_t j = n - 1; j >= 0; --j)  // the last positive value
            if (value(j) > 0.0f) return q.sidx[j];
        return n > 0 ? q.sidx[0] : 0;  // no mass at all: never out of range
    }
    zero.assign(q.removed.begin(), q.removed.end());
    std::sort(zero.begin(), zero.end());
    const int64_t i = crossing(q.w, V_, divs, nd, zero, u);
    if (q.at(i) > 0.0f) return i;
    for (int64_t j = i + 1; j < V_; ++j)
        if (q.at(j) > 0.0f) return j;
    for (int64_t j = V_ - 1; j >= 0; --j)
        if (q.at(j) > 0.0f) return j;
    return i;  // no mass at all (i is in [0, V))
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
        if (P_.hidden_dtype == DT_F32) {
            const float* h = static_cast<const float*>(P_.hidden) + base;
            K_->dots(h, &h, 1, D, &s);
        } else {
            for (int64_t k = 0; k < D; ++k) {
                const double v = load_float(P_.hidden, P_.hidden_dtype, base + k);
                s += v * v;
            }
        }
        wk_.norms[i] = static_cast<float>(std::sqrt(s));
        wk_.norm_ok[i] = 1;
    }
    return wk_.norms[i];
}

// out[k] = cosine(i, js[k]) = dot / max(|i| |js[k]|, 1e-12) in float32 for k < m; the dots of float32 hidden
// states in one pass that reads node i's state once (Kernels::dots). NaN compares false later.
void Walker::cosines(int32_t i, const int32_t* js, int m, float* out) {
    const int64_t D = P_.D;
    const int64_t bi = (b_ * P_.N + i) * D;
    auto& dot = wk_.dot_sums;
    dot.assign(m, 0.0);
    if (P_.hidden_dtype == DT_F32) {
        const float* h = static_cast<const float*>(P_.hidden);
        auto& rows = wk_.dot_rows;
        rows.clear();
        for (int k = 0; k < m; ++k) rows.push_back(h + (b_ * P_.N + js[k]) * D);
        K_->dots(h + bi, rows.data(), m, D, dot.data());
    } else {
        for (int k = 0; k < m; ++k) {
            const int64_t bj = (b_ * P_.N + js[k]) * D;
            for (int64_t e = 0; e < D; ++e)
                dot[k] += static_cast<double>(load_float(P_.hidden, P_.hidden_dtype, bi + e)) *
                          load_float(P_.hidden, P_.hidden_dtype, bj + e);
        }
    }
    for (int k = 0; k < m; ++k) {
        float den = norm(i) * norm(js[k]);
        den = den < 1e-12f ? 1e-12f : den;
        out[k] = static_cast<float>(dot[k]) / den;
    }
}

// out[j] = the cosine of the parent's children at positions ci and pos[j] in its child list, each pair computed at
// most once per visit of the parent (the matrix is symmetric: a later child's row reuses the earlier rows'
// values); no cache for very wide nodes.
void Walker::sibling_cosines(int32_t parent, int32_t ci, const std::vector<int32_t>& pos, float* out) {
    const int32_t k0 = wk_.kid_start[parent];
    const int32_t n = wk_.kid_start[parent + 1] - k0;
    const int32_t* kids = wk_.kid_list.data() + k0;
    const bool cached = n <= 128;
    if (cached && cos_parent_ != parent) {
        cos_parent_ = parent;
        wk_.cos_cache.assign(static_cast<size_t>(n) * n, std::numeric_limits<float>::quiet_NaN());
    }
    auto slot = [&](int32_t k) -> float& {
        return wk_.cos_cache[static_cast<size_t>(std::min(ci, k)) * n + std::max(ci, k)];
    };
    auto& need = wk_.cos_need;
    auto& at = wk_.cos_at;  // where each of need's cosines goes in out
    need.clear();
    at.clear();
    for (size_t j = 0; j < pos.size(); ++j) {
        uint32_t bits = 0x7fc00000u;  // not yet computed (a computed NaN cosine is recomputed: harmless)
        if (cached) std::memcpy(&bits, &slot(pos[j]), 4);
        if (bits == 0x7fc00000u) {
            need.push_back(kids[pos[j]]);
            at.push_back(static_cast<int32_t>(j));
        } else {
            std::memcpy(&out[j], &bits, 4);
        }
    }
    auto& fresh = wk_.cos_fresh;
    fresh.resize(need.size());
    cosines(kids[ci], need.data(), static_cast<int>(need.size()), fresh.data());
    for (size_t f = 0; f < need.size(); ++f) {
        out[at[f]] = fresh[f];
        if (cached) slot(pos[at[f]]) = fresh[f];
    }
}

// Whether candidate x's relaxation may absorb token t: in [0, V), not x, not absorbed already and q(t) > 0, or
// with exact false, q's base weight of t is not zero and t not removed from it: cheaper (no division chain), and
// true wherever the exact test is.
bool Walker::absorbable(int64_t t, const Dist& q, int64_t x, bool exact) const {
    if (t < 0 || t >= V_ || t == x) return false;
    if (exact ? !(q.at(t) > 0.0f) : (q.base(t) == 0.0f || (q.lazy() && q.is_removed(t)))) return false;
    return std::find(wk_.absorbed.begin(), wk_.absorbed.end(), t) == wk_.absorbed.end();
}

// Sorted unique tokens of ``nodes`` that x's relaxation may absorb.
void Walker::collect_live(const std::vector<int32_t>& nodes, const Dist& q, int64_t x, std::vector<int64_t>& out) {
    out.clear();
    for (int32_t n : nodes)
        if (absorbable(tok_[n], q, x, true)) out.push_back(tok_[n]);
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
}

// CASCADE's block blk of candidate node child (0: siblings at cosine >= tau_pos, 1: its children at cosine >=
// tau_seq) into nodes; false when the method does not use that block. With q (relax, for candidate x) holding
// top-k's survivors, only the nodes whose token x may absorb are tested: relax absorbs the same tokens
// (collect_live drops the others), without the cosines of the drafted tokens outside the survivors. (Without
// top-k nearly every token has q > 0: the test would cost more than it saves.)
bool Walker::cascade_block(int32_t child, int blk, std::vector<int32_t>& nodes, const Dist* q, int64_t x) {
    nodes.clear();
    if (!P_.iparams[blk == 0 ? IP_USE_INTERCHANGE : IP_USE_CONVERGENCE]) return false;
    const int32_t owner = blk == 0 ? par_[child] : child;
    const int32_t k0 = wk_.kid_start[owner], n = wk_.kid_start[owner + 1] - k0;
    const int32_t* kids = wk_.kid_list.data() + k0;
    const bool filter = q && q->kind == Dist::SPARSE;
    auto& pos = wk_.cos_pos;  // positions in owner's child list of the nodes to test
    pos.clear();
    int32_t ci = -1;  // child's position among its siblings
    for (int32_t k = 0; k < n; ++k) {
        if (kids[k] == child) ci = k;
        else if (!filter || absorbable(tok_[kids[k]], *q, x, false)) pos.push_back(k);
    }
    if (blk == 0 && ci < 0) return true;  // (unreachable: child is in its parent's list)
    auto& cos = wk_.cos_row;
    cos.resize(pos.size());
    if (blk == 0) {
        sibling_cosines(owner, ci, pos, cos.data());
    } else {
        auto& ids = wk_.cos_ids;
        ids.clear();
        for (int32_t k : pos) ids.push_back(kids[k]);
        cosines(child, ids.data(), static_cast<int>(ids.size()), cos.data());
    }
    const float tau = static_cast<float>(P_.fparams[blk == 0 ? FP_TAU_POS : FP_TAU_SEQ]);
    for (size_t j = 0; j < pos.size(); ++j)
        if (cos[j] >= tau) nodes.push_back(kids[pos[j]]);
    return true;
}

// Whether node u's first child x (drafted deterministically) has r(x) = q(x) and no charge whatever the row:
// Exact, or CASCADE with both of its blocks empty; and no child of u carries a bad token (which needs the row).
// Then its acceptance can be decided without the row's weights (accepts_without_weights).
bool Walker::plain_first_child(int32_t u) {
    if (bad_child_token(u)) return false;
    if (P_.method == M_EXACT) return true;
    if (P_.method != M_CASCADE) return false;
    for (int blk = 0; blk < 2; ++blk)
        if (cascade_block(wk_.kid_list[wk_.kid_start[u]], blk, wk_.nodes) && !wk_.nodes.empty()) return false;
    return true;
}

// Whether a child of node u carries a token id outside [-1, V) (STATUS_BAD_TOKEN: the walk stops at u).
bool Walker::bad_child_token(int32_t u) const {
    for (int32_t k = wk_.kid_start[u]; k < wk_.kid_start[u + 1]; ++k) {
        const int64_t t = tok_[wk_.kid_list[k]];
        if (t < -1 || t >= V_) return true;
    }
    return false;
}

// CONTRACT §4: the absorbed set (into wk_.absorbed), r(x) and the charge of candidate x at node child.
Relaxation Walker::relax(Dist& q, int64_t x, int32_t child, double tvd) {
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
            // r < q(x) only where rounding left q(x) above 1 (the reference's rule: no negative charge under
            // "transport", the removed mass under "standard")
            rel.charge = r >= qx ? f32(r - qx) : (P_.transport ? 0.0 : f32(qx - r));
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
            materialize(q);  // a full-row scan: read the row as it stands
            const int64_t G = std::min<int64_t>(P_.iparams[IP_GSD_G], V_);  // never more than V tokens
            const float dpf = static_cast<float>(P_.fparams[FP_GSD_DP]);
            // the G nearest (distance, then id) live tokens within dp
            auto& best = wk_.best;
            best.clear();
            if (G > 0) {
                for (int64_t i = 0; i < V_; ++i) {
                    const float v = q.at(i);
                    if (!(v > 0.0f) || i == x) continue;
                    const float dist = std::fabs(v - qxf);
                    if (!(dist < dpf)) continue;
                    best.push_back({dist, i});
                }
                if (static_cast<int64_t>(best.size()) > G) {
                    std::partial_sort(best.begin(), best.begin() + G, best.end());  // (distance, id) order
                    best.resize(static_cast<size_t>(G));
                } else {
                    std::sort(best.begin(), best.end());
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
            auto& nodes = wk_.nodes;
            for (int blk = 0; blk < 2; ++blk) {
                if (!cascade_block(child, blk, nodes, &q, x)) continue;
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

// CONTRACT §5: x wins the relaxed argmax (its mass plus what it absorbed; ties go to the candidate).
// On a lazy q the max is taken over the weights w and mapped through the divisors afterwards: float
// division by a positive number is monotone, so this is the max of the q values themselves.
bool Walker::greedy_accepts(Dist& q, int64_t x, const Relaxation& rel) {
    densify(q, wk_.A.get());
    auto& excl = wk_.excl;
    excl.assign(wk_.absorbed.begin(), wk_.absorbed.end());
    excl.push_back(x);
    if (q.lazy()) excl.insert(excl.end(), q.removed.begin(), q.removed.end());
    std::sort(excl.begin(), excl.end());
    const float dd = q.lazy() ? 1.0f : q.d;
    float bw = -F_INF;
    int64_t lo = 0;
    for (int64_t e : excl) {
        if (e > lo) bw = std::max(bw, K_->max_div(q.w, dd, lo, e));
        lo = std::max(lo, e + 1);
    }
    if (lo < V_) bw = std::max(bw, K_->max_div(q.w, dd, lo, V_));
    float best = 0.0f;  // the excluded entries count as zeros
    if (bw > -F_INF) best = std::max(best, q.lazy() ? q.chain(bw) : bw);
    double best_other = best;
    if (rel.cool) {
        const double qx = q.at(x);
        best_other *= qx < 1.0 ? (1.0 - rel.r) / (1.0 - qx) : 0.0;
    }
    return rel.r >= best_other;
}

// Deterministic residual after rejecting x, as bookkeeping: x (and, with transport, the absorbed set)
// join the removed list and the residual's sum becomes one more divisor. The sum is
// (float64 sum of w - removed weights) / (d * divisors): the value of the materialised row's sum up to
// ~1e-12 relative. When little mass is left (cancellation), the list is long or the chain is full, the row
// is materialised and summed in float32 as before. Returns false when the residual is empty.
bool Walker::lazy_reject(Dist& q, int64_t x) {
    auto add = [&](int64_t t, double& removed_w) {
        if (t < 0 || t >= V_) return;
        if (q.lazy() && q.is_removed(t)) return;
        for (int64_t r : wk_.patches_ids)
            if (r == t) return;
        wk_.patches_ids.push_back(t);
        removed_w += q.base(t);
    };
    if (std::isnan(q.wsum))  // the weights as written (nothing removed yet)
        q.wsum = q.kind == Dist::DENSE ? K_->sum_f64(q.w, V_) : K_->sum_f64(q.sw, q.n);
    wk_.patches_ids.clear();
    double removed_w = 0.0;
    add(x, removed_w);
    if (P_.transport)
        for (int64_t t : wk_.absorbed) add(t, removed_w);
    const double rest = q.wsum - removed_w;
    const bool fits = q.ndiv < MAX_CHAIN && q.removed.size() + wk_.patches_ids.size() <= MAX_REMOVED;
    if (!fits || !(rest > 1e-4 * q.wsum) || !std::isfinite(rest)) {
        materialize(q);
        const float total = residual(q, nullptr, x, Relaxation{}, false, wk_.W.get());
        if (!(total > 0.0f && std::isfinite(total))) return false;
        q = Dist(wk_.W.get(), total, K_->chain_div(wk_.W.get(), nullptr, 0, wk_.W.get(), 0, V_));
        return true;
    }
    const float total = f32(rest / q.scale);
    if (!(total > 0.0f && std::isfinite(total))) return false;
    q.removed.insert(q.removed.end(), wk_.patches_ids.begin(), wk_.patches_ids.end());
    q.wsum = rest;
    q.div[q.ndiv++] = total;
    q.scale *= total;
    return true;
}

// CONTRACT §3 residual after rejecting x, written to dst (unnormalized); returns its float32 sum.
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
        auto& fill = wk_.fill;
        fill.assign(ks.begin(), ks.end() - 1);
        for (int64_t i = 1; i < N; ++i) {
            const int32_t p = par_[i];
            if (p >= 0 && p < i) kl[fill[p]++] = static_cast<int32_t>(i);
        }
    }
    if (P_.method == M_CASCADE) {
        wk_.norms.assign(N, 0.0f);
        wk_.norm_ok.assign(N, 0);
    }
    cos_parent_ = -1;

    const int64_t seed = P_.seeds[b];
    float u_sample = uniform(seed, STREAM_SAMPLE, 0);
    u_sample = u_sample < 0x1p-32f ? 0x1p-32f : u_sample;
    const bool greedy = P_.temperature == 0.0;
    const bool sampled = P_.draft != nullptr && !greedy;
    const float T = greedy ? 1.0f : static_cast<float>(P_.temperature);

    auto& path = wk_.path;
    path.assign(1, 0);
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
        int64_t probe = -1;  // the first child's token, when its acceptance is U < r(x) (process_row)
        double probe_u = 0.0;
        if (!sampled && !greedy && ks[u] < ks[u + 1]) {
            const int32_t ch = kl[ks[u]];
            if (tok_[ch] >= 0 && tok_[ch] < V_) {
                probe = tok_[ch];
                probe_u = uniform(seed, STREAM_ACCEPT, ch);
            }
        }
        Dist qu;
        const Row got = process_row(c, un, P_.target_dtype, T, A, wk_.C.get(), wk_.CI.get(), qu, probe, probe_u,
                                    probe >= 0 ? u : -1);
        if (got == Row::INVALID) {
            next = nan_safe_argmax_target(u);
            status |= STATUS_NONFINITE_TARGET;
            break;
        }
        if (got == Row::PROBE_ACCEPTED) {  // (no charge: tvd unchanged)
            u = kl[ks[u]];
            path.push_back(u);
            continue;
        }
        bool any_child = false;
        for (int32_t k = ks[u]; k < ks[u + 1]; ++k) any_child |= tok_[kl[k]] >= 0;
        if (bad_child_token(u)) {
            status |= STATUS_BAD_TOKEN;
            next = final_token(qu, greedy, u_sample);
            break;
        }
        if (!any_child) {
            next = final_token(qu, greedy, u_sample);
            break;
        }
        Dist pd;
        if (sampled) {
            const void* dr = row_ptr(P_.draft, P_.draft_dtype, row, V_);
            if (process_row(dr, nullptr, P_.draft_dtype, T, Pb, wk_.DC.get(), wk_.DCI.get(), pd) == Row::INVALID) {
                status |= STATUS_NONFINITE_DRAFT;
                next = final_token(qu, greedy, u_sample);
                break;
            }
            densify(pd, Pb);
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
            if (!sampled) {
                if (!lazy_reject(q, x)) {
                    status |= STATUS_EMPTY_RESIDUAL;
                    empty = true;
                    break;
                }
                continue;
            }
            materialize(q);
            const float total = residual(q, &pd, x, rel, sampled, Wb);
            if (!(total > 0.0f && std::isfinite(total))) {
                status |= STATUS_EMPTY_RESIDUAL;
                empty = true;
                break;
            }
            q = Dist(Wb, total, 0.0);
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
    for (int64_t i = 0; i < P_.L; ++i) nodes[i] = i < static_cast<int64_t>(path.size()) ? path[i] : -1;
    P_.next_token[b] = next;
    P_.tvd[b] = static_cast<float>(tvd);
    P_.status[b] = status;
}


// A small persistent pool of std::threads for the batch loop. Idle workers sleep on a condition
// variable (no spinning, so a busy peer core never stalls a call); the calling thread works too and, when
// it runs out of sequences, waits only for those a worker has actually claimed: for at most
// END_SPIN_US it polls (a worker finishing its last sequence is about one sequence away; a caller put to
// sleep on the condition variable wakes tens of microseconds after the worker's notify), then sleeps. A
// worker that wakes late finds the job closed and goes back to sleep. One call uses the pool at a time; a
// concurrent call (another Python thread) runs on its own thread.
class Pool {
   public:
    static Pool& get() {
        static Pool* pool = new Pool();  // never destroyed: workers may outlive static destructors
        return *pool;
    }

    // Runs fn(i) for i in [0, n) on the caller plus up to `extra` workers.
    void run(int64_t n, int extra, const std::function<void(int64_t)>& fn) {
        std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
        if (!busy.owns_lock() || extra <= 0) {
            for (int64_t i = 0; i < n; ++i) fn(i);
            return;
        }
        {
            std::lock_guard<std::mutex> lk(m_);
            while (static_cast<int>(workers_.size()) < extra) workers_.emplace_back([this] { loop(); });
            fn_ = &fn;
            n_ = n;
            next_.store(0, std::memory_order_relaxed);
            open_ = true;
            want_ = extra;
            ++gen_;
        }
        cv_.notify_all();
        drain();
        const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(END_SPIN_US);
        while (running_.load(std::memory_order_acquire) > 0 && std::chrono::steady_clock::now() < until) {
        }
        std::unique_lock<std::mutex> lk(m_);
        open_ = false;  // late wakers do nothing
        done_cv_.wait(lk, [this] { return active_ == 0; });
        fn_ = nullptr;
    }

   private:
    static constexpr int END_SPIN_US = 50;
    std::mutex busy_, m_;
    std::atomic<int> running_{0};  // workers inside drain() (a lock-free mirror of active_ for the poll)
    std::condition_variable cv_, done_cv_;
    std::vector<std::thread> workers_;
    const std::function<void(int64_t)>* fn_ = nullptr;
    int64_t n_ = 0;
    std::atomic<int64_t> next_{0};
    uint64_t gen_ = 0;
    bool open_ = false;
    int want_ = 0, active_ = 0;

    void drain() {
        while (true) {
            const int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
            if (i >= n_) break;
            (*fn_)(i);
        }
    }

    void loop() {
        uint64_t seen = 0;
        std::unique_lock<std::mutex> lk(m_);
        while (true) {
            cv_.wait(lk, [&] { return gen_ != seen; });
            seen = gen_;
            if (!open_ || want_ <= 0) continue;
            --want_;
            ++active_;
            running_.fetch_add(1, std::memory_order_relaxed);
            lk.unlock();
            drain();
            running_.fetch_sub(1, std::memory_order_release);
            lk.lock();
            if (--active_ == 0) done_cv_.notify_all();
        }
    }
};

}  // namespace

const char* kernels_isa() { return select_kernels()->isa; }

float running_sum(const float* v, int64_t n) {
    std::vector<float> starts(static_cast<size_t>(n / K_PREFIX_BLOCK + 1));
    return select_kernels()->prefix_blocks(v, n, starts.data());
}

std::vector<float> chain_running_sums(const float* w, int64_t n, const std::vector<float>& divs,
                                      const std::vector<int64_t>& zero) {
    std::vector<float> out(static_cast<size_t>(n / K_PREFIX_BLOCK + 2));
    out.back() = select_kernels()->chain_prefix(w, divs.data(), static_cast<int>(divs.size()), zero.data(),
                                                static_cast<int64_t>(zero.size()), n, out.data());
    out.erase(out.begin() + (n + K_PREFIX_BLOCK - 1) / K_PREFIX_BLOCK, out.end() - 1);
    return out;
}

float kth_largest(const float* v, int64_t n, int64_t k) {
    std::vector<float> copy(v, v + n);
    return select_kernels()->kth_largest(copy.data(), n, k);
}

MaxCompact max_compact(const void* c, const void* u, int dtype, float s, float t, int64_t n) {
    const Kernels* K = select_kernels();
    const RowSrc r{c, u, dtype, s, 1.0f, 0.0f, 0.0f};
    MaxCompact out;
    out.vals.resize(static_cast<size_t>(n) + 16);
    out.idx.resize(static_cast<size_t>(n) + 16);
    RowStats st;
    out.vals.resize(static_cast<size_t>(K->row_max_compact_ge(r, t, n, out.vals.data(), out.idx.data(), &st)));
    out.idx.resize(out.vals.size());
    const RowStats plain = K->row_max(c, u, dtype, s, n);
    out.max = st.max;
    out.has_nan = st.has_nan;
    out.plain_max = plain.max;
    out.plain_has_nan = plain.has_nan;
    out.plain_vals.resize(static_cast<size_t>(n) + 16);
    out.plain_idx.resize(static_cast<size_t>(n) + 16);
    out.plain_vals.resize(
        static_cast<size_t>(K->row_compact_ge(r, t, n, out.plain_vals.data(), out.plain_idx.data())));
    out.plain_idx.resize(out.plain_vals.size());
    return out;
}

std::vector<double> dots(const float* a, const std::vector<const float*>& b, int64_t n) {
    std::vector<double> out(b.size());
    select_kernels()->dots(a, b.data(), static_cast<int>(b.size()), n, out.data());
    return out;
}

void row_weights(const float* row, int64_t n, float* out) {
    const RowSrc r{row, nullptr, DT_F32, 0.0f, 1.0f, 0.0f, 0.0f};
    select_kernels()->row_exp_sum(r, n, out, nullptr);
}

ExpSums exp_sums(const float* row, int64_t n) {
    const Kernels* K = select_kernels();
    const RowStats st = K->row_max(row, nullptr, DT_F32, 0.0f, n);
    const RowSrc r{row, nullptr, DT_F32, 0.0f, 1.0f, st.max, st.max};
    std::vector<float> w(static_cast<size_t>(n)), w2(static_cast<size_t>(n));
    ExpSums out;
    out.fused_sum = K->row_exp_sum(r, n, w.data(), &out.fused_wsum);
    out.sum = K->row_exp_sum(r, n, w2.data(), nullptr);
    out.wsum = K->sum_f64(w2.data(), n);
    out.same_weights = std::memcmp(w.data(), w2.data(), sizeof(float) * static_cast<size_t>(n)) == 0;
    return out;
}

void verify_cpu(const VerifyParams& P) {
    const Kernels* K = select_kernels();
    const int64_t B = P.B;
    // Splitting pays only when each thread gets several sequences: B < 4 always runs on the caller.
    int nt = std::max(1, P.num_threads);
    nt = static_cast<int>(std::min<int64_t>(nt, B / 2));
    auto one = [&](int64_t b) {
        Work& wk = thread_work(P.V);
        Walker walker(P, K, wk);
        walker.run(b);
    };
    if (nt <= 1 || B < 4) {
        for (int64_t b = 0; b < B; ++b) one(b);
        return;
    }
    const std::function<void(int64_t)> fn = one;
    Pool::get().run(B, nt - 1, fn);
}

}  // namespace ck
