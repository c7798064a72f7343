// AVX2 copy of the row kernels (kernels_impl.h), chosen at run time when the CPU has AVX2.
// No FMA: a + b * c must round twice, like torch's separate element-wise ops.
#include "kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2")
#pragma GCC optimize("fp-contract=off")
namespace ck {
namespace {
#define K_ISA_NAME "avx2"
#include "kernels_impl.h"
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
