// IEEE half and bfloat16 <-> float conversions (scalar, exact, round-to-nearest-even). The half ones
// give the same bits as the F16C instructions the SIMD paths use (NaN included).
#pragma once
#include <cstdint>
#include <cstring>

namespace tg {

inline float fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {  // subnormal: normalise
            int e = -1;
            do { e++; man <<= 1; } while ((man & 0x400) == 0);
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 0x1f) {  // inf, or NaN made quiet (payload kept), as the F16C conversion does
        bits = sign | 0x7f800000u | (man << 13) | (man ? 0x400000u : 0u);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

inline uint16_t fp32_to_fp16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffff;
    if (absx > 0x7f800000u) return (uint16_t)(sign | 0x7e00 | ((absx >> 13) & 0x3ff));  // NaN
    if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);                           // overflow -> inf
    if (absx < 0x38800000u) {                                                             // subnormal or zero
        if (absx < 0x33000000u) return (uint16_t)sign;
        uint32_t e = absx >> 23, m = (absx & 0x7fffff) | 0x800000;
        int shift = 126 - (int)e;  // 14 - (e - 112)
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = absx - 0x38000000u;  // rebias exponent 127 -> 15
    uint32_t out = r >> 13, rem = r & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (out & 1))) out++;
    return (uint16_t)(sign | out);
}

inline float bf16_to_fp32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

// float32 -> bfloat16 bits for the bf16 attention: round to nearest even, except that |x| < 2^-50
// (zeros, denormals, tiny values) gives +0 (so no product or sum of the kernels is ever denormal,
// where vdpbf16ps would flush it) and NaN gives a quiet NaN with the same sign.
inline uint16_t bf16_round(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    const uint32_t a = u & 0x7fffffffu;
    if (a < 0x26800000u) return 0;                        // 2^-50
    if (a > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // NaN
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

}  // namespace tg
