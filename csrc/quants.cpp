// Scalar reference quantizers and dequantizers (see quants.h for the formats).
// Every float operation here is written out one rounding at a time: the results must not depend
// on the compiler fusing a multiply and an add, so contraction is switched off for this file.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "quants.h"

#include <cmath>
#include <cstring>

#include "errors.h"
#include "fp16.h"

namespace tg {

namespace {

// Round to nearest, ties to even, for |f| < 2^22 (ggml's nearest_int).
inline int nearest_int(float f) {
    float v = f + 12582912.f;
    int32_t i;
    std::memcpy(&i, &v, 4);
    return (i & 0x007fffff) - 0x00400000;
}

// float -> int8 for values that are already integral; NaN and out-of-range values are clamped
// instead of being undefined behaviour.
inline int8_t to_i8(float v) {
    if (!(v >= -128.f)) return v != v ? 0 : -128;
    if (v > 127.f) return 127;
    return (int8_t)(int)v;
}

void quantize_row_q4_0(const float* x, BlockQ4_0* y, int64_t k) {
    for (int64_t i = 0; i < k / QK4_0; i++, x += QK4_0) {
        // max = first value of largest magnitude, as gguf-py's argmax (for a block of -0.0 this
        // gives scale +0.0 where ggml's C loop gives -0.0; values are identical).
        float amax = std::fabs(x[0]), max = x[0];
        for (int j = 1; j < QK4_0; j++) {
            if (amax < std::fabs(x[j])) {
                amax = std::fabs(x[j]);
                max = x[j];
            }
        }
        const float d = max / -8.f;
        const float id = d != 0.f ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        uint8_t q[QK4_0];
        for (int j = 0; j < QK4_0; j++) {
            float t = x[j] * id;
            t = t + 8.5f;
            t = std::trunc(t);
            int v = (t != t || t < 0.f) ? 0 : (t > 15.f ? 15 : (int)t);
            q[j] = (uint8_t)v;
        }
        for (int j = 0; j < QK4_0 / 2; j++) y[i].qs[j] = (uint8_t)(q[j] | (q[j + 16] << 4));
    }
}

// Weighted min/scale search for values with a min (ggml's make_qkx2_quants): the error is the
// weighted squared difference, or the weighted absolute one with use_mad (Q2_K).
float make_qkx2_quants(int n, int nmax, const float* x, const float* w, uint8_t* L, float* the_min,
                       uint8_t* Laux, float rmin, float rdelta, int nstep, bool use_mad) {
    float min = x[0], max = x[0];
    float sum_w = w[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        float t = w[i] * x[i];
        sum_x += t;
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; i++) L[i] = 0;
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; i++) {
        int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)(l < 0 ? 0 : (l > nmax ? nmax : l));
        float diff = scale * L[i];
        diff = diff + min;
        diff = diff - x[i];
        diff = use_mad ? std::fabs(diff) : diff * diff;
        float t = w[i] * diff;
        best_error += t;
    }
    for (int is = 0; is <= nstep; is++) {
        float num = rdelta * is;
        num = rmin + num;
        num = num + nmax;
        iscale = num / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = nearest_int(iscale * (x[i] - min));
            l = l < 0 ? 0 : (l > nmax ? nmax : l);
            Laux[i] = (uint8_t)l;
            float wl = w[i] * l;
            sum_l += wl;
            float t = wl * l;
            sum_l2 += t;
            t = wl * x[i];
            sum_xl += t;
        }
        float a = sum_w * sum_l2, b = sum_l * sum_l;
        float D = a - b;
        if (D > 0) {
            a = sum_w * sum_xl;
            b = sum_x * sum_l;
            float this_scale = (a - b) / D;
            a = sum_l2 * sum_x;
            b = sum_l * sum_xl;
            float this_min = (a - b) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; i++) {
                float diff = this_scale * Laux[i];
                diff = diff + this_min;
                diff = diff - x[i];
                diff = use_mad ? std::fabs(diff) : diff * diff;
                float t = w[i] * diff;
                cur_error += t;
            }
            if (cur_error < best_error) {
                for (int i = 0; i < n; i++) L[i] = Laux[i];
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

// The scales, mins and values (L[256], 0..nmax) of one Q4_K / Q5_K super-block, as ggml's
// quantize_row_q4_K_ref / quantize_row_q5_K_ref choose them (the search parameters differ).
void kquant_minmax_block(const float* x, int nmax, float rmin, float rdelta, int nstep, uint16_t* d_out,
                         uint16_t* dmin_out, uint8_t* sc_out, uint8_t* L) {
    uint8_t Laux[32];
    float weights[32], mins[QK_K / 32], scales[QK_K / 32];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 32; j++) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++) {
            float t = x[32 * j + l] * x[32 * j + l];
            sum_x2 += t;
        }
        float av_x = std::sqrt(sum_x2 / 32);
        for (int l = 0; l < 32; l++) weights[l] = av_x + std::fabs(x[32 * j + l]);
        scales[j] = make_qkx2_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, rmin, rdelta, nstep, false);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    std::memset(sc_out, 0, 12);
    for (int j = 0; j < QK_K / 32; j++) {
        int ls = nearest_int(inv_scale * scales[j]);
        int lm = nearest_int(inv_min * mins[j]);
        uint8_t s8 = (uint8_t)ls, m8 = (uint8_t)lm;  // ggml stores through uint8_t first
        if (s8 > 63) s8 = 63;
        if (m8 > 63) m8 = 63;
        if (j < 4) {
            sc_out[j] = s8;
            sc_out[j + 4] = m8;
        } else {
            sc_out[j + 4] = (uint8_t)((s8 & 0xF) | ((m8 & 0xF) << 4));
            sc_out[j - 4] |= (uint8_t)((s8 >> 4) << 6);
            sc_out[j] |= (uint8_t)((m8 >> 4) << 6);
        }
    }
    *d_out = fp32_to_fp16(max_scale / 63.f);
    *dmin_out = fp32_to_fp16(max_min / 63.f);
    for (int j = 0; j < QK_K / 32; j++) {
        uint8_t sc, m;
        q4k_scale_min(j, sc_out, &sc, &m);
        const float d = fp16_to_fp32(*d_out) * sc;
        if (d == 0.f) continue;
        const float dm = fp16_to_fp32(*dmin_out) * m;
        for (int ii = 0; ii < 32; ii++) {
            int l = nearest_int((x[32 * j + ii] + dm) / d);
            L[32 * j + ii] = (uint8_t)(l < 0 ? 0 : (l > nmax ? nmax : l));
        }
    }
}

