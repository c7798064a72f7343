// Baseline-ISA copy of the row kernels (kernels_impl.h) and the run-time ISA choice.
#include "kernels.h"

namespace ck {
namespace {
#define K_ISA_NAME "generic"
#include "kernels_impl.h"
#undef K_ISA_NAME
}  // namespace

const Kernels* kernels_generic() { return &k_table; }

const Kernels* select_kernels() {
#if defined(__x86_64__) || defined(__i386__)
    static const Kernels* chosen = [] {
        __builtin_cpu_init();
        const Kernels* avx2 = kernels_avx2();
        return (avx2 && __builtin_cpu_supports("avx2")) ? avx2 : kernels_generic();
    }();
    return chosen;
#else
    return kernels_generic();
#endif
}

}  // namespace ck
