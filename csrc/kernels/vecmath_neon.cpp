// AArch64 NEON versions of the vecmath.h kernels (4 lanes); same arithmetic as the scalar ones.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "kernels/vecmath_simd.h"

namespace tg {

const VecMath& vecmath_neon() {
    static const VecMath k = {exp_rows, erf_rows, gelu_erf_rows, gelu_tanh_rows, exp_sum_rows, max_rows, to_f16_rows, from_f16_rows};
    return k;
}

}  // namespace tg