void quantize_row_q4_K(const float* x, BlockQ4_K* y, int64_t k) {
    uint8_t L[QK_K];
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K) {
        BlockQ4_K& b = y[i];
        kquant_minmax_block(x, 15, -1.f, 0.1f, 20, &b.d, &b.dmin, b.scales, L);
        uint8_t* q = b.qs;
        for (int j = 0; j < QK_K; j += 64, q += 32)
            for (int l = 0; l < 32; l++) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
    }
}

void quantize_row_q5_K(const float* x, BlockQ5_K* y, int64_t k) {
    uint8_t L[QK_K];
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K) {
        BlockQ5_K& b = y[i];
        kquant_minmax_block(x, 31, -0.5f, 0.1f, 15, &b.d, &b.dmin, b.scales, L);
        std::memset(b.qh, 0, sizeof b.qh);
        uint8_t* ql = b.qs;
        uint8_t m1 = 1, m2 = 2;
        for (int n = 0; n < QK_K; n += 64, ql += 32) {
            for (int j = 0; j < 32; j++) {
                int l1 = L[n + j], l2 = L[n + j + 32];
                if (l1 > 15) { l1 -= 16; b.qh[j] |= m1; }
                if (l2 > 15) { l2 -= 16; b.qh[j] |= m2; }
                ql[j] = (uint8_t)(l1 | (l2 << 4));
            }
            m1 = (uint8_t)(m1 << 2);
            m2 = (uint8_t)(m2 << 2);
        }
    }
}

// C's float -> integer conversion of ggml's (int8_t)(v) / (uint8_t)(v) casts for the values they
// meet (truncation toward zero); NaN gives 0 and out-of-range values are clamped instead of being
// undefined behaviour.
inline int trunc_cast(float v, int lo, int hi) {
    if (!(v == v)) return 0;
    float t = std::trunc(v);
    return t < (float)lo ? lo : (t > (float)hi ? hi : (int)t);
}

// Minimum and maximum of a block as ggml's Q4_1 / Q5_1 reference quantizers find them.
inline void block_min_max(const float* x, float* mn, float* mx) {
    float lo = 3.402823466e+38f, hi = -3.402823466e+38f;
    for (int j = 0; j < 32; j++) {
        if (x[j] < lo) lo = x[j];
        if (x[j] > hi) hi = x[j];
    }
    *mn = lo;
    *mx = hi;
}

void quantize_row_q4_1(const float* x, BlockQ4_1* y, int64_t k) {
    for (int64_t i = 0; i < k / 32; i++, x += 32) {
        float min, max;
        block_min_max(x, &min, &max);
        const float d = (max - min) / 15;
        const float id = d != 0.f ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        y[i].m = fp32_to_fp16(min);
        for (int j = 0; j < 16; j++) {
            float x0 = x[j] - min, x1 = x[j + 16] - min;
            x0 = x0 * id;
            x1 = x1 * id;
            int q0 = trunc_cast(x0 + 0.5f, -128, 127), q1 = trunc_cast(x1 + 0.5f, -128, 127);
            uint8_t u0 = (uint8_t)(q0 < 15 ? q0 : 15), u1 = (uint8_t)(q1 < 15 ? q1 : 15);  // MIN(15, int8) as uint8
            y[i].qs[j] = (uint8_t)(u0 | (u1 << 4));
        }
    }
}

inline void store_qh(uint8_t* qh, uint32_t h) {
    for (int b = 0; b < 4; b++) qh[b] = (uint8_t)(h >> (8 * b));
}

