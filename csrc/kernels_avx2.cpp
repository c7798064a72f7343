// AVX2 copy of the row kernels (kernels_impl.h), chosen at run time when the CPU has AVX2 and FMA.
// No FMA contraction: a + b * c rounds twice, like torch's separate element-wise ops (the exponential's
// fused multiply-adds are explicit, kernels_impl.h).
#include "kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#pragma GCC optimize("fp-contract=off")
namespace ck {
namespace {
#define K_ISA_NAME "avx2"
#define K_USE_FMA256 1
#include "kernels_impl.h"
#undef K_USE_FMA256
#undef K_ISA_NAME
}  // namespace
const Kernels* kernels_avx2() { return &k_table; }
}  // namespace ck
#pragma GCC pop_options
#else
namespace ck {
const Kernels* kernels_avx2() { return nullptr; }
}  // namespace ck
#endif
