// AArch64 NEON attention kernels (4 lanes): scores 4 rows x 16 keys, P V 4 rows x 16 dims per register
// block (16 accumulators of the 32 registers). Same arithmetic as the scalar kernels
// (attention_kernels.h); the bf16 path takes the two fmas of each step, as on AVX2.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "kernels/attention_kernels.h"
#include "kernels/attention_simd.h"

namespace tg {

const AttnKernels& attn_kernels_neon() {
    static const AttnKernels k = make_attn_kernels<4, 4, 4, 4>();
    return k;
}

}  // namespace tg