void quantize_row_q5_0(const float* x, BlockQ5_0* y, int64_t k) {
    for (int64_t i = 0; i < k / 32; i++, x += 32) {
        float amax = 0.f, max = 0.f;
        for (int j = 0; j < 32; j++) {
            if (amax < std::fabs(x[j])) {
                amax = std::fabs(x[j]);
                max = x[j];
            }
        }
        const float d = max / -16;
        const float id = d != 0.f ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            const float x0 = x[j] * id, x1 = x[j + 16] * id;
            int q0 = trunc_cast(x0 + 16.5f, -128, 127), q1 = trunc_cast(x1 + 16.5f, -128, 127);
            uint8_t u0 = (uint8_t)(q0 < 31 ? q0 : 31), u1 = (uint8_t)(q1 < 31 ? q1 : 31);
            y[i].qs[j] = (uint8_t)((u0 & 0x0F) | ((u1 & 0x0F) << 4));
            qh |= ((uint32_t)(u0 & 0x10u) >> 4) << j;
            qh |= ((uint32_t)(u1 & 0x10u) >> 4) << (j + 16);
        }
        store_qh(y[i].qh, qh);
    }
}

void quantize_row_q5_1(const float* x, BlockQ5_1* y, int64_t k) {
    for (int64_t i = 0; i < k / 32; i++, x += 32) {
        float min, max;
        block_min_max(x, &min, &max);
        const float d = (max - min) / 31;
        const float id = d != 0.f ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        y[i].m = fp32_to_fp16(min);
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            float x0 = x[j] - min, x1 = x[j + 16] - min;
            x0 = x0 * id;
            x1 = x1 * id;
            uint8_t u0 = (uint8_t)trunc_cast(x0 + 0.5f, 0, 255), u1 = (uint8_t)trunc_cast(x1 + 0.5f, 0, 255);
            y[i].qs[j] = (uint8_t)((u0 & 0x0F) | ((u1 & 0x0F) << 4));
            qh |= ((uint32_t)(u0 & 0x10u) >> 4) << j;
            qh |= ((uint32_t)(u1 & 0x10u) >> 4) << (j + 16);
        }
        store_qh(y[i].qh, qh);
    }
}

// ---- IQ4_NL / IQ4_XS (ggml's quantize_row_iq4_nl_impl, no importance matrix, ntry = 7) ------------

// Index of the kIQ4NL value nearest to x (ggml's best_index_int8: bisection, then the nearer of the
// two neighbours, the upper one on a tie).
inline int iq4_index(float x) {
    if (x <= kIQ4NL[0]) return 0;
    if (x >= kIQ4NL[15]) return 15;
    int lo = 0, hi = 15;
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (x < kIQ4NL[mid]) hi = mid;
        else lo = mid;
    }
    return x - kIQ4NL[hi - 1] < kIQ4NL[hi] - x ? hi - 1 : hi;
}

// Weighted (w = x^2) sums of q*x and q*q for the values of x*id.
inline void iq4_fit(const float* x, float id, float* sumqx, float* sumq2) {
    float sx = 0.f, s2 = 0.f;
    for (int j = 0; j < 32; j++) {
        const float w = x[j] * x[j];
        const float q = kIQ4NL[iq4_index(id * x[j])];
        float t = w * q;
        sx += t * x[j];
        t = w * q;
        s2 += t * q;
    }
    *sumqx = sx;
    *sumq2 = s2;
}

