// The row kernels' bodies (see kernels.h). Included by kernels_generic.cpp and kernels_avx2.cpp inside
// an anonymous namespace, so each copy has internal linkage and is compiled for its own ISA.
// Only plain loops over raw pointers: no std:: templates that could be shared between the two copies.
// No FMA contraction in any copy, so every a + b * c rounds twice, as torch's separate ops do; the one
// exception is the exponential, which fuses on purpose and explicitly where the ISA has FMA (k_madd).

static inline float k_bits_to_float(uint32_t b) { float f; __builtin_memcpy(&f, &b, 4); return f; }
static inline uint32_t k_float_to_bits(float f) { uint32_t b; __builtin_memcpy(&b, &f, 4); return b; }

static inline float k_bf16(uint16_t h) { return k_bits_to_float(static_cast<uint32_t>(h) << 16); }

static inline float k_f16(uint16_t h) {
    const uint32_t sign = (static_cast<uint32_t>(h) & 0x8000u) << 16;
    const uint32_t em = static_cast<uint32_t>(h) & 0x7fffu;
    uint32_t mb = k_float_to_bits(k_bits_to_float(em << 13) * 0x1p112f);
    mb = em >= 0x7c00u ? (mb | 0x7f800000u) : mb;
    return k_bits_to_float(mb | sign);
}

