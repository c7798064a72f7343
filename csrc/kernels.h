// Row kernels of the CPU backend: one pass over a vocabulary row each, vectorised with
// `#pragma omp simd` or GCC vector extensions. kernels_impl.h is compiled three times
// (kernels_generic.cpp: baseline ISA, kernels_avx2.cpp: AVX2, kernels_avx512.cpp: AVX-512) and
// select_kernels() picks the best the CPU supports at run time (CASCADE_KERNELS_ISA=generic|avx2|avx512 caps it).
#pragma once
#include <cstdint>

#include "codes.h"

namespace ck {

constexpr int64_t K_PREFIX_BLOCK = 128;  // entries per block of Kernels::prefix_blocks (a multiple of 16)

struct RowStats {
    float max;      // max over the non-NaN entries (-inf if none)
    bool has_nan;
};

// A target or drafter row read in place: the guided logit g = c (no CFG) or u + s * (c - u), the scaled
// logit x = g (T == 1) or (g - m) / T (m = the row's max g, CONTRACT §2), the weight exp(x - shift) with
// shift = m (T == 1) or 0 (the scaled row's max). The vector bodies and the scalar tails of the kernels
// below compute these with the same float32 operations in the same order.
struct RowSrc {
    const void* c;
    const void* u;  // nullptr without CFG
    int dtype;      // DT_F32, DT_BF16 or DT_F16
    float s, T, m, shift;
};

struct Kernels {
    // max and NaN flag of the guided row (read only).
    RowStats (*row_max)(const void* c, const void* u, int dtype, float s, int64_t V);
    // dst[i] = the weight, over [0, V); returns their sum (float32 lanes, reduced in lane order). With wsum, also
    // *wsum = sum_f64(dst, V), bit for bit.
    float (*row_exp_sum)(const RowSrc& r, int64_t V, float* dst, double* wsum);
    // An upper bound of the sum of the weights, within a few per cent (exact real arithmetic on the bounds; the
    // caller adds the margin for this pass's and row_exp_sum's float32 sums and exponentials); *above = the
    // number of scaled logits > v.
    double (*row_sum_bound)(const RowSrc& r, int64_t V, float v, int64_t* above);
    // The weight of one entry, as row_exp_sum writes it.
    float (*row_weight_at)(const RowSrc& r, int64_t i);
    // Appends (x_i, i) for every scaled logit x_i >= t to vals / idx in index order; returns the count.
    int64_t (*row_compact_ge)(const RowSrc& r, float t, int64_t V, float* vals, int32_t* idx);
    // row_compact_ge and row_max in one read of the row, for T == 1 (r.T must be 1): *st = the guided row's max
    // and NaN flag, bit for bit as row_max gives them (r.m and r.shift are not read).
    int64_t (*row_max_compact_ge)(const RowSrc& r, float t, int64_t V, float* vals, int32_t* idx, RowStats* st);
    // The scaled logit of one entry.
    float (*row_scaled_at)(const RowSrc& r, int64_t i);
    // out[j] = the scaled logit of entry j * stride + (j * 7) % stride, j in [0, ns) (a strided sample).
    void (*row_sample)(const RowSrc& r, int64_t ns, int64_t stride, float* out);
    // a[i] = exp(a[i] - m); returns the sum (lane order).
    float (*exp_sum)(float* a, float m, int64_t n);
    // dst[i] = src[i] / d over [lo, hi); returns the sum of dst.
    float (*div_sum)(const float* src, float d, float* dst, int64_t lo, int64_t hi);
    // dst[i] = max(src[i]/d - p[i]/dp, 0) over [lo, hi); returns the sum of dst.
    float (*sub_sum)(const float* src, float d, const float* p, float dp, float* dst, int64_t lo, int64_t hi);
    // COOL: f = p > 0 ? min(1, (w * q) / p) : 1; dst = max(q - p * f, 0); returns the sum.
    float (*cool_sum)(const float* src, float d, const float* p, float dp, float w, float* dst, int64_t lo,
                      int64_t hi);
    // max of src[i] / d over [lo, hi) (-inf when empty).
    float (*max_div)(const float* src, float d, int64_t lo, int64_t hi);
    // dst[i] = src[i] >= t ? src[i] : 0 over [0, n); returns the sum of dst (top-p keep).
    float (*keep_ge_sum)(const float* src, float t, float* dst, int64_t n);
    // dst[i] = (((src[i] / divs[0]) / divs[1]) ...) over [lo, hi) (ndiv >= 0); returns the float64 sum of dst.
    double (*chain_div)(const float* src, const float* divs, int ndiv, float* dst, int64_t lo, int64_t hi);
    // The float32 running sum of v[0..n) in index order (rounded after every addition, exactly as a serial
    // loop): returns the total; starts[b] = the running sum before entry b * K_PREFIX_BLOCK. (The machinery
    // chain_prefix runs on its exact chunks, as a kernel of its own for the tests.)
    float (*prefix_blocks)(const float* v, int64_t n, float* starts);
    // prefix_blocks of v[i] = (((w[i] / divs[0]) / divs[1]) ...) over [0, n), zero at the ascending ids
    // zero[0..nzero), without writing the values (approximated by one product, made exactly where that
    // cannot decide a rounding): the inverse CDF's running sums, dense or over the top-k survivors.
    float (*chain_prefix)(const float* w, const float* divs, int ndiv, const int64_t* zero, int64_t nzero,
                          int64_t n, float* starts);
    // sum of a[i] in float64 (lane order).
    double (*sum_f64)(const float* a, int64_t n);
    // out[j] = sum of a[i] * b[j][i] for j < m: float32 products and lane sums, the lanes added in float64
    // (k_dot_group; each pair's value is the same whatever m).
    void (*dots)(const float* a, const float* const* b, int m, int64_t n, double* out);
    // The k-th largest (1 <= k <= n) of v[0..n) (no NaN), exactly; v is overwritten.
    float (*kth_largest)(float* v, int64_t n, int64_t k);
    // Keeps the pairs (vals[j], idx[j]) with vals[j] >= t, in order, at the front (in place); returns the count.
    int64_t (*keep_pairs_ge)(float* vals, int32_t* idx, int64_t n, float t);
    const char* isa;
};

const Kernels* kernels_generic();
const Kernels* kernels_avx2();    // nullptr when not compiled for this target
const Kernels* kernels_avx512();  // idem
const Kernels* select_kernels();

// Scalar helpers shared by the walk.
inline float bf16_to_float(uint16_t h) {
    uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    __builtin_memcpy(&f, &bits, 4);
    return f;
}

inline float f16_to_float(uint16_t h) {
    const uint32_t sign = (static_cast<uint32_t>(h) & 0x8000u) << 16;
    const uint32_t em = static_cast<uint32_t>(h) & 0x7fffu;
    uint32_t eb = em << 13;
    float mag;
    __builtin_memcpy(&mag, &eb, 4);
    mag *= 0x1p112f;  // exact for normal and subnormal halves
    uint32_t mb;
    __builtin_memcpy(&mb, &mag, 4);
    mb = em >= 0x7c00u ? (mb | 0x7f800000u) : mb;  // inf / NaN
    mb |= sign;
    float out;
    __builtin_memcpy(&out, &mb, 4);
    return out;
}

inline float load_float(const void* base, int dtype, int64_t i) {
    switch (dtype) {
        case DT_F32: return static_cast<const float*>(base)[i];
        case DT_BF16: return bf16_to_float(static_cast<const uint16_t*>(base)[i]);
        case DT_F16: return f16_to_float(static_cast<const uint16_t*>(base)[i]);
        default: return static_cast<float>(static_cast<const double*>(base)[i]);
    }
}

}  // namespace ck