// Scale of one block of 32: the least-squares scale of the value assignment that the first of 15
// trial scales around max / kIQ4NL[0] (or the starting one) gives best.
float iq4_block_scale(const float* x) {
    float amax = 0.f, max = 0.f;
    for (int j = 0; j < 32; j++) {
        const float ax = std::fabs(x[j]);
        if (ax > amax) {
            amax = ax;
            max = x[j];
        }
    }
    if (amax < 1e-15f) return 0.f;
    float d = -max / kIQ4NL[0];
    float sumqx, sumq2;
    iq4_fit(x, 1.f / d, &sumqx, &sumq2);
    d = sumq2 > 0.f ? sumqx / sumq2 : 0.f;
    float best = d * sumqx;
    for (int itry = -7; itry <= 7; itry++) {
        const float id = (float)(itry + kIQ4NL[0]) / max;
        iq4_fit(x, id, &sumqx, &sumq2);
        if (sumq2 > 0.f && sumqx * sumqx > best * sumq2) {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    return d;
}

// 32 values as indices of x*id, packed as Q4_0's (value l low nibble, l + 16 high).
inline void iq4_pack(const float* x, float id, uint8_t* qs) {
    for (int j = 0; j < 16; j++)
        qs[j] = (uint8_t)(iq4_index(id * x[j]) | (iq4_index(id * x[j + 16]) << 4));
}

void quantize_row_iq4_nl(const float* x, BlockIQ4_NL* y, int64_t k) {
    for (int64_t i = 0; i < k / 32; i++, x += 32) {
        const float d = iq4_block_scale(x);
        y[i].d = fp32_to_fp16(d);
        iq4_pack(x, d != 0.f ? 1.f / d : 0.f, y[i].qs);
    }
}

void quantize_row_iq4_xs(const float* x, BlockIQ4_XS* y, int64_t k) {
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K) {
        float scales[8], max_scale = 0.f, amax_scale = 0.f;
        for (int j = 0; j < 8; j++) {
            scales[j] = iq4_block_scale(x + 32 * j);
            if (std::fabs(scales[j]) > amax_scale) {
                amax_scale = std::fabs(scales[j]);
                max_scale = scales[j];
            }
        }
        // The super-block scale maps the largest sub-block scale to -32, the 6-bit end with the
        // larger magnitude, keeping its sign in d.
        const float d = -max_scale / 32;
        const float id = d != 0.f ? 1.f / d : 0.f;
        y[i].d = fp32_to_fp16(d);
        y[i].scales_h = 0;
        std::memset(y[i].scales_l, 0, sizeof y[i].scales_l);
        for (int j = 0; j < 8; j++) {
            int l = nearest_int(id * scales[j]);
            l = l < -32 ? -32 : (l > 31 ? 31 : l);
            const float dl = d * (float)l;
            iq4_pack(x + 32 * j, dl != 0.f ? 1.f / dl : 0.f, y[i].qs + 16 * j);
            l += 32;
            y[i].scales_l[j / 2] = (uint8_t)(y[i].scales_l[j / 2] | ((l & 0xF) << (4 * (j % 2))));
            y[i].scales_h = (uint16_t)(y[i].scales_h | ((l >> 4) << (2 * j)));
        }
    }
}

// Signed scale search for 6-bit values (ggml's make_qx_quants with rmse_type 1, no weights).
float make_qx_quants(int n, int nmax, const float* x, int8_t* L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        float ax = std::fabs(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < 1e-15f) {
        for (int i = 0; i < n; i++) L[i] = 0;
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = nearest_int(iscale * x[i]);
        l = l < -nmax ? -nmax : (l > nmax - 1 ? nmax - 1 : l);
        L[i] = (int8_t)(l + nmax);
        float w = x[i] * x[i];
        float t = w * x[i];
        t = t * l;
        sumlx += t;
        t = w * l;
        t = t * l;
        suml2 += t;
    }
    float scale = suml2 != 0.f ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        float num = 0.1f * is;
        num = nmax + num;
        iscale = -num / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = nearest_int(iscale * x[i]);
            l = l < -nmax ? -nmax : (l > nmax - 1 ? nmax - 1 : l);
            float w = x[i] * x[i];
            float t = w * x[i];
            t = t * l;
            sumlx += t;
            t = w * l;
            t = t * l;
            suml2 += t;
        }
        float lhs = sumlx * sumlx, rhs = best * suml2;
        if (suml2 > 0 && lhs > rhs) {
            for (int i = 0; i < n; i++) {
                int l = nearest_int(iscale * x[i]);
                L[i] = (int8_t)(nmax + (l < -nmax ? -nmax : (l > nmax - 1 ? nmax - 1 : l)));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

void quantize_row_q2_K(const float* x, BlockQ2_K* y, int64_t k) {
    uint8_t L[QK_K], Laux[16];
    float weights[16], mins[QK_K / 16], scales[QK_K / 16];
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K) {
        BlockQ2_K& b = y[i];
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            for (int l = 0; l < 16; l++) weights[l] = std::fabs(x[16 * j + l]);
            scales[j] = make_qkx2_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, true);
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        // 4-bit scales and mins; ggml stores nearest_int's result through uint8_t
        if (max_scale > 0) {
            const float iscale = 15.f / max_scale;
            for (int j = 0; j < QK_K / 16; j++) b.scales[j] = (uint8_t)nearest_int(iscale * scales[j]);
            b.d = fp32_to_fp16(max_scale / 15.f);
        } else {
            std::memset(b.scales, 0, sizeof b.scales);
            b.d = fp32_to_fp16(0.f);
        }
        if (max_min > 0) {
            const float iscale = 15.f / max_min;
            for (int j = 0; j < QK_K / 16; j++) b.scales[j] |= (uint8_t)(nearest_int(iscale * mins[j]) << 4);
            b.dmin = fp32_to_fp16(max_min / 15.f);
        } else {
            b.dmin = fp32_to_fp16(0.f);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            const float d = fp16_to_fp32(b.d) * (b.scales[j] & 0xF);
            if (d == 0.f) continue;  // keeps the values of the search above, as ggml
            const float dm = fp16_to_fp32(b.dmin) * (b.scales[j] >> 4);
            for (int ii = 0; ii < 16; ii++) {
                const int l = nearest_int((x[16 * j + ii] + dm) / d);
                L[16 * j + ii] = (uint8_t)(l < 0 ? 0 : (l > 3 ? 3 : l));
            }
        }
        for (int c = 0; c < 2; c++)
            for (int l = 0; l < 32; l++) {
                const uint8_t* q = L + 128 * c + l;
                b.qs[32 * c + l] = (uint8_t)(q[0] | (q[32] << 2) | (q[64] << 4) | (q[96] << 6));
            }
    }
}

// Signed scale search for 3-bit values (ggml's make_q3_quants with do_rmse): values l in
// [-nmax, nmax - 1] from the absmax scale, then up to 5 passes that move single values to the level
// the regression without them prefers while that lowers the weighted (x^2) error. L gets l + nmax.
float make_q3_quants(int n, int nmax, const float* x, int8_t* L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        float ax = std::fabs(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < 1e-15f) {
        for (int i = 0; i < n; i++) L[i] = 0;
        return 0.f;
    }
    const float iscale = -nmax / max;
    auto clamp = [nmax](int l) { return l < -nmax ? -nmax : (l > nmax - 1 ? nmax - 1 : l); };
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        const int l = clamp(nearest_int(iscale * x[i]));
        L[i] = (int8_t)l;
        const float w = x[i] * x[i];
        float t = w * x[i];
        t = t * l;
        sumlx += t;
        t = w * l;
        t = t * l;
        suml2 += t;
    }
    for (int itry = 0; itry < 5; itry++) {
        int n_changed = 0;
        for (int i = 0; i < n; i++) {
            const float w = x[i] * x[i];
            float t = w * x[i];
            t = t * L[i];
            float slx = sumlx - t;
            if (slx > 0) {
                t = w * L[i];
                t = t * L[i];
                float sl2 = suml2 - t;
                t = x[i] * sl2;
                const int new_l = clamp(nearest_int(t / slx));
                if (new_l != L[i]) {
                    t = w * x[i];
                    t = t * new_l;
                    slx += t;
                    t = w * new_l;
                    t = t * new_l;
                    sl2 += t;
                    float lhs = slx * slx, rhs = sumlx * sumlx;
                    lhs = lhs * suml2;
                    rhs = rhs * sl2;
                    if (sl2 > 0 && lhs > rhs) {
                        L[i] = (int8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed++;
                    }
                }
            }
        }
        if (!n_changed) break;
    }
    for (int i = 0; i < n; i++) L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

void quantize_row_q3_K(const float* x, BlockQ3_K* y, int64_t k) {
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K) {
        BlockQ3_K& b = y[i];
        float max_scale = 0, amax = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j);
            const float a = std::fabs(scales[j]);
            if (a > amax) {
                amax = a;
                max_scale = scales[j];
            }
        }
        std::memset(b.scales, 0, sizeof b.scales);
        if (max_scale != 0.f) {  // (NaN included, as ggml's `if (max_scale)`)
            const float iscale = -32.f / max_scale;
            for (int j = 0; j < QK_K / 16; j++) {
                int l = (int8_t)nearest_int(iscale * scales[j]);  // ggml stores through int8_t first
                l = (l < -32 ? -32 : (l > 31 ? 31 : l)) + 32;
                if (j < 8) b.scales[j] = (uint8_t)(l & 0xF);
                else b.scales[j - 8] |= (uint8_t)((l & 0xF) << 4);
                b.scales[j % 4 + 8] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
            }
            b.d = fp32_to_fp16(1 / iscale);
        } else {
            b.d = fp32_to_fp16(0.f);
        }
        int8_t sc[16];
        q3k_scales(b.scales, sc);
        for (int j = 0; j < QK_K / 16; j++) {
            const float d = fp16_to_fp32(b.d) * sc[j];
            if (d == 0.f) continue;  // keeps the values of the search above, as ggml
            for (int ii = 0; ii < 16; ii++) {
                int l = nearest_int(x[16 * j + ii] / d);
                L[16 * j + ii] = (int8_t)((l < -4 ? -4 : (l > 3 ? 3 : l)) + 4);
            }
        }
        std::memset(b.hmask, 0, sizeof b.hmask);
        for (int e = 0; e < QK_K; e++) {
            if (L[e] > 3) {
                b.hmask[e % 32] |= (uint8_t)(1 << (e / 32));
                L[e] = (int8_t)(L[e] - 4);
            }
        }
        for (int c = 0; c < 2; c++)
            for (int l = 0; l < 32; l++) {
                const int8_t* q = L + 128 * c + l;
                b.qs[32 * c + l] = (uint8_t)(q[0] | (q[32] << 2) | (q[64] << 4) | (q[96] << 6));
            }
    }
}