// a * b + c: fused (rounded once) in the AVX2 and AVX-512 copies, whose CPUs have FMA; the generic copy rounds
// twice (x86's baseline has no FMA, and a software fmaf made its exponential 7x slower). So the generic copy's
// exponential can differ from the others' in the last bit, as the contract lets backends' softmaxes differ.
#if defined(K_USE_AVX512) || defined(K_USE_FMA256)
static inline float k_madd(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
#else
static inline float k_madd(float a, float b, float c) { return a * b + c; }
#endif

// exp(x) for x <= 0 (x = logit - row max), within ~1 ulp; 0 below -104 (and for -inf).
// Cephes expf: Cody-Waite reduction by ln 2 and a degree-6 polynomial in seven multiply-adds (k_madd: fused on
// AVX2 / AVX-512, where the weights' pass costs about 30 % less than with separate operations; k_exp8 gives the
// same bits); the scale 2^n is applied in two halves so that results in the subnormal range round once.
static inline float k_exp(float x) {
    const float xc = x < -104.0f ? -104.0f : x;
    const float t = xc * 1.44269504088896341f;
    const float n = (t + 12582912.0f) - 12582912.0f;  // round to nearest
    float r = k_madd(n, -0.693359375f, xc);
    r = k_madd(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = k_madd(p, r, 1.3981999507e-3f);
    p = k_madd(p, r, 8.3334519073e-3f);
    p = k_madd(p, r, 4.1665795894e-2f);
    p = k_madd(p, r, 1.6666665459e-1f);
    p = k_madd(p, r, 5.0000001201e-1f);
    const float y = k_madd(p * r, r, r) + 1.0f;
    const int32_t ni = static_cast<int32_t>(n);
    const int32_t n1 = ni / 2;
    const int32_t n2 = ni - n1;
    const float s1 = k_bits_to_float(static_cast<uint32_t>(n1 + 127) << 23);
    const float s2 = k_bits_to_float(static_cast<uint32_t>(n2 + 127) << 23);
    const float out = (y * s1) * s2;
    return x < -104.0f ? 0.0f : out;
}

template <int DT>
static inline float k_load(const void* base, int64_t i) {
    if (DT == 0) return static_cast<const float*>(base)[i];
    if (DT == 1) return k_bf16(static_cast<const uint16_t*>(base)[i]);
    return k_f16(static_cast<const uint16_t*>(base)[i]);
}


// The scaled logit of one entry (see RowSrc): guidance, then temperature as (g - max g) / T (CONTRACT §2).
static float k_row_scaled_at(const RowSrc& r, int64_t i) {
    float g = r.dtype == 0 ? k_load<0>(r.c, i) : (r.dtype == 1 ? k_load<1>(r.c, i) : k_load<2>(r.c, i));
    if (r.u) {
        const float un = r.dtype == 0 ? k_load<0>(r.u, i) : (r.dtype == 1 ? k_load<1>(r.u, i) : k_load<2>(r.u, i));
        g = un + r.s * (g - un);
    }
    return r.T != 1.0f ? (g - r.m) / r.T : g;
}

static float k_row_weight_at(const RowSrc& r, int64_t i) { return k_exp(k_row_scaled_at(r, i) - r.shift); }

#ifndef K_LANES
#define K_LANES 8
#endif
typedef float k_v8f __attribute__((vector_size(4 * K_LANES)));
typedef int32_t k_v8i __attribute__((vector_size(4 * K_LANES)));

static inline k_v8f k_bc(float f) { return k_v8f{} + f; }

// k_madd on every lane.
static inline k_v8f k_madd8(k_v8f a, k_v8f b, k_v8f c) {
#if defined(K_USE_AVX512)
    return reinterpret_cast<k_v8f>(_mm512_fmadd_ps(reinterpret_cast<__m512>(a), reinterpret_cast<__m512>(b),
                                                   reinterpret_cast<__m512>(c)));
#elif defined(K_USE_FMA256)
    return reinterpret_cast<k_v8f>(_mm256_fmadd_ps(reinterpret_cast<__m256>(a), reinterpret_cast<__m256>(b),
                                                   reinterpret_cast<__m256>(c)));
#else
    return a * b + c;
#endif
}

// Whether any lane of m is set.
static inline bool k_any(k_v8i m) {
#if defined(K_USE_AVX512)
    __m512i x;
    __builtin_memcpy(&x, &m, sizeof(x));
    return _mm512_test_epi32_mask(x, x) != 0;
#else
    int any = 0;
    for (int l = 0; l < K_LANES; ++l) any |= m[l];
    return any != 0;
#endif
}

// k_exp on K_LANES lanes with GCC vector extensions (the same operations in the same order: identical results).
// When every lane lies in [-87, 80], n is in [-126, 116]: 2^n is a normal float, y * 2^n1 is exact, and
// (y * 2^n1) * 2^n2 rounds once, as y * 2^n does; so one multiplication by 2^n gives the same bits, and the
// clamp at -104 changes nothing. Rows of logits minus their max nearly always lie in that range. Always inlined:
// GCC called it out of line from the weights' pass that also takes the float64 sum (5-9 % of that pass).
__attribute__((always_inline)) static inline k_v8f k_exp8(k_v8f x) {
    const bool normal = !k_any(~((x >= k_bc(-87.0f)) & (x <= k_bc(80.0f))));  // NaN is outside
    const k_v8i small = x < k_bc(-104.0f);
    const k_v8f xc = normal ? x : (small ? k_bc(-104.0f) : x);
    const k_v8f t = xc * 1.44269504088896341f;
#if defined(K_USE_AVX512)
    k_v8f n;  // round to nearest even in one instruction: (t + 1.5 2^23) - 1.5 2^23 for |t| <= 151
    const __m512 nr =
        _mm512_roundscale_ps(reinterpret_cast<const __m512&>(t), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __builtin_memcpy(&n, &nr, sizeof(n));
#else
    const k_v8f n = (t + 12582912.0f) - 12582912.0f;
#endif
    k_v8f r = k_madd8(n, k_bc(-0.693359375f), xc);
    r = k_madd8(n, k_bc(2.12194440e-4f), r);
    k_v8f p = k_bc(1.9875691500e-4f);
    p = k_madd8(p, r, k_bc(1.3981999507e-3f));
    p = k_madd8(p, r, k_bc(8.3334519073e-3f));
    p = k_madd8(p, r, k_bc(4.1665795894e-2f));
    p = k_madd8(p, r, k_bc(1.6666665459e-1f));
    p = k_madd8(p, r, k_bc(5.0000001201e-1f));
    const k_v8f y = k_madd8(p * r, r, r) + 1.0f;
#if defined(K_USE_AVX512)
    if (normal) {  // y * 2^n in one instruction (exact: 2^n and the result are normal floats)
        const __m512 e = _mm512_scalef_ps(reinterpret_cast<const __m512&>(y), reinterpret_cast<const __m512&>(n));
        k_v8f out;
        __builtin_memcpy(&out, &e, sizeof(out));
        return out;
    }
    const k_v8i ni = __builtin_convertvector(n, k_v8i);
#else
    const k_v8i ni = __builtin_convertvector(n, k_v8i);
    if (normal) return y * reinterpret_cast<k_v8f>((ni + 127) << 23);
#endif
    const k_v8i n1 = ni / 2;
    const k_v8i n2 = ni - n1;
    const k_v8f s1 = reinterpret_cast<k_v8f>((n1 + 127) << 23);
    const k_v8f s2 = reinterpret_cast<k_v8f>((n2 + 127) << 23);
    const k_v8f out = (y * s1) * s2;
    return small ? k_bc(0.0f) : out;
}

typedef uint16_t k_v8h __attribute__((vector_size(2 * K_LANES)));
typedef uint32_t k_v8u __attribute__((vector_size(4 * K_LANES)));

// A float64 accumulator of K_LANES lanes, as two vectors of K_LANES / 2 doubles (one register each). A vector
// type of K_LANES doubles is wider than a register, and GCC kept such accumulators on the stack, so every
// addition waited on a store and a reload. Lane l of the K_LANES-wide sum is lane l of lo, then of hi.
typedef double k_vhd __attribute__((vector_size(4 * K_LANES)));
typedef float k_vhf __attribute__((vector_size(2 * K_LANES)));
struct KSum64 {
    k_vhd lo = k_vhd{}, hi = k_vhd{};
    void add(k_v8f x) {  // lane by lane, x widened exactly
#if defined(K_USE_AVX512)
        __m512 v;
        __builtin_memcpy(&v, &x, sizeof(v));
        const __m512d a = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        const __m512d b = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
        lo += reinterpret_cast<const k_vhd&>(a);
        hi += reinterpret_cast<const k_vhd&>(b);
#else
        k_vhf a, b;
        __builtin_memcpy(&a, &x, sizeof(a));
        __builtin_memcpy(&b, reinterpret_cast<const char*>(&x) + sizeof(a), sizeof(b));
        lo += __builtin_convertvector(a, k_vhd);
        hi += __builtin_convertvector(b, k_vhd);
#endif
    }
    void add(const KSum64& o) {
        lo += o.lo;
        hi += o.hi;
    }
    double lanes() const {  // 0.0 + lane 0 + lane 1 + ... in order
        double s = 0.0;
        for (int l = 0; l < K_LANES / 2; ++l) s += lo[l];
        for (int l = 0; l < K_LANES / 2; ++l) s += hi[l];
        return s;
    }
};

// K_LANES consecutive entries as float32 (k_load on each lane: identical results).
template <int DT>
static inline k_v8f k_loadv(const void* base, int64_t i) {
    if (DT == 0) {
        k_v8f x;
        __builtin_memcpy(&x, static_cast<const float*>(base) + i, sizeof(x));
        return x;
    }
    k_v8h h;
    __builtin_memcpy(&h, static_cast<const uint16_t*>(base) + i, sizeof(h));
    const k_v8u w = __builtin_convertvector(h, k_v8u);
    if (DT == 1) return reinterpret_cast<k_v8f>(w << 16);
    const k_v8u sign = (w & 0x8000u) << 16;
    const k_v8u em = w & 0x7fffu;
    k_v8u mb = reinterpret_cast<k_v8u>(reinterpret_cast<k_v8f>(em << 13) * 0x1p112f);
    mb = (em >= 0x7c00u) ? (mb | 0x7f800000u) : mb;
    return reinterpret_cast<k_v8f>(mb | sign);
}

// k_row_scaled_at on K_LANES lanes (the same operations).
template <int DT, bool CFG, bool T1>
static inline k_v8f k_scaledv(const RowSrc& r, int64_t i) {
    k_v8f g = k_loadv<DT>(r.c, i);
    if (CFG) {
        const k_v8f un = k_loadv<DT>(r.u, i);
        g = un + r.s * (g - un);
    }
    return T1 ? g : (g - r.m) / r.T;
}

// Calls F<dtype, cfg, T == 1>::run(r, args...).
template <template <int, bool, bool> class F, typename... A>
static inline auto k_dispatch(const RowSrc& r, A... a) -> decltype(F<0, false, false>::run(r, a...)) {
    const int sel = (r.dtype == 1 ? 4 : (r.dtype == 2 ? 8 : 0)) + (r.u ? 2 : 0) + (r.T == 1.0f ? 1 : 0);
    switch (sel) {
        case 0: return F<0, false, false>::run(r, a...);
        case 1: return F<0, false, true>::run(r, a...);
        case 2: return F<0, true, false>::run(r, a...);
        case 3: return F<0, true, true>::run(r, a...);
        case 4: return F<1, false, false>::run(r, a...);
        case 5: return F<1, false, true>::run(r, a...);
        case 6: return F<1, true, false>::run(r, a...);
        case 7: return F<1, true, true>::run(r, a...);
        case 8: return F<2, false, false>::run(r, a...);
        case 9: return F<2, false, true>::run(r, a...);
        case 10: return F<2, true, false>::run(r, a...);
        default: return F<2, true, true>::run(r, a...);
    }
}

// The max over the non-NaN guided logits (x > m is false for a NaN x) and whether any is NaN, in one order: four
// independent vector accumulators over blocks of 4 K_LANES, then their lanes, then the scalar tail. The max is
// order-independent but for the sign of a zero max, so KRowMax and KCompactGe<..., MAX> both take it from here and
// give the same RowStats bit for bit.
struct KMaxAcc {
    k_v8f m0 = k_bc(-__builtin_inff()), m1 = m0, m2 = m0, m3 = m0;
    k_v8i nan = k_v8i{};
    float mx = -__builtin_inff();
    int any = 0;
    void add4(const k_v8f& x0, const k_v8f& x1, const k_v8f& x2, const k_v8f& x3) {
        m0 = x0 > m0 ? x0 : m0;
        m1 = x1 > m1 ? x1 : m1;
        m2 = x2 > m2 ? x2 : m2;
        m3 = x3 > m3 ? x3 : m3;
        nan |= (x0 != x0) | (x1 != x1) | (x2 != x2) | (x3 != x3);
    }
    void fold_lanes() {  // once, after the last add4 and before the first add
        m0 = m1 > m0 ? m1 : m0;
        m2 = m3 > m2 ? m3 : m2;
        m0 = m2 > m0 ? m2 : m0;
        for (int l = 0; l < K_LANES; ++l) {
            mx = m0[l] > mx ? m0[l] : mx;
            any |= nan[l];
        }
    }
    void add(float x) {
        mx = x > mx ? x : mx;
        any |= x != x;
    }
    RowStats stats() const { return RowStats{mx, any != 0}; }
};

template <int DT, bool CFG, bool T1>
struct KRowMax {
    static RowStats run(const RowSrc& r, int64_t n) {
        KMaxAcc acc;
        int64_t i = 0;
        for (; i + 4 * K_LANES <= n; i += 4 * K_LANES)
            acc.add4(k_scaledv<DT, CFG, true>(r, i), k_scaledv<DT, CFG, true>(r, i + K_LANES),
                     k_scaledv<DT, CFG, true>(r, i + 2 * K_LANES), k_scaledv<DT, CFG, true>(r, i + 3 * K_LANES));
        acc.fold_lanes();
        for (; i < n; ++i) {
            float g = k_load<DT>(r.c, i);
            if (CFG) {
                const float un = k_load<DT>(r.u, i);
                g = un + r.s * (g - un);
            }
            acc.add(g);
        }
        return acc.stats();
    }
};

// T is not applied to the max (RowSrc.T is ignored here: the max is of the guided logits).
static RowStats k_row_max(const void* c, const void* u, int dtype, float s, int64_t V) {
    const RowSrc r{c, u, dtype, s, 1.0f, 0.0f, 0.0f};
    return k_dispatch<KRowMax>(r, V);
}

template <int DT, bool CFG, bool T1>
struct KRowExpSum {
    static float run(const RowSrc& r, int64_t n, float* dst, double* wsum) {
        k_v8f acc = k_bc(0.0f);
        int64_t i = 0;
        if (wsum) {  // k_sum_f64 of the weights too, in its order: pairs of vectors on two lane accumulators
            KSum64 d0, d1;
            for (; i + 2 * K_LANES <= n; i += 2 * K_LANES) {
                const k_v8f e0 = k_exp8(k_scaledv<DT, CFG, T1>(r, i) - r.shift);
                const k_v8f e1 = k_exp8(k_scaledv<DT, CFG, T1>(r, i + K_LANES) - r.shift);
                __builtin_memcpy(dst + i, &e0, sizeof(e0));
                __builtin_memcpy(dst + i + K_LANES, &e1, sizeof(e1));
                acc += e0;
                acc += e1;
                d0.add(e0);
                d1.add(e1);
            }
            d0.add(d1);
            *wsum = d0.lanes();  // + the entries from i on, serially, below
        }
        const int64_t serial = i;
        for (; i + K_LANES <= n; i += K_LANES) {
            const k_v8f e = k_exp8(k_scaledv<DT, CFG, T1>(r, i) - r.shift);
            __builtin_memcpy(dst + i, &e, sizeof(e));
            acc += e;
        }
        float s = 0.0f;
        for (int l = 0; l < K_LANES; ++l) s += acc[l];
        for (; i < n; ++i) {
            const float e = k_row_weight_at(r, i);
            dst[i] = e;
            s += e;
        }
        if (wsum)
            for (int64_t j = serial; j < n; ++j) *wsum += dst[j];
        return s;
    }
};

// The weights into dst and their sum, in the same lane order as k_exp_sum on a row of scaled logits.
static float k_row_exp_sum(const RowSrc& r, int64_t n, float* dst, double* wsum) {
    return k_dispatch<KRowExpSum>(r, n, dst, wsum);
}

// Kernels::row_sum_bound. Each weight exp(y), y = scaled - shift <= 0, is bounded by 2^floor(t) (1 + frac(t))
// >= 2^t, t = y log2(e) (2^f lies below its chord on [0, 1]): the float whose bits are trunc(t 2^23) + 127 2^23
// (truncation toward zero only raises it), t clamped at -124 (above every weight that small). No exponential:
// a cheap pass that lets a walk skip the weights of a row whose first child is surely accepted. Also counts
// the scaled logits above v (top-k: whether an entry of value v survives).
template <int DT, bool CFG, bool T1>
struct KRowSumBound {
    static double run(const RowSrc& r, int64_t n, float v, int64_t* above) {
        const float c = 0x1p23f * 1.44269504f, lo = -124.0f * 0x1p23f;
        k_v8f acc = k_bc(0.0f);
        k_v8i cnt = k_v8i{};
        int64_t i = 0;
        for (; i + K_LANES <= n; i += K_LANES) {
            const k_v8f x = k_scaledv<DT, CFG, T1>(r, i);
            cnt -= x > k_bc(v);  // (a true lane is -1)
            k_v8f t = (x - r.shift) * c;
            t = t < k_bc(lo) ? k_bc(lo) : t;
            acc += reinterpret_cast<k_v8f>(__builtin_convertvector(t, k_v8i) + (127 << 23));
        }
        double s = 0.0;
        int64_t a = 0;
        for (int l = 0; l < K_LANES; ++l) {
            s += acc[l];
            a += cnt[l];
        }
        for (; i < n; ++i) {
            const float x = k_row_scaled_at(r, i);
            a += x > v ? 1 : 0;
            s += __builtin_exp(static_cast<double>(x - r.shift));
        }
        *above = a;
        return s;
    }
};

static double k_row_sum_bound(const RowSrc& r, int64_t n, float v, int64_t* above) {
    return k_dispatch<KRowSumBound>(r, n, v, above);
}

// Appends the lanes of x (entries i .. i + K_LANES - 1) that are >= t to vals / idx at c. AVX-512: branch-free
// (with a few per cent of a row kept, whether a group keeps any is a coin flip that a branch would mispredict;
// a benchmark repeating one row hides it: the predictor learns the row); compress into a register, then a
// plain store (compress-to-memory is slow on some cores), reaching vals + c + 15 <= vals + i + 15 < vals + n.
// Elsewhere a group without a kept lane is skipped, the others written lane by lane without a branch.
static inline void k_compact_group(const k_v8f& x, int64_t i, float t, float* vals, int32_t* idx, int64_t& c) {
#if defined(K_USE_AVX512)
    __m512 xv;
    __builtin_memcpy(&xv, &x, sizeof(xv));
    const __mmask16 m = _mm512_cmp_ps_mask(xv, _mm512_set1_ps(t), _CMP_GE_OQ);
    const __m512i iv = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(i)),
                                        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    _mm512_storeu_ps(vals + c, _mm512_maskz_compress_ps(m, xv));
    _mm512_storeu_si512(reinterpret_cast<void*>(idx + c), _mm512_maskz_compress_epi32(m, iv));
    c += __builtin_popcount(static_cast<unsigned>(m));
#else
    const k_v8i m = x >= k_bc(t);
    if (!k_any(m)) return;
    for (int l = 0; l < K_LANES; ++l) {
        vals[c] = x[l];
        idx[c] = static_cast<int32_t>(i + l);
        c += m[l] ? 1 : 0;
    }
#endif
}

// Appends (x_i, i) for every scaled logit x_i >= t to vals / idx in index order; returns the count. MAX (T == 1
// only: the scaled logit is the guided one) also gives the guided row's max and NaN flag in *st, as KRowMax does
// (KMaxAcc): the same RowStats bit for bit, from the same single read of the row.
template <int DT, bool CFG, bool T1, bool MAX>
struct KCompactGe {
    static int64_t run(const RowSrc& r, float t, int64_t n, float* vals, int32_t* idx, RowStats* st) {
        int64_t c = 0, i = 0;
        KMaxAcc acc;
        for (; i + 4 * K_LANES <= n; i += 4 * K_LANES) {
            const k_v8f x0 = k_scaledv<DT, CFG, T1>(r, i), x1 = k_scaledv<DT, CFG, T1>(r, i + K_LANES);
            const k_v8f x2 = k_scaledv<DT, CFG, T1>(r, i + 2 * K_LANES);
            const k_v8f x3 = k_scaledv<DT, CFG, T1>(r, i + 3 * K_LANES);
            if (MAX) acc.add4(x0, x1, x2, x3);
            k_compact_group(x0, i, t, vals, idx, c);
            k_compact_group(x1, i + K_LANES, t, vals, idx, c);
            k_compact_group(x2, i + 2 * K_LANES, t, vals, idx, c);
            k_compact_group(x3, i + 3 * K_LANES, t, vals, idx, c);
        }
        if (MAX) acc.fold_lanes();
        for (; i < n; ++i) {  // (T == 1 with MAX: x is the guided logit, as KRowMax's tail computes it)
            const float x = k_row_scaled_at(r, i);
            if (MAX) acc.add(x);
            vals[c] = x;
            idx[c] = static_cast<int32_t>(i);
            c += x >= t ? 1 : 0;
        }
        if (MAX) *st = acc.stats();
        return c;
    }
};

template <int DT, bool CFG, bool T1>
struct KRowCompactGe : KCompactGe<DT, CFG, T1, false> {};

template <int DT, bool CFG, bool T1>
struct KRowMaxCompactGe : KCompactGe<DT, CFG, true, true> {};  // (r.T is not read: T == 1 by contract)

static int64_t k_row_compact_ge(const RowSrc& r, float t, int64_t n, float* vals, int32_t* idx) {
    return k_dispatch<KRowCompactGe>(r, t, n, vals, idx, static_cast<RowStats*>(nullptr));
}

static int64_t k_row_max_compact_ge(const RowSrc& r, float t, int64_t n, float* vals, int32_t* idx, RowStats* st) {
    return k_dispatch<KRowMaxCompactGe>(r, t, n, vals, idx, st);
}

template <int DT, bool CFG, bool T1>
struct KRowSample {
    static int run(const RowSrc& r, int64_t ns, int64_t stride, float* out) {
        int64_t off = 0;  // (j * 7) % stride, kept incrementally (no integer division per entry)
        for (int64_t j = 0; j < ns; ++j, off += 7) {
            while (off >= stride) off -= stride;
            const int64_t i = j * stride + off;
            float g = k_load<DT>(r.c, i);
            if (CFG) {
                const float un = k_load<DT>(r.u, i);
                g = un + r.s * (g - un);
            }
            out[j] = T1 ? g : (g - r.m) / r.T;  // k_row_scaled_at
        }
        return 0;
    }
};

static void k_row_sample(const RowSrc& r, int64_t ns, int64_t stride, float* out) {
    k_dispatch<KRowSample>(r, ns, stride, out);
}

static float k_exp_sum(float* a, float m, int64_t n) {
    k_v8f acc = k_bc(0.0f);
    int64_t i = 0;
    for (; i + K_LANES <= n; i += K_LANES) {
        k_v8f x;
        __builtin_memcpy(&x, a + i, sizeof(x));
        const k_v8f e = k_exp8(x - m);
        __builtin_memcpy(a + i, &e, sizeof(e));
        acc += e;
    }
    float s = 0.0f;
    for (int l = 0; l < K_LANES; ++l) s += acc[l];
    for (; i < n; ++i) {
        const float e = k_exp(a[i] - m);
        a[i] = e;
        s += e;
    }
    return s;
}

// The same running sum, bit for bit, without the serial chain of float additions, when it can be proven
// equal: while s stays in the binade [2^E, 2^(E+1)), every float32 sum is a multiple of u = 2^(E-23), so
// s + v[i] rounds to s + u * rint(v[i] / u) (v[i] / u is exact: a power-of-two scale), the ties (a
// fraction of exactly 1/2, where round-half-even depends on s) excepted. The sums over a run of entries are then
// s + u * (integer prefix sums), all in the binade iff the last one is below 2^24 u. Blocks of
// K_PREFIX_BLOCK entries are taken whole; a block with a tie, a negative / non-finite / huge entry, or
// where s leaves its binade, is taken K_LANES entries at a time, and only the K_LANES entries where that
// happens are summed serially (as is everything while s is zero or tiny).

// Where a chunk's values come from (k_prefix_chunk): the exact values v[i] (CHAIN false), or the chained
// quotients (((w[i] / divs[0]) / divs[1]) ...) of the weights w = v (zero at the ascending ids
// zero[0..nzero); v[0] is entry lo of the row). Those are approximated by one product, w[i] * R, within
// rel * value + abs_v, and made exactly only for the K_LANES entries where the approximation cannot decide a
// rounding, that hold a zeroed id (zvec), or that are summed serially.
struct KChain {
    const float* w;
    const float* divs;
    int ndiv;
    const int64_t* zero;
    int64_t nzero;
    int64_t lo;
    float R;                    // 1 / (divs[0] * divs[1] * ...), rounded to float32
    float wlim;                 // weights from here on could overflow a quotient of the chain: exact values
    float rel;
    double abs_v;
    const unsigned char* zvec;  // zvec[i / K_LANES]: entries [i, i + K_LANES) of the chunk hold a zeroed id
};

// out[0..len) = the exact chained quotients of w[lo + i] (zero at the listed ids), vectorised.
static void k_chain_values(const KChain& c, int64_t lo, int64_t len, float* out) {
    int64_t i = 0;
    for (; i + K_LANES <= len; i += K_LANES) {
        k_v8f x;
        __builtin_memcpy(&x, c.w + lo + i, sizeof(x));
        for (int j = 0; j < c.ndiv; ++j) x = x / c.divs[j];
        __builtin_memcpy(out + i, &x, sizeof(x));
    }
    for (; i < len; ++i) {
        float x = c.w[lo + i];
        for (int j = 0; j < c.ndiv; ++j) x = x / c.divs[j];
        out[i] = x;
    }
    for (int64_t z = 0; z < c.nzero; ++z)
        if (c.zero[z] >= lo && c.zero[z] < lo + len) out[c.zero[z] - lo] = 0.0f;
}

// The sum of the lanes of acc, each a non-negative integer (or NaN), by halves. The order does not matter: below
// 2^24 every partial sum of such integers is exact, and a total of 2^24 or more rounds to 2^24 or more in any
// order (rounding is monotone), so the caller's test total < 2^24 decides alike. A serial sum over the lanes
// made every block's total wait on K_LANES dependent additions.
static inline float k_sum_units(k_v8f acc) {
#if defined(K_USE_AVX512)
    __m512 x;
    __builtin_memcpy(&x, &acc, sizeof(x));
    return _mm512_reduce_add_ps(x);
#else
    typedef float k_v4f __attribute__((vector_size(16)));
    k_v4f h;
    __builtin_memcpy(&h, &acc, sizeof(h));
    for (int q = 1; q < K_LANES / 4; ++q) {
        k_v4f o;
        __builtin_memcpy(&o, reinterpret_cast<const float*>(&acc) + 4 * q, sizeof(o));
        h += o;
    }
    return (h[0] + h[2]) + (h[1] + h[3]);
#endif
}

// The running sum's binade [2^E, 2^(E+1)) for 2^-100 <= s < 2^100: its ulp u, inv = 1 / u, the scale from a
// value (CHAIN: a weight) to units, and the approximation's absolute error in units, rounded up generously
// (0x1p-20: the margin's own float32 rounding; +inf, which sends every entry to its exact value, where the
// product's scale R * inv is not a normal float).
struct KBinade {
    int E;
    float u, inv, scale, abs_u;
    uint32_t lim;  // the bits of the least t sent to the exact / serial path (t >= 0; negative t's bits are above)
};

template <bool CHAIN>
static inline KBinade k_binade(float s, const KChain* chain) {
    KBinade b;
    b.E = static_cast<int>(k_float_to_bits(s) >> 23) - 127;
    b.inv = k_bits_to_float(static_cast<uint32_t>(23 - b.E + 127) << 23);
    b.u = k_bits_to_float(static_cast<uint32_t>(b.E - 23 + 127) << 23);
    b.scale = b.inv;
    b.abs_u = 0.0f;
    b.lim = 0x4b000000u;  // 2^23 units
    if (CHAIN) {
        b.scale = chain->R * b.inv;  // exact while normal: a power-of-two scale of R
        const bool ok = b.scale >= 0x1p-126f && b.scale <= 0x1p127f;
        b.abs_u = ok ? static_cast<float>(chain->abs_v * b.inv) + 0x1p-20f : __builtin_inff();
        // 2^22 units, or less where a weight could overflow a quotient of its chain (w >= wlim; rounding is
        // monotone, so every such w has t >= wlim * scale)
        const uint32_t w_lim = k_float_to_bits(chain->wlim * b.scale);
        b.lim = w_lim < 0x4a800000u ? w_lim : 0x4a800000u;
    }
    return b;
}

// k_block_units: the integer sum of rint(t) over entries [lo, hi) (a multiple of K_LANES) with t = v[i] *
// scale, and whether they must be summed serially instead (a tie, or an entry outside [0, 2^23) units). For
// 0 <= t < 2^23, (t + 2^23) - 2^23 is t rounded to the nearest integer (ties to even, but a tie is flagged:
// |t - rint(t)| = 1/2), and the lane sums of those integers stay exact in float32 while the total is below
// 2^24. CHAIN: t approximates the exact value's units within margin = rel * t + abs_u, so its rounded integer
// is the exact one's unless t lies within that margin of a half-integer (a tie included, as abs_u > 0) or of
// the range's end (2^22 here, or bn.lim where a weight could overflow a quotient of its chain); those K_LANES
// entries are redone from their exact values.
template <bool CHAIN>
static inline int64_t k_block_units(const float* v, int64_t lo, int64_t hi, const KBinade& bn,
                                    const KChain* chain, int* bad_out) {
    const k_v8f rel = k_bc(CHAIN ? chain->rel : 0.0f), abs_u = k_bc(bn.abs_u);
    k_v8f acc = k_bc(0.0f);
    k_v8i bad = k_v8i{};
    for (int64_t i = lo; i < hi; i += K_LANES) {
        k_v8f x;
        __builtin_memcpy(&x, v + i, sizeof(x));
        k_v8f t = x * bn.scale;
        k_v8f r = (t + 0x1p23f) - 0x1p23f;
        k_v8f ad = reinterpret_cast<k_v8f>(reinterpret_cast<k_v8u>(t - r) & 0x7fffffffu);
        k_v8i flag = reinterpret_cast<k_v8u>(t) >= bn.lim;  // t < 0, too big, NaN
        flag |= ad + (CHAIN ? k_madd8(t, rel, abs_u) : k_bc(0.0f)) >= 0.5f;
        if (CHAIN && (chain->zvec[i / K_LANES] || k_any(flag))) {  // undecided: these entries' exact values
            k_chain_values(*chain, chain->lo + i, K_LANES, reinterpret_cast<float*>(&x));
            t = x * bn.inv;
            r = (t + 0x1p23f) - 0x1p23f;
            ad = reinterpret_cast<k_v8f>(reinterpret_cast<k_v8u>(t - r) & 0x7fffffffu);
            flag = (reinterpret_cast<k_v8u>(t) >= 0x4b000000u) | (ad >= 0.5f);
        }
        acc += r;
        bad |= flag;
    }
    const float total = k_sum_units(acc);
    *bad_out = k_any(bad) || !(total < 0x1p24f);
    return static_cast<int64_t>(total);
}

constexpr int64_t K_PREFIX_CHUNK = 8;  // blocks whose integer sums are taken before any is used

// The running sum over [lo, hi) from s, serially, on the exact values.
template <bool CHAIN>
static float k_serial_run(const float* v, const KChain* chain, int64_t lo, int64_t hi, float s) {
    float ex[K_LANES];
    const float* x = v + lo;
    if (CHAIN) {
        k_chain_values(*chain, chain->lo + lo, hi - lo, ex);
        x = ex;
    }
    for (int64_t i = 0; i < hi - lo; ++i) s += x[i];
    return s;
}

// The running sum over the block [lo, hi) from s, K_LANES entries at a time: integer sums in the current
// binade while they stay in it; the K_LANES entries that leave it or hold a tie (and a short tail, and
// everything while s is zero or tiny) serially.
template <bool CHAIN>
static float k_split_block(const float* v, const KChain* chain, int64_t lo, int64_t hi, float s) {
    int64_t i = lo;
    while (i < hi) {
        const int64_t next = i + K_LANES <= hi ? i + K_LANES : hi;
        if (next - i < K_LANES || !(s >= 0x1p-100f && s < 0x1p100f)) {
            s = k_serial_run<CHAIN>(v, chain, i, next, s);
            i = next;
            continue;
        }
        const KBinade bn = k_binade<CHAIN>(s, chain);
        int64_t total = static_cast<int64_t>(s * bn.inv);  // an integer in [2^23, 2^24)
        for (; i + K_LANES <= hi; i += K_LANES) {
            int bad;
            const int64_t units = k_block_units<CHAIN>(v, i, i + K_LANES, bn, chain, &bad);
            if (bad || total + units >= (int64_t{1} << 24)) break;
            total += units;
        }
        s = static_cast<float>(total) * bn.u;  // exact
        if (i + K_LANES <= hi) {  // these entries leave the binade or hold a tie
            s = k_serial_run<CHAIN>(v, chain, i, i + K_LANES, s);
            i += K_LANES;
        }
    }
    return s;
}

// starts[j] = the running sum before block j of v[0..len) (len <= K_PREFIX_CHUNK blocks; pos entries of the row
// precede it), from s; returns the sum after. The blocks' integer sums in the current binade are independent of
// each other, so those of the blocks expected to fit in the binade (from the mean block so far) are taken
// first (their reductions overlap) and then added in order; at the first block that leaves the binade or holds
// a tie, that block is split (k_split_block) and the chunk goes on in the new binade.
template <bool CHAIN>
static float k_prefix_chunk(const float* v, int64_t len, int64_t pos, float s, float* starts, const KChain* chain) {
    const int64_t nb = (len + K_PREFIX_BLOCK - 1) / K_PREFIX_BLOCK;
    int64_t units[K_PREFIX_CHUNK];
    int bad[K_PREFIX_CHUNK];
    int64_t j = 0, done = 0;  // units[j..done) hold the integer sums in the binade done_E
    int done_E = 0;
    while (j < nb) {
        if (s >= 0x1p-100f && s < 0x1p100f) {
            const KBinade bn = k_binade<CHAIN>(s, chain);
            if (bn.E != done_E || done < j) done = j;
            done_E = bn.E;
            int64_t total = static_cast<int64_t>(s * bn.inv);  // an integer in [2^23, 2^24)
            for (;;) {
                if (done == j) {
                    const double entries = static_cast<double>(pos + j * K_PREFIX_BLOCK);
                    const double per_block = static_cast<double>(s) * K_PREFIX_BLOCK / (entries > 1.0 ? entries : 1.0);
                    const double fit = ((int64_t{1} << 24) - total) * static_cast<double>(bn.u) / per_block;
                    const int64_t want = fit < static_cast<double>(nb - j) ? j + 1 + static_cast<int64_t>(fit) : nb;
                    for (int64_t b = j; b < want; ++b) {  // want <= nb
                        const int64_t lo = b * K_PREFIX_BLOCK, hi = b + 1 < nb ? lo + K_PREFIX_BLOCK : len;
                        bad[b] = 1;
                        units[b] = 0;
                        if ((hi - lo) % K_LANES == 0) units[b] = k_block_units<CHAIN>(v, lo, hi, bn, chain, &bad[b]);
                    }
                    done = want;
                }
                for (; j < done && !bad[j] && total + units[j] < (int64_t{1} << 24); ++j) {
                    starts[j] = s;
                    total += units[j];
                    s = static_cast<float>(total) * bn.u;  // exact
                }
                if (j < done || j == nb) break;
            }
        }
        if (j < nb) {  // a tie, the binade left, s zero or tiny: this block by parts
            starts[j] = s;
            s = k_split_block<CHAIN>(v, chain, j * K_PREFIX_BLOCK, j + 1 < nb ? (j + 1) * K_PREFIX_BLOCK : len, s);
            ++j;
        }
    }
    return s;
}

static float k_prefix_blocks(const float* v, int64_t n, float* starts) {
    float s = 0.0f;
    const int64_t chunk = K_PREFIX_CHUNK * K_PREFIX_BLOCK;
    for (int64_t lo = 0; lo < n; lo += chunk) {
        const int64_t len = lo + chunk < n ? chunk : n - lo;
        s = k_prefix_chunk<false>(v + lo, len, lo, s, starts + lo / K_PREFIX_BLOCK, nullptr);
    }
    return s;
}

// k_prefix_blocks of the values v[i] = (((w[i] / divs[0]) / divs[1]) ...), zero at the ascending ids
// zero[0..nzero), without writing them. A division per divisor and entry would bound the pass (the divisions
// of one entry form a dependent chain): each entry's units are first approximated by one product,
// w[i] * (1 / prod divs) / u, and only the K_LANES entries where the approximation cannot decide the rounding
// (k_block_units) are divided exactly. The approximation's error: each of the ndiv float32 quotients, the
// float32 reciprocal (of a float64 product and division, relative 2^-53 each) and the product round once
// (relative 2^-24 each): (ndiv + 2) 2^-24 to first order, the rest far below one more 2^-24, so
// rel = (ndiv + 3) 2^-24; quotients in the subnormal range round by an absolute 2^-150 each, which later
// divisors by d < 1 magnify by at most prod max(1, 1 / d).
static float k_chain_prefix(const float* w, const float* divs, int ndiv, const int64_t* zero, int64_t nzero,
                            int64_t n, float* starts) {
    double prod = 1.0, amp = 1.0, peak = 1.0, inv = 1.0;  // peak: the largest prod_{j <= k} 1 / |divs[j]|
    for (int j = 0; j < ndiv; ++j) {
        const double d = __builtin_fabs(static_cast<double>(divs[j]));
        prod *= divs[j];
        if (d < 1.0) amp /= d;
        inv /= d;
        peak = inv > peak ? inv : peak;
    }
    const bool approx = prod >= 0x1p-100 && prod <= 0x1p100 && amp <= 0x1p100;  // else (or NaN): exact values
    // a weight below wlim keeps every quotient of its chain below FLT_MAX (each rounds up by at most 2^-24)
    const double wlim = 0x1.fffffep127 / (peak * (1.0 + (ndiv + 2) * 0x1p-20));
    const int64_t chunk = K_PREFIX_CHUNK * K_PREFIX_BLOCK;
    unsigned char zvec[K_PREFIX_CHUNK * K_PREFIX_BLOCK / K_LANES];
    KChain c{w, divs, ndiv, zero, nzero, 0, approx ? static_cast<float>(1.0 / prod) : 0.0f, static_cast<float>(wlim),
             (ndiv + 3) * 0x1p-24f, (ndiv + 3) * 0x1p-149 * amp, zvec};
    float blk[K_PREFIX_CHUNK * K_PREFIX_BLOCK];
    float s = 0.0f;
    int64_t z = 0;
    for (int64_t lo = 0; lo < n; lo += chunk) {
        const int64_t len = lo + chunk < n ? chunk : n - lo;
        c.lo = lo;
        // While the running sum is small next to the entries (the row's first chunk, mostly), most entries' units
        // are too large for the approximation to decide, and many are summed serially: all the chunk's exact
        // values at once (the divisions of different entries overlap) cost less than one entry at a time.
        bool exact = !approx || !(s >= 0x1p-100f && s < 0x1p100f);  // s > 0 here only after entries: lo > 0
        if (!exact) exact = c.rel * (static_cast<double>(s) / lo) * k_binade<true>(s, &c).inv >= 0x1p-6;
        __builtin_memset(zvec, 0, sizeof(zvec));
        for (; z < nzero && zero[z] < lo + len; ++z)
            if (zero[z] >= lo) zvec[(zero[z] - lo) / K_LANES] = 1;
        if (exact) {
            k_chain_values(c, lo, len, blk);
            s = k_prefix_chunk<false>(blk, len, lo, s, starts + lo / K_PREFIX_BLOCK, nullptr);
            continue;
        }
        s = k_prefix_chunk<true>(w + lo, len, lo, s, starts + lo / K_PREFIX_BLOCK, &c);
    }
    return s;
}

static double k_chain_div(const float* src, const float* divs, int ndiv, float* dst, int64_t lo, int64_t hi) {
    KSum64 dacc;
    int64_t i = lo;
    for (; i + K_LANES <= hi; i += K_LANES) {
        k_v8f x;
        __builtin_memcpy(&x, src + i, sizeof(x));
        for (int j = 0; j < ndiv; ++j) x = x / divs[j];
        __builtin_memcpy(dst + i, &x, sizeof(x));
        dacc.add(x);
    }
    double ds = dacc.lanes();
    for (; i < hi; ++i) {
        float x = src[i];
        for (int j = 0; j < ndiv; ++j) x = x / divs[j];
        dst[i] = x;
        ds += x;
    }
    return ds;
}

// dot(a, b[j]) for j < M, for the cosines of CASCADE's sets: per pair, float32 products summed in four
// independent float32 accumulators of K_LANES lanes (the add latency, not the loads, bounds a single chain),
// their lanes summed in float64. The M pairs share the loads of a (a node's cosines with its siblings or its
// children), and each pair's arithmetic is the same for every M. The reference's float32 matmul sums in an
// order of its BLAS's choosing, so no backend's cosine is bit-exact with it: each is within float32 rounding
// (CONTRACT §4). Widening every entry to float64 cost two conversions per product and made CASCADE's cosines a
// third of a shallow walk.
template <int M>
static void k_dot_group(const float* a, const float* const* b, int64_t n, double* out) {
    k_v8f acc0[M], acc1[M], acc2[M], acc3[M];  // four arrays of M (not M arrays of four): GCC keeps these in registers
    for (int j = 0; j < M; ++j) acc0[j] = acc1[j] = acc2[j] = acc3[j] = k_bc(0.0f);
    int64_t i = 0;
    for (; i + 4 * K_LANES <= n; i += 4 * K_LANES) {
        k_v8f x0, x1, x2, x3;
        __builtin_memcpy(&x0, a + i, sizeof(x0));
        __builtin_memcpy(&x1, a + i + K_LANES, sizeof(x1));
        __builtin_memcpy(&x2, a + i + 2 * K_LANES, sizeof(x2));
        __builtin_memcpy(&x3, a + i + 3 * K_LANES, sizeof(x3));
        for (int j = 0; j < M; ++j) {
            k_v8f y0, y1, y2, y3;
            __builtin_memcpy(&y0, b[j] + i, sizeof(y0));
            __builtin_memcpy(&y1, b[j] + i + K_LANES, sizeof(y1));
            __builtin_memcpy(&y2, b[j] + i + 2 * K_LANES, sizeof(y2));
            __builtin_memcpy(&y3, b[j] + i + 3 * K_LANES, sizeof(y3));
            acc0[j] += x0 * y0;
            acc1[j] += x1 * y1;
            acc2[j] += x2 * y2;
            acc3[j] += x3 * y3;
        }
    }
    for (; i + K_LANES <= n; i += K_LANES) {
        k_v8f x;
        __builtin_memcpy(&x, a + i, sizeof(x));
        for (int j = 0; j < M; ++j) {
            k_v8f y;
            __builtin_memcpy(&y, b[j] + i, sizeof(y));
            acc0[j] += x * y;
        }
    }
    for (int j = 0; j < M; ++j) {
        const k_v8f t = (acc0[j] + acc1[j]) + (acc2[j] + acc3[j]);
        double sum = 0.0;
        for (int l = 0; l < K_LANES; ++l) sum += t[l];
        for (int64_t k = i; k < n; ++k) sum += static_cast<double>(a[k]) * b[j][k];
        out[j] = sum;
    }
}

// Pairs per pass: the accumulators (4 per pair) and a's four vectors must stay in registers (32 with AVX-512,
// 16 ymm with AVX2; the generic copy's 8-lane vectors take two xmm registers each, so one pair at a time).
#if defined(K_USE_AVX512)
constexpr int K_DOT_GROUP = 4;
#elif defined(K_USE_FMA256)
constexpr int K_DOT_GROUP = 2;
#else
constexpr int K_DOT_GROUP = 1;
#endif

static void k_dots(const float* a, const float* const* b, int m, int64_t n, double* out) {
    int j = 0;
    for (; j + K_DOT_GROUP <= m; j += K_DOT_GROUP) k_dot_group<K_DOT_GROUP>(a, b + j, n, out + j);
    if (K_DOT_GROUP > 2 && m - j >= 2) {
        k_dot_group<2>(a, b + j, n, out + j);
        j += 2;
    }
    if (m - j == 1) k_dot_group<1>(a, b + j, n, out + j);
}

// sum of a[i] in float64, four independent accumulators.
static double k_sum_f64(const float* a, int64_t n) {
    KSum64 acc0, acc1;
    int64_t i = 0;
    for (; i + 2 * K_LANES <= n; i += 2 * K_LANES) {
        k_v8f x0, x1;
        __builtin_memcpy(&x0, a + i, sizeof(x0));
        __builtin_memcpy(&x1, a + i + K_LANES, sizeof(x1));
        acc0.add(x0);
        acc1.add(x1);
    }
    acc0.add(acc1);
    double s = acc0.lanes();
    for (; i < n; ++i) s += a[i];
    return s;
}

static float k_div_sum(const float* src, float d, float* dst, int64_t lo, int64_t hi) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = lo; i < hi; ++i) {
        const float v = src[i] / d;
        dst[i] = v;
        s += v;
    }
    return s;
}

