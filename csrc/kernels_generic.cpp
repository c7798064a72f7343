// Baseline-ISA copy of the row kernels (kernels_impl.h) and the run-time ISA choice.
#include "kernels.h"

#include <cstdlib>
#include <string>

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
        const char* cap = std::getenv("CASCADE_KERNELS_ISA");
        const std::string want = cap ? cap : "avx512";
        const Kernels* avx512 = kernels_avx512();
        const Kernels* avx2 = kernels_avx2();
        if (want == "avx512" && avx512 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
            return avx512;
        if (want != "generic" && avx2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return avx2;
        return kernels_generic();
    }();
    return chosen;
#else
    return kernels_generic();
#endif
}

}  // namespace ck