void quantize_row_q6_K(const float* x, BlockQ6_K* y, int64_t k) {
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K) {
        float max_scale = 0, max_abs_scale = 0;
        for (int ib = 0; ib < QK_K / 16; ib++) {
            const float scale = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
            scales[ib] = scale;
            const float abs_scale = std::fabs(scale);
            if (abs_scale > max_abs_scale) {
                max_abs_scale = abs_scale;
                max_scale = scale;
            }
        }
        BlockQ6_K& b = y[i];
        if (max_abs_scale < 1e-15f) {
            std::memset(&b, 0, sizeof b);
            continue;
        }
        float iscale = -128.f / max_scale;
        b.d = fp32_to_fp16(1 / iscale);
        for (int ib = 0; ib < QK_K / 16; ib++) {
            int v = nearest_int(iscale * scales[ib]);
            b.scales[ib] = (int8_t)(v > 127 ? 127 : v);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            float d = fp16_to_fp32(b.d) * b.scales[j];
            if (d == 0.f) continue;
            for (int ii = 0; ii < 16; ii++) {
                int l = nearest_int(x[16 * j + ii] / d);
                l = l < -32 ? -32 : (l > 31 ? 31 : l);
                L[16 * j + ii] = (int8_t)(l + 32);
            }
        }
        uint8_t* ql = b.ql;
        uint8_t* qh = b.qh;
        for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32) {
            for (int l = 0; l < 32; l++) {
                const uint8_t q1 = L[j + l] & 0xF, q2 = L[j + l + 32] & 0xF;
                const uint8_t q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
                ql[l] = (uint8_t)(q1 | (q3 << 4));
                ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
                qh[l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) |
                                  ((L[j + l + 96] >> 4) << 6));
            }
        }
    }
}

}  // namespace