static float k_sub_sum(const float* src, float d, const float* p, float dp, float* dst, int64_t lo, int64_t hi) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = lo; i < hi; ++i) {
        const float v = src[i] / d - p[i] / dp;
        const float o = v < 0.0f ? 0.0f : v;  // clamp(min=0) keeps NaN
        dst[i] = o;
        s += o;
    }
    return s;
}

static float k_cool_sum(const float* src, float d, const float* p, float dp, float w, float* dst, int64_t lo,
                        int64_t hi) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = lo; i < hi; ++i) {
        const float q = src[i] / d;
        const float pi = p[i] / dp;
        float f = (w * q) / pi;
        f = f > 1.0f ? 1.0f : f;  // clamp(max=1) keeps NaN
        f = pi > 0.0f ? f : 1.0f;
        const float v = q - pi * f;
        const float o = v < 0.0f ? 0.0f : v;
        dst[i] = o;
        s += o;
    }
    return s;
}

static float k_max_div(const float* src, float d, int64_t lo, int64_t hi) {
    float m = -__builtin_inff();
#pragma omp simd reduction(max : m)
    for (int64_t i = lo; i < hi; ++i) {
        const float v = src[i] / d;
        m = v > m ? v : m;
    }
    return m;
}

static float k_keep_ge_sum(const float* src, float t, float* dst, int64_t n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; ++i) {
        const float v = src[i] >= t ? src[i] : 0.0f;
        dst[i] = v;
        s += v;
    }
    return s;
}

