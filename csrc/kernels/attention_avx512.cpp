// AVX-512 attention kernels (16 lanes): scores 6 rows x 64 keys, P V 4 rows x 96 dims per register
// block. Same arithmetic as the scalar kernels (attention_kernels.h).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "kernels/attention_kernels.h"
#include "kernels/attention_simd.h"

namespace tg {

const AttnKernels& attn_kernels_avx512() {
    static const AttnKernels k = make_attn_kernels<6, 4, 4, 6>();
    return k;
}

}  // namespace tg