void quantize_row_q8_0(const float* x, BlockQ8_0* y, int64_t k) {
    for (int64_t i = 0; i < k / QK8_0; i++, x += QK8_0) {
        float amax = 0.f;
        for (int j = 0; j < QK8_0; j++) amax = std::fmax(amax, std::fabs(x[j]));
        const float d = amax / 127.f;
        const float id = d != 0.f ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        for (int j = 0; j < QK8_0; j++) y[i].qs[j] = to_i8(std::round(x[j] * id));
    }
}

void quantize_row_q8_K(const float* x, BlockQ8_K* y, int64_t k) {
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K) {
        float max = 0, amax = 0;
        for (int j = 0; j < QK_K; j++) {
            float ax = std::fabs(x[j]);
            if (ax > amax) {
                amax = ax;
                max = x[j];
            }
        }
        BlockQ8_K& b = y[i];
        if (amax == 0.f || !std::isfinite(amax)) {
            std::memset(&b, 0, sizeof b);
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < QK_K; j++) {
            int v = nearest_int(iscale * x[j]);
            b.qs[j] = (int8_t)(v > 127 ? 127 : (v < -127 ? -127 : v));
        }
        for (int j = 0; j < QK_K / 16; j++) {
            int s = 0;
            for (int l = 0; l < 16; l++) s += b.qs[16 * j + l];
            b.bsums[j] = (int16_t)s;
        }
        b.d = 1 / iscale;
    }
}

// ---- the types, one row each in kQuantKernels -----------------------------------------------------

static void quantize_f32(const float* x, void* y, int64_t k) { std::memcpy(y, x, k * 4); }

static void quantize_f16(const float* x, void* y, int64_t k) {
    for (int64_t i = 0; i < k; i++) ((uint16_t*)y)[i] = fp32_to_fp16(x[i]);
}

static void quantize_bf16(const float* x, void* y, int64_t k) {
    for (int64_t i = 0; i < k; i++) {  // round to nearest even, NaN kept quiet
        uint32_t u;
        std::memcpy(&u, &x[i], 4);
        ((uint16_t*)y)[i] = (u & 0x7fffffff) > 0x7f800000 ? (uint16_t)((u >> 16) | 64)
                                                          : (uint16_t)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
    }
}

template <class Block, void (*Quantize)(const float*, Block*, int64_t)>
static void quantize_blocks(const float* x, void* y, int64_t k) {
    Quantize(x, (Block*)y, k);
}

// F32
static void dequantize_f32(const void* x, float* y, int64_t k) {
    std::memcpy(y, x, k * 4);
}

// F16
static void dequantize_f16(const void* x, float* y, int64_t k) {
    for (int64_t i = 0; i < k; i++) y[i] = fp16_to_fp32(((const uint16_t*)x)[i]);
}

// BF16
static void dequantize_bf16(const void* x, float* y, int64_t k) {
    for (int64_t i = 0; i < k; i++) y[i] = bf16_to_fp32(((const uint16_t*)x)[i]);
}

// Q8_0
static void dequantize_q8_0(const void* x, float* y, int64_t k) {
    const BlockQ8_0* b = (const BlockQ8_0*)x;
    for (int64_t i = 0; i < k / QK8_0; i++) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < QK8_0; j++) y[i * QK8_0 + j] = (float)b[i].qs[j] * d;
    }
}

// Q4_0
static void dequantize_q4_0(const void* x, float* y, int64_t k) {
    const BlockQ4_0* b = (const BlockQ4_0*)x;
    for (int64_t i = 0; i < k / QK4_0; i++) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < 16; j++) {
            y[i * 32 + j] = (float)((b[i].qs[j] & 0xF) - 8) * d;
            y[i * 32 + j + 16] = (float)((b[i].qs[j] >> 4) - 8) * d;
        }
    }
}

