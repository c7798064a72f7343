// Philox-4x32-10 exactly as cascade_kernels/philox.py (= Triton's tl.rand): key (seed_lo, seed_hi),
// counter (index, stream, 0, 0), first output word, mapped to [0, 1) as tl.rand does.
#pragma once
#include <cstdint>

namespace ck {

inline uint32_t philox_first_word(int64_t seed, uint32_t c0, uint32_t c1) {
    uint32_t k0 = static_cast<uint32_t>(static_cast<uint64_t>(seed) & 0xFFFFFFFFu);
    uint32_t k1 = static_cast<uint32_t>(static_cast<uint64_t>(seed) >> 32);
    uint32_t c2 = 0, c3 = 0;
    for (int round = 0; round < 10; ++round) {
        const uint64_t pb = static_cast<uint64_t>(0xCD9E8D57u) * c2;
        const uint64_t pa = static_cast<uint64_t>(0xD2511F53u) * c0;
        const uint32_t n0 = static_cast<uint32_t>(pb >> 32) ^ c1 ^ k0;
        const uint32_t n1 = static_cast<uint32_t>(pb);
        const uint32_t n2 = static_cast<uint32_t>(pa >> 32) ^ c3 ^ k1;
        const uint32_t n3 = static_cast<uint32_t>(pa);
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    return c0;
}

// tl.rand's map: bitcast to int32, negative -> ~x, float32(x) * 4.6566127342e-10f.
inline float uint32_to_uniform(uint32_t x) {
    int32_t s = static_cast<int32_t>(x);
    if (s < 0) s = ~s;
    return static_cast<float>(s) * 4.6566127342e-10f;
}

// uniform(seed, stream, index) of philox.py: counter (index & 0xffffffff, stream).
inline float uniform(int64_t seed, uint32_t stream, int64_t index) {
    return uint32_to_uniform(
        philox_first_word(seed, static_cast<uint32_t>(static_cast<uint64_t>(index) & 0xFFFFFFFFu), stream));
}

}  // namespace ck
