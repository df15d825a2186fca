// AVX2 + FMA + F16C attention kernels (8 lanes): scores 4 rows x 24 keys, P V 4 rows x 24 dims
// per register block. Same arithmetic as the scalar kernels (attention_kernels.h).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "kernels/attention_kernels.h"
#include "kernels/attention_simd.h"

namespace tg {

const AttnKernels& attn_kernels_avx2() {
    static const AttnKernels k = make_attn_kernels<4, 3, 4, 3>();
    return k;
}

}  // namespace tg