// Q4_1, Q5_0, Q5_1
template <GgmlType T>
static void dequantize_q4_1_q5(const void* x, float* y, int64_t k) {
    // gguf-py: Q4_1 / Q5_1 x = d*q + m; Q5_0 x = d*(q-16)
    const size_t bb = type_traits((uint32_t)T).block_bytes;
    uint8_t u[32];
    for (int64_t i = 0; i < k / 32; i++) {
        const uint8_t* blk = (const uint8_t*)x + i * bb;
        uint16_t dh, mh = 0;
        std::memcpy(&dh, blk, 2);
        const float d = fp16_to_fp32(dh);
        if (T == GgmlType::Q4_1) {
            std::memcpy(&mh, blk + 2, 2);
            q5_unpack(blk + 4, nullptr, u);
        } else if (T == GgmlType::Q5_0) {
            q5_unpack(blk + 6, blk + 2, u);
        } else {
            std::memcpy(&mh, blk + 2, 2);
            q5_unpack(blk + 8, blk + 4, u);
        }
        const float m = fp16_to_fp32(mh);
        for (int j = 0; j < 32; j++) {
            if (T == GgmlType::Q5_0) {
                y[i * 32 + j] = d * (float)((int)u[j] - 16);
            } else {
                float v = d * (float)u[j];
                y[i * 32 + j] = v + m;
            }
        }
    }
}

// Q2_K: gguf-py: (d * sc) * q - dmin * m
static void dequantize_q2_K(const void* x, float* y, int64_t k) {
    const BlockQ2_K* b = (const BlockQ2_K*)x;
    uint8_t q[QK_K];
    for (int64_t i = 0; i < k / QK_K; i++) {
        const float d = fp16_to_fp32(b[i].d), dmin = fp16_to_fp32(b[i].dmin);
        q2k_values(b[i], q);
        for (int e = 0; e < QK_K; e++) {
            const uint8_t s = b[i].scales[e / 16];
            const float dl = d * (float)(s & 0xF), ml = dmin * (float)(s >> 4);
            const float v = dl * (float)q[e];
            y[i * QK_K + e] = v - ml;
        }
    }
}

// Q3_K: gguf-py: (d * (sc - 32)) * (q - 4)
static void dequantize_q3_K(const void* x, float* y, int64_t k) {
    const BlockQ3_K* b = (const BlockQ3_K*)x;
    int8_t sc[16], q[QK_K];
    for (int64_t i = 0; i < k / QK_K; i++) {
        const float d = fp16_to_fp32(b[i].d);
        q3k_scales(b[i].scales, sc);
        q3k_values(b[i], q);
        for (int e = 0; e < QK_K; e++) {
            const float dl = d * (float)sc[e / 16];
            y[i * QK_K + e] = dl * (float)q[e];
        }
    }
}

// Q5_K
static void dequantize_q5_K(const void* x, float* y, int64_t k) {
    const BlockQ5_K* b = (const BlockQ5_K*)x;
    uint8_t u[QK_K];
    for (int64_t i = 0; i < k / QK_K; i++) {
        const float d = fp16_to_fp32(b[i].d), dmin = fp16_to_fp32(b[i].dmin);
        qk_unpack5(b[i].qs, b[i].qh, u);
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            q4k_scale_min(j, b[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            for (int l = 0; l < 32; l++) {
                float v = d1 * (float)u[32 * j + l];
                y[i * QK_K + 32 * j + l] = v - m1;
            }
        }
    }
}

// Q4_K
static void dequantize_q4_K(const void* x, float* y, int64_t k) {
    const BlockQ4_K* b = (const BlockQ4_K*)x;
    for (int64_t i = 0; i < k / QK_K; i++) {
        const float d = fp16_to_fp32(b[i].d), dmin = fp16_to_fp32(b[i].dmin);
        float* out = y + i * QK_K;
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            q4k_scale_min(j, b[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            const uint8_t* q = b[i].qs + 32 * (j / 2);
            for (int l = 0; l < 32; l++) {
                int v = (j & 1) ? (q[l] >> 4) : (q[l] & 0xF);
                float t = d1 * (float)v;
                out[32 * j + l] = t - m1;
            }
        }
    }
}

// Q6_K
static void dequantize_q6_K(const void* x, float* y, int64_t k) {
    const BlockQ6_K* b = (const BlockQ6_K*)x;
    uint8_t u[QK_K];
    for (int64_t i = 0; i < k / QK_K; i++) {
        const float d = fp16_to_fp32(b[i].d);
        q6k_unpack(b[i], u);
        for (int e = 0; e < QK_K; e++) {
            const float ds = d * (float)b[i].scales[e / 16];
            y[i * QK_K + e] = ds * (float)(u[e] - 32);
        }
    }
}

// IQ4_NL: gguf-py: d * value
static void dequantize_iq4_nl(const void* x, float* y, int64_t k) {
    const BlockIQ4_NL* b = (const BlockIQ4_NL*)x;
    for (int64_t i = 0; i < k / 32; i++) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < 16; j++) {
            y[i * 32 + j] = d * (float)kIQ4NL[b[i].qs[j] & 0xF];
            y[i * 32 + j + 16] = d * (float)kIQ4NL[b[i].qs[j] >> 4];
        }
    }
}