static inline uint32_t k_f2key(float f) {  // order-preserving unsigned key of a non-NaN float
    uint32_t b;
    __builtin_memcpy(&b, &f, 4);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

static inline float k_key2f(uint32_t k) {
    const uint32_t b = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
    float f;
    __builtin_memcpy(&f, &b, 4);
    return f;
}

// k-th largest (1 <= k <= n) of v[0..n) (no NaN) by radix select on the order-preserving keys, 8 bits per
// pass taken from the top of the keys' actual range [min, max] (one pass finds it), so the first pass
// already spreads the entries over the bins however narrow their range; v is overwritten (keys, filtered in
// place). Every loop is branch-free over the entries: whether an entry stays is data-dependent.
typedef uint32_t k_u32_alias __attribute__((may_alias));

static float k_kth_largest(float* v, int64_t n, int64_t k) {
    k_u32_alias* key = reinterpret_cast<k_u32_alias*>(v);
    uint32_t lo = 0xffffffffu, hi = 0;
    for (int64_t i = 0; i < n; ++i) {
        const uint32_t x = k_f2key(v[i]);
        key[i] = x;
        lo = x < lo ? x : lo;
        hi = x > hi ? x : hi;
    }
    // four interleaved histograms: consecutive entries that fall in one bin (the candidates crowd near the
    // threshold) would otherwise chain every increment through a store and a reload of the same counter
    uint32_t cnt4[4][256];
    uint32_t cnt[256];
    while (hi != lo) {  // the k-th largest key is in [lo, hi]; every entry left is too
        const int sh = 24 - __builtin_clz(hi - lo) > 0 ? 24 - __builtin_clz(hi - lo) : 0;  // (hi - lo) >> sh < 256
        const uint32_t nb = ((hi - lo) >> sh) + 1;
        for (int c = 0; c < 4; ++c) __builtin_memset(cnt4[c], 0, sizeof(uint32_t) * nb);
        int64_t h = 0;
        for (; h + 4 <= n; h += 4) {
            cnt4[0][(key[h] - lo) >> sh]++;
            cnt4[1][(key[h + 1] - lo) >> sh]++;
            cnt4[2][(key[h + 2] - lo) >> sh]++;
            cnt4[3][(key[h + 3] - lo) >> sh]++;
        }
        for (; h < n; ++h) cnt4[0][(key[h] - lo) >> sh]++;
        for (uint32_t b = 0; b < nb; ++b) cnt[b] = (cnt4[0][b] + cnt4[1][b]) + (cnt4[2][b] + cnt4[3][b]);
        uint32_t bin = nb - 1;
        while (static_cast<int64_t>(cnt[bin]) < k) {  // walk down from the top bin
            k -= cnt[bin];
            --bin;
        }
        int64_t m = 0, i = 0;
#if defined(K_USE_AVX512)
        // keep the bin's keys, 16 at a time (the store at m <= i only overwrites keys already read)
        const __m512i vlo = _mm512_set1_epi32(static_cast<int>(lo)), vbin = _mm512_set1_epi32(static_cast<int>(bin));
        const __m128i vsh = _mm_cvtsi32_si128(sh);
        for (; i + 16 <= n; i += 16) {
            const __m512i x = _mm512_loadu_si512(reinterpret_cast<const void*>(key + i));
            const __mmask16 in = _mm512_cmpeq_epi32_mask(_mm512_srl_epi32(_mm512_sub_epi32(x, vlo), vsh), vbin);
            _mm512_storeu_si512(reinterpret_cast<void*>(key + m), _mm512_maskz_compress_epi32(in, x));
            m += __builtin_popcount(in);
        }
#endif
        for (; i < n; ++i) {
            const uint32_t x = key[i];
            key[m] = x;
            m += ((x - lo) >> sh) == bin ? 1 : 0;
        }
        n = m;
        const uint32_t base = lo + (bin << sh);
        const uint32_t top = base + ((1u << sh) - 1u);
        hi = top < hi ? top : hi;
        lo = base;
    }
    return k_key2f(lo);
}

// Kernels::keep_pairs_ge. AVX-512 keeps a group's pairs by compress, 16 at a time: the group's stores at
// vals + m, m <= j, reach at most entry j + 15, which the group has already read. Elsewhere a branch-free loop
// (the kept entries of random rows would mispredict a branch about half the time).
static int64_t k_keep_pairs_ge(float* vals, int32_t* idx, int64_t n, float t) {
    int64_t m = 0, j = 0;
#if defined(K_USE_AVX512)
    const __m512 tv = _mm512_set1_ps(t);
    for (; j + 16 <= n; j += 16) {
        const __m512 x = _mm512_loadu_ps(vals + j);
        const __m512i id = _mm512_loadu_si512(reinterpret_cast<const void*>(idx + j));
        const __mmask16 keep = _mm512_cmp_ps_mask(x, tv, _CMP_GE_OQ);
        _mm512_storeu_ps(vals + m, _mm512_maskz_compress_ps(keep, x));
        _mm512_storeu_si512(reinterpret_cast<void*>(idx + m), _mm512_maskz_compress_epi32(keep, id));
        m += __builtin_popcount(static_cast<unsigned>(keep));
    }
#endif
    for (; j < n; ++j) {
        const float x = vals[j];
        const int32_t id = idx[j];
        vals[m] = x;
        idx[m] = id;
        m += x >= t ? 1 : 0;
    }
    return m;
}

static const Kernels k_table = {k_row_max,   k_row_exp_sum,   k_row_sum_bound,  k_row_weight_at,
                                k_row_compact_ge, k_row_max_compact_ge, k_row_scaled_at, k_row_sample,
                                k_exp_sum,   k_div_sum,       k_sub_sum,        k_cool_sum,      k_max_div,
                                k_keep_ge_sum, k_chain_div,   k_prefix_blocks,  k_chain_prefix,  k_sum_f64,
                                k_dots,      k_kth_largest,   k_keep_pairs_ge,  K_ISA_NAME};