// IQ4_XS: gguf-py: (d * (ls - 32)) * value
static void dequantize_iq4_xs(const void* x, float* y, int64_t k) {
    const BlockIQ4_XS* b = (const BlockIQ4_XS*)x;
    for (int64_t i = 0; i < k / QK_K; i++) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < 8; j++) {
            const float dl = d * (float)iq4xs_scale(b[i], j);
            const uint8_t* q = b[i].qs + 16 * j;
            float* out = y + i * QK_K + 32 * j;
            for (int l = 0; l < 16; l++) {
                out[l] = dl * (float)kIQ4NL[q[l] & 0xF];
                out[l + 16] = dl * (float)kIQ4NL[q[l] >> 4];
            }
        }
    }
}

// Q8_K
static void dequantize_q8_K(const void* x, float* y, int64_t k) {
    const BlockQ8_K* b = (const BlockQ8_K*)x;
    for (int64_t i = 0; i < k / QK_K; i++)
        for (int j = 0; j < QK_K; j++) y[i * QK_K + j] = b[i].d * (float)b[i].qs[j];
}

struct QuantKernels {
    GgmlType type;
    void (*quantize)(const float* x, void* y, int64_t k);    // k floats into the type's blocks
    void (*dequantize)(const void* x, float* y, int64_t k);  // as gguf-py dequantizes them
};

static const QuantKernels kQuantKernels[] = {
    {GgmlType::F32,    quantize_f32,                                      dequantize_f32},
    {GgmlType::F16,    quantize_f16,                                      dequantize_f16},
    {GgmlType::BF16,   quantize_bf16,                                     dequantize_bf16},
    {GgmlType::Q8_0,   quantize_blocks<BlockQ8_0, quantize_row_q8_0>,     dequantize_q8_0},
    {GgmlType::Q4_0,   quantize_blocks<BlockQ4_0, quantize_row_q4_0>,     dequantize_q4_0},
    {GgmlType::Q4_1,   quantize_blocks<BlockQ4_1, quantize_row_q4_1>,     dequantize_q4_1_q5<GgmlType::Q4_1>},
    {GgmlType::Q5_0,   quantize_blocks<BlockQ5_0, quantize_row_q5_0>,     dequantize_q4_1_q5<GgmlType::Q5_0>},
    {GgmlType::Q5_1,   quantize_blocks<BlockQ5_1, quantize_row_q5_1>,     dequantize_q4_1_q5<GgmlType::Q5_1>},
    {GgmlType::Q2_K,   quantize_blocks<BlockQ2_K, quantize_row_q2_K>,     dequantize_q2_K},
    {GgmlType::Q3_K,   quantize_blocks<BlockQ3_K, quantize_row_q3_K>,     dequantize_q3_K},
    {GgmlType::Q4_K,   quantize_blocks<BlockQ4_K, quantize_row_q4_K>,     dequantize_q4_K},
    {GgmlType::Q5_K,   quantize_blocks<BlockQ5_K, quantize_row_q5_K>,     dequantize_q5_K},
    {GgmlType::Q6_K,   quantize_blocks<BlockQ6_K, quantize_row_q6_K>,     dequantize_q6_K},
    {GgmlType::Q8_K,   quantize_blocks<BlockQ8_K, quantize_row_q8_K>,     dequantize_q8_K},
    {GgmlType::IQ4_NL, quantize_blocks<BlockIQ4_NL, quantize_row_iq4_nl>, dequantize_iq4_nl},
    {GgmlType::IQ4_XS, quantize_blocks<BlockIQ4_XS, quantize_row_iq4_xs>, dequantize_iq4_xs},
};

static const QuantKernels* quant_kernels(GgmlType t) {
    for (const QuantKernels& q : kQuantKernels)
        if (q.type == t) return &q;
    return nullptr;
}

bool quant_supported(GgmlType t) { return quant_kernels(t) != nullptr; }

static const QuantKernels& checked(GgmlType t, int64_t k) {
    const QuantKernels* q = quant_kernels(t);
    if (!q) throw ModelError(fmt("quantization type %s is not supported", type_name(t)));
    int64_t blk = type_traits((uint32_t)t).block;
    if (k < 0 || k % blk != 0)
        throw ModelError(fmt("%s needs rows whose length is a multiple of %lld, got %lld", type_name(t),
                             (long long)blk, (long long)k));
    return *q;
}

void quantize_rows(GgmlType t, const float* x, void* y, int64_t n_rows, int64_t n_per_row) {
    const QuantKernels& q = checked(t, n_per_row);
    const size_t rb = row_bytes(t, n_per_row);
    for (int64_t r = 0; r < n_rows; r++) q.quantize(x + r * n_per_row, (uint8_t*)y + r * rb, n_per_row);
}

void dequantize_values(GgmlType t, const void* x, float* y, int64_t k) { checked(t, k).dequantize(x, y, k); }

}  // namespace tg
