// Matrix products for every weight type: dispatch, weight repacking, activation quantization and
// the plain scalar kernels (the reference every SIMD path must match bit for bit; see
// matmul_impl.h for the arithmetic each output follows).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "kernels/matmul.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#ifndef MADV_POPULATE_READ  // Linux 5.14; older kernels answer EINVAL and the pages fault in as usual
#define MADV_POPULATE_READ 22
#define MADV_POPULATE_WRITE 23
#endif
#endif

#include "cpu.h"
#include "errors.h"
#include "fp16.h"
#include "kernels/matmul_impl.h"
#include "quants.h"
#include "exec.h"

namespace tg {

// ---- the weight types ------------------------------------------------------------------------
//
// One row of kWeightKernels (at the end of this file) per weight type: everything a product needs to
// know of the type. A type without a row is not a matmul weight.

// Which integer activations the type's products take (matmul_impl.h has the arithmetic).
enum class ActQuant {
    Float,  // float weights: the float activations as they are
    Q8,     // Q8_0-style blocks of 32 (ActQ8)
    Q8K,    // Q8_K blocks of 256 with their 16-value sums (ActQ8K)
};

// The 16 source rows of one repacked group (nullptr: a padding row past n_out), k values each.
struct GroupRows {
    GgmlType type;
    int64_t k;
    const uint8_t* rows[kGroup];
};

struct WeightKernels {
    GgmlType type;
    ActQuant act;
    int32_t act_offset;  // what the repacked weights add to each value (ActQ8::corr): Q8_0 128, Q4_0 8
    int act_group;       // Q8 activations: blocks that share one scale
    size_t (*group_bytes)(int64_t n_in);  // one repacked group of kGroup rows
    // the reference repack, element by element; every row may be padding
    void (*repack)(const GroupRows& g, uint8_t* dst);
    // the fast repack of a group whose 16 rows all exist (x86-64 SSE2), the reference's bytes
    // exactly; nullptr, or false returned: the reference runs
    bool (*repack_fast)(const GroupRows& g, uint8_t* dst);
    // the plain kernel over the standard layout (rows [r0, r1)): the reference every SIMD kernel matches
    void (*scalar)(const GemmArgs& A, int64_t r0, int64_t r1);
    GemmFn avx2, avx_vnni, avx512, neon;  // over the repacked layout; nullptr where the path has none
};

static const WeightKernels* kernels_of(GgmlType t);

bool matmul_supports(GgmlType t) { return kernels_of(t) != nullptr; }

size_t packed_group_bytes(GgmlType t, int64_t n_in) {
    const WeightKernels* kt = kernels_of(t);
    return kt ? kt->group_bytes(n_in) : 0;
}

static GemmFn simd_kernel(Isa isa, GgmlType t);

static void check_weight(const MatW& w) {
    if (!matmul_supports(w.type))
        throw ModelError(fmt("weight type %s is not supported by the kernels", type_name(w.type)));
    const int64_t blk = type_traits((uint32_t)w.type).block;
    if (w.n_out <= 0 || w.n_in <= 0 || w.n_in % blk != 0)
        throw ModelError(fmt("weight of type %s has shape [%lld, %lld]; rows must be a positive multiple of %lld",
                             type_name(w.type), (long long)w.n_out, (long long)w.n_in, (long long)blk));
    if (!w.data) throw ModelError("weight has no data");
}

// ---- repacking ---------------------------------------------------------------------------------
//
// Each layout has a reference repack (repack_ref_*): element by element, every type, partial groups.
// The load spends most of its time here, so the common types also have a fast repack (fast_*, x86-64
// SSE2, present on every x86-64 CPU) that moves 16 bytes at a time through register transposes; it
// must give the reference's bytes exactly (tests compare them with prepare_weight_reference).

#if defined(__SSE2__)
// Transposes 4 rows of n 32-bit words (n a multiple of 4): word j of row r goes to
// dst + j * stride + 4 * r, XORed with `flip`.
static void transpose_words_4(const uint8_t* const rows[4], int64_t n, uint8_t* dst, size_t stride, uint32_t flip) {
    const __m128i x = _mm_set1_epi32((int)flip);
    for (int64_t j = 0; j < n; j += 4) {
        const __m128i a0 = _mm_loadu_si128((const __m128i*)(rows[0] + 4 * j));
        const __m128i a1 = _mm_loadu_si128((const __m128i*)(rows[1] + 4 * j));
        const __m128i a2 = _mm_loadu_si128((const __m128i*)(rows[2] + 4 * j));
        const __m128i a3 = _mm_loadu_si128((const __m128i*)(rows[3] + 4 * j));
        const __m128i b0 = _mm_unpacklo_epi32(a0, a1), b1 = _mm_unpackhi_epi32(a0, a1);
        const __m128i b2 = _mm_unpacklo_epi32(a2, a3), b3 = _mm_unpackhi_epi32(a2, a3);
        _mm_storeu_si128((__m128i*)(dst + (j + 0) * stride), _mm_xor_si128(_mm_unpacklo_epi64(b0, b2), x));
        _mm_storeu_si128((__m128i*)(dst + (j + 1) * stride), _mm_xor_si128(_mm_unpackhi_epi64(b0, b2), x));
        _mm_storeu_si128((__m128i*)(dst + (j + 2) * stride), _mm_xor_si128(_mm_unpacklo_epi64(b1, b3), x));
        _mm_storeu_si128((__m128i*)(dst + (j + 3) * stride), _mm_xor_si128(_mm_unpackhi_epi64(b1, b3), x));
    }
}

// 8 rows of 8 16-bit values (a[r] = row r) into 8 columns (t[c] = value c of each row).
static void transpose_8x8_u16(const __m128i a[8], __m128i t[8]) {
    const __m128i b0 = _mm_unpacklo_epi16(a[0], a[1]), b1 = _mm_unpackhi_epi16(a[0], a[1]);
    const __m128i b2 = _mm_unpacklo_epi16(a[2], a[3]), b3 = _mm_unpackhi_epi16(a[2], a[3]);
    const __m128i b4 = _mm_unpacklo_epi16(a[4], a[5]), b5 = _mm_unpackhi_epi16(a[4], a[5]);
    const __m128i b6 = _mm_unpacklo_epi16(a[6], a[7]), b7 = _mm_unpackhi_epi16(a[6], a[7]);
    const __m128i c0 = _mm_unpacklo_epi32(b0, b2), c1 = _mm_unpackhi_epi32(b0, b2);
    const __m128i c2 = _mm_unpacklo_epi32(b4, b6), c3 = _mm_unpackhi_epi32(b4, b6);
    const __m128i c4 = _mm_unpacklo_epi32(b1, b3), c5 = _mm_unpackhi_epi32(b1, b3);
    const __m128i c6 = _mm_unpacklo_epi32(b5, b7), c7 = _mm_unpackhi_epi32(b5, b7);
    t[0] = _mm_unpacklo_epi64(c0, c2), t[1] = _mm_unpackhi_epi64(c0, c2);
    t[2] = _mm_unpacklo_epi64(c1, c3), t[3] = _mm_unpackhi_epi64(c1, c3);
    t[4] = _mm_unpacklo_epi64(c4, c6), t[5] = _mm_unpackhi_epi64(c4, c6);
    t[6] = _mm_unpacklo_epi64(c5, c7), t[7] = _mm_unpackhi_epi64(c5, c7);
}

// F16/BF16: dst[i * 16 + r] = row r's value i, 8 columns at a time (k a multiple of 8).
static void repack_u16_fast(const uint8_t* const rows[kGroup], int64_t k, uint8_t* dst) {
    for (int64_t i = 0; i < k; i += 8) {
        __m128i a[8], lo[8], hi[8];
        for (int r = 0; r < 8; r++) a[r] = _mm_loadu_si128((const __m128i*)(rows[r] + 2 * i));
        transpose_8x8_u16(a, lo);
        for (int r = 0; r < 8; r++) a[r] = _mm_loadu_si128((const __m128i*)(rows[8 + r] + 2 * i));
        transpose_8x8_u16(a, hi);
        for (int c = 0; c < 8; c++) {
            _mm_storeu_si128((__m128i*)(dst + 2 * kGroup * (i + c)), lo[c]);
            _mm_storeu_si128((__m128i*)(dst + 2 * kGroup * (i + c) + 16), hi[c]);
        }
    }
}

// Q8_0 / Q4_0 / IQ4_NL: per block, the fp16 scales in row order, the quants as 32-bit words
// transposed over the 16 rows (Q8_0's bytes flipped to unsigned, q + 128).
template <size_t QB, class Block>
static void repack_blocks_fast(const uint8_t* const rows[kGroup], int64_t nb, uint8_t* dst, uint32_t flip) {
    if (nb & 1) std::memset(dst + pair_scale_off<QB>(nb - 1), 0, 64);
    for (int64_t b = 0; b < nb; b++) {
        uint8_t* d = dst + pair_scale_off<QB>(b);
        for (int r = 0; r < kGroup; r++) std::memcpy(d + 2 * r, &((const Block*)rows[r])[b].d, 2);
        for (int r0 = 0; r0 < kGroup; r0 += 4) {
            const uint8_t* q[4];
            for (int r = 0; r < 4; r++) q[r] = (const uint8_t*)((const Block*)rows[r0 + r])[b].qs;
            transpose_words_4(q, (int64_t)QB / 64, dst + pair_quant_off<QB>(b) + 4 * r0, 64, flip);
        }
    }
}

// Q4_K / Q5_K: the quants (and Q5_K's fifth bits) as 32-bit words transposed over the 16 rows;
// scales and mins as the reference.
template <class Block, size_t Stride>
static void repack_qk_fast(const uint8_t* const rows[kGroup], int64_t nb, uint8_t* dst) {
    constexpr bool q5 = std::is_same<Block, BlockQ5_K>::value;
    for (int64_t b = 0; b < nb; b++) {
        uint8_t* o = dst + b * Stride;
        for (int r = 0; r < kGroup; r++) {
            const Block& blk = ((const Block*)rows[r])[b];
            std::memcpy(o + 2 * r, &blk.d, 2);
            std::memcpy(o + 32 + 2 * r, &blk.dmin, 2);
            for (int j = 0; j < 8; j++) {
                uint8_t sc, m;
                q4k_scale_min(j, blk.scales, &sc, &m);
                o[64 + 16 * j + r] = sc;
                o[192 + 32 * (j / 2) + 2 * r + (j & 1)] = m;
            }
        }
        for (int r0 = 0; r0 < kGroup; r0 += 4) {
            const uint8_t* q[4];
            for (int r = 0; r < 4; r++) q[r] = ((const Block*)rows[r0 + r])[b].qs;
            transpose_words_4(q, QK_K / 8, o + 320 + 4 * r0, 64, 0);
            if constexpr (q5) {
                for (int r = 0; r < 4; r++) q[r] = ((const Block*)rows[r0 + r])[b].qh;
                transpose_words_4(q, QK_K / 32, o + kPackQ4_K + 4 * r0, 64, 0);
            }
        }
    }
}

// One Q6_K block's 48 quant words in the repacked order (word 3t + k for the 16 values 16t..16t+15:
// k = 0, 1 the low nibbles of values e and e + 4, e + 8 and e + 12 of each quarter e; k = 2 the
// high 2 bits of all four), computed 16 values at a time from the file's bit planes.
static void q6k_words(const BlockQ6_K& blk, uint32_t* words) {
    const __m128i m4 = _mm_set1_epi8(15), m2 = _mm_set1_epi8(3);
    for (int t = 0; t < 16; t++) {
        const int h = t / 8, q = (t / 2) % 4, l0 = 16 * (t % 2);  // values 16t.. are u[128h + 32q + l0 ..]
        const __m128i ql = _mm_loadu_si128((const __m128i*)(blk.ql + 64 * h + 32 * (q & 1) + l0));
        const __m128i qh = _mm_loadu_si128((const __m128i*)(blk.qh + 32 * h + l0));
        const __m128i lo = _mm_and_si128(q >> 1 ? _mm_srli_epi16(ql, 4) : ql, m4);
        const __m128i hi = _mm_and_si128(_mm_srl_epi16(qh, _mm_cvtsi32_si128(2 * q)), m2);
        // values of 4 bytes up shifted into the upper bits of their byte (16-bit shifts: no byte overflows)
        const __m128i w01 = _mm_or_si128(lo, _mm_slli_epi16(_mm_srli_si128(lo, 4), 4));
        const __m128i h2 = _mm_or_si128(hi, _mm_slli_epi16(_mm_srli_si128(hi, 4), 2));
        const __m128i w2 = _mm_or_si128(h2, _mm_slli_epi16(_mm_srli_si128(h2, 8), 4));
        words[3 * t] = (uint32_t)_mm_cvtsi128_si32(w01);
        words[3 * t + 1] = (uint32_t)_mm_cvtsi128_si32(_mm_srli_si128(w01, 8));
        words[3 * t + 2] = (uint32_t)_mm_cvtsi128_si32(w2);
    }
}

// Q6_K: the quant words of q6k_words transposed over the 16 rows; d and scales as the reference.
static void repack_q6k_fast(const uint8_t* const rows[kGroup], int64_t nb, uint8_t* dst) {
    for (int64_t b = 0; b < nb; b++) {
        uint8_t* o = dst + b * kPackQ6_K;
        for (int r = 0; r < kGroup; r++) {
            const BlockQ6_K& blk = ((const BlockQ6_K*)rows[r])[b];
            std::memcpy(o + 2 * r, &blk.d, 2);
            for (int t = 0; t < 16; t++) o[32 + 16 * t + r] = (uint8_t)blk.scales[t];
        }
        for (int r0 = 0; r0 < kGroup; r0 += 4) {
            uint32_t words[4][48];
            const uint8_t* q[4];
            for (int r = 0; r < 4; r++) {
                q6k_words(((const BlockQ6_K*)rows[r0 + r])[b], words[r]);
                q[r] = (const uint8_t*)words[r];
            }
            transpose_words_4(q, 48, o + 288 + 4 * r0, 64, 0);
        }
    }
}
static bool fast_u16(const GroupRows& g, uint8_t* dst) {
    if (g.k % 8) return false;
    repack_u16_fast(g.rows, g.k, dst);
    return true;
}
static bool fast_q8_0(const GroupRows& g, uint8_t* dst) {
    repack_blocks_fast<kPackQ8_0, BlockQ8_0>(g.rows, g.k / QK8_0, dst, 0x80808080u);
    return true;
}
static bool fast_q4_0(const GroupRows& g, uint8_t* dst) {  // IQ4_NL too: the same block layout
    repack_blocks_fast<kPackQ4_0, BlockQ4_0>(g.rows, g.k / QK4_0, dst, 0);
    return true;
}
static bool fast_q4_K(const GroupRows& g, uint8_t* dst) {
    repack_qk_fast<BlockQ4_K, kPackQ4_K>(g.rows, g.k / QK_K, dst);
    return true;
}
static bool fast_q5_K(const GroupRows& g, uint8_t* dst) {
    repack_qk_fast<BlockQ5_K, kPackQ5_K>(g.rows, g.k / QK_K, dst);
    return true;
}
static bool fast_q6_K(const GroupRows& g, uint8_t* dst) {
    repack_q6k_fast(g.rows, g.k / QK_K, dst);
    return true;
}
#define TG_FAST(name) fast_##name
#else
#define TG_FAST(name) nullptr
#endif

// The reference repacks, one per layout (see matmul_impl.h for each layout).
// F32: transpose 16 x k in slices of 64 columns (stays in L1)
static void repack_ref_f32(const GroupRows& g, uint8_t* dst) {
    const int64_t k = g.k;
    auto row = [&](int r) { return g.rows[r]; };
    for (int64_t i0 = 0; i0 < k; i0 += 64)
        for (int r = 0; r < kGroup; r++) {
            const float* p = (const float*)row(r);
            for (int64_t i = i0; i < std::min<int64_t>(k, i0 + 64); i++) ((float*)dst)[i * kGroup + r] = p ? p[i] : 0.f;
        }
}

// F16, BF16
static void repack_ref_u16(const GroupRows& g, uint8_t* dst) {
    const int64_t k = g.k;
    auto row = [&](int r) { return g.rows[r]; };
    for (int64_t i0 = 0; i0 < k; i0 += 64)
        for (int r = 0; r < kGroup; r++) {
            const uint16_t* p = (const uint16_t*)row(r);
            for (int64_t i = i0; i < std::min<int64_t>(k, i0 + 64); i++) ((uint16_t*)dst)[i * kGroup + r] = p ? p[i] : 0;
        }
}

// Q8_0, Q5_0
static void repack_ref_q8_0(const GroupRows& g, uint8_t* dst) {
    const int64_t k = g.k;
    auto row = [&](int r) { return g.rows[r]; };
    // row by row: 4-byte moves, the destination of one group stays in the L2 cache
    // (Q5_0 widened to Q8_0's layout: its values q - 16 as int8, the same fp16 scale)
    const int64_t nb = k / QK8_0;
    const bool q5 = g.type == GgmlType::Q5_0;
    if (nb & 1) std::memset(dst + pair_scale_off<kPackQ8_0>(nb - 1), 0, 64);
    for (int r = 0; r < kGroup; r++) {
        const uint8_t* p = row(r);
        for (int64_t b = 0; b < nb; b++) {
            uint8_t* o = dst + pair_quant_off<kPackQ8_0>(b) + 4 * r;
            uint8_t* d = dst + pair_scale_off<kPackQ8_0>(b) + 2 * r;
            uint32_t v[8];
            if (p && q5) {
                const BlockQ5_0& blk = ((const BlockQ5_0*)p)[b];
                std::memcpy(d, &blk.d, 2);
                uint8_t u[32];
                q5_unpack(blk.qs, blk.qh, u);
                for (int j = 0; j < 32; j++) u[j] = (uint8_t)(u[j] - 16 + 128);
                std::memcpy(v, u, 32);
            } else if (p) {
                const BlockQ8_0& blk = ((const BlockQ8_0*)p)[b];
                std::memcpy(d, &blk.d, 2);
                std::memcpy(v, blk.qs, 32);
                for (int s = 0; s < 8; s++) v[s] ^= 0x80808080u;
            } else {
                std::memset(d, 0, 2);
                for (int s = 0; s < 8; s++) v[s] = 0x80808080u;
            }
            for (int s = 0; s < 8; s++) std::memcpy(o + 64 * s, &v[s], 4);
        }
    }
}

// Q4_0, IQ4_NL: the same block layout (padding: Q4_0's q = 0, IQ4_NL's scale 0)
static void repack_ref_q4_0(const GroupRows& g, uint8_t* dst) {
    const int64_t k = g.k;
    auto row = [&](int r) { return g.rows[r]; };
    const int64_t nb = k / QK4_0;
    if (nb & 1) std::memset(dst + pair_scale_off<kPackQ4_0>(nb - 1), 0, 64);
    for (int r = 0; r < kGroup; r++) {
        const BlockQ4_0* p = (const BlockQ4_0*)row(r);
        for (int64_t b = 0; b < nb; b++) {
            uint8_t* o = dst + pair_quant_off<kPackQ4_0>(b) + 4 * r;
            uint8_t* d = dst + pair_scale_off<kPackQ4_0>(b) + 2 * r;
            uint32_t v[4] = {0x88888888u, 0x88888888u, 0x88888888u, 0x88888888u};  // padding: q = 0
            if (p) {
                std::memcpy(d, &p[b].d, 2);
                std::memcpy(v, p[b].qs, 16);
            } else {
                std::memset(d, 0, 2);
            }
            for (int s = 0; s < 4; s++) std::memcpy(o + 64 * s, &v[s], 4);
        }
    }
}

// Q4_1, Q5_1
static void repack_ref_q4_1(const GroupRows& g, uint8_t* dst) {
    const int64_t k = g.k;
    auto row = [&](int r) { return g.rows[r]; };
    const bool q5 = g.type == GgmlType::Q5_1;
    const size_t stride = q5 ? kPackQ5_1 : kPackQ4_1;
    for (int r = 0; r < kGroup; r++) {
        const uint8_t* p = row(r);
        for (int64_t b = 0; b < k / 32; b++) {
            uint8_t* o = dst + b * stride;
            uint8_t v[32];
            uint16_t d = 0, m = 0;
            if (p && q5) {
                const BlockQ5_1& blk = ((const BlockQ5_1*)p)[b];
                d = blk.d, m = blk.m;
                q5_unpack(blk.qs, blk.qh, v);
            } else if (p) {
                const BlockQ4_1& blk = ((const BlockQ4_1*)p)[b];
                d = blk.d, m = blk.m;
                std::memcpy(v, blk.qs, 16);
            } else {
                std::memset(v, 0, sizeof v);
            }
            std::memcpy(o + 2 * r, &d, 2);
            std::memcpy(o + 32 + 2 * r, &m, 2);
            for (int s = 0; s < (q5 ? 8 : 4); s++) std::memcpy(o + 64 + 64 * s + 4 * r, v + 4 * s, 4);
        }
    }
}

// Q4_K, Q5_K
static void repack_ref_q4_K(const GroupRows& g, uint8_t* dst) {
    const int64_t k = g.k;
    auto row = [&](int r) { return g.rows[r]; };
    const bool q5 = g.type == GgmlType::Q5_K;
    const size_t stride = q5 ? kPackQ5_K : kPackQ4_K;
    for (int64_t b = 0; b < k / QK_K; b++) {
        uint8_t* o = dst + b * stride;
        for (int r = 0; r < kGroup; r++) {
            const uint8_t* rp = row(r);
            const BlockQ4_K* p4 = rp && !q5 ? (const BlockQ4_K*)rp + b : nullptr;
            const BlockQ5_K* p5 = rp && q5 ? (const BlockQ5_K*)rp + b : nullptr;
            const bool have = rp != nullptr;
            uint16_t d = p4 ? p4->d : (p5 ? p5->d : 0), dm = p4 ? p4->dmin : (p5 ? p5->dmin : 0);
            const uint8_t* scales = p4 ? p4->scales : (p5 ? p5->scales : nullptr);
            const uint8_t* qs = p4 ? p4->qs : (p5 ? p5->qs : nullptr);
            std::memcpy(o + 2 * r, &d, 2);
            std::memcpy(o + 32 + 2 * r, &dm, 2);
            for (int j = 0; j < 8; j++) {
                uint8_t sc = 0, m = 0;
                if (have) q4k_scale_min(j, scales, &sc, &m);
                o[64 + 16 * j + r] = sc;
                o[192 + 32 * (j / 2) + 2 * r + (j & 1)] = m;
            }
            for (int c = 0; c < 4; c++)
                for (int s = 0; s < 8; s++)
                    for (int e = 0; e < 4; e++)
                        o[320 + 64 * (8 * c + s) + 4 * r + e] = have ? qs[32 * c + 4 * s + e] : 0;
            if (q5)
                for (int s = 0; s < 8; s++)
                    for (int e = 0; e < 4; e++) o[kPackQ4_K + 64 * s + 4 * r + e] = p5 ? p5->qh[4 * s + e] : 0;
        }
    }
}

// IQ4_XS: padding rows: scale 0, index 0
static void repack_ref_iq4_xs(const GroupRows& g, uint8_t* dst) {
    const int64_t k = g.k;
    auto row = [&](int r) { return g.rows[r]; };
    for (int64_t b = 0; b < k / QK_K; b++) {
        uint8_t* o = dst + b * kPackIQ4_XS;
        std::memset(o + 160, 0, 32);
        for (int r = 0; r < kGroup; r++) {
            const BlockIQ4_XS* p = (const BlockIQ4_XS*)row(r);
            const uint16_t d = p ? p[b].d : 0;
            std::memcpy(o + 2 * r, &d, 2);
            uint8_t u[QK_K] = {};
            if (p) {
                for (int j = 0; j < 8; j++) q5_unpack(p[b].qs + 16 * j, nullptr, u + 32 * j);
                for (int j = 0; j < 8; j++) o[32 + 16 * j + r] = (uint8_t)(int8_t)iq4xs_scale(p[b], j);
            } else {
                for (int j = 0; j < 8; j++) o[32 + 16 * j + r] = 0;
            }
            for (int c = 0; c < 4; c++)  // Q4_K's order: chunk c holds sub-blocks 2c (low) and 2c + 1 (high)
                for (int s = 0; s < 8; s++)
                    for (int e = 0; e < 4; e++) {
                        const int v = 64 * c + 4 * s + e;
                        o[192 + 64 * (8 * c + s) + 4 * r + e] = (uint8_t)(u[v] | (u[v + 32] << 4));
                    }
        }
    }
}

// Q6_K, Q3_K, Q2_K
static void repack_ref_q6_K(const GroupRows& g, uint8_t* dst) {
    const int64_t k = g.k;
    auto row = [&](int r) { return g.rows[r]; };
    // (Q3_K widened to Q6_K's layout: its signed values -4..3 stored + 32 like Q6_K's, its
    // signed scales as Q6_K's int8 ones, the same fp16 d; Q2_K likewise, its mins after it)
    const bool q2 = g.type == GgmlType::Q2_K;
    for (int64_t b = 0; b < k / QK_K; b++) {
        uint8_t* o = dst + b * (q2 ? kPackQ2_K : kPackQ6_K);
        for (int r = 0; r < kGroup; r++) {
            const uint8_t* p = row(r);
            uint16_t d = 0, dmin = 0;
            int8_t sc[16] = {};
            uint8_t mn[16] = {};
            uint8_t u[QK_K];
            if (p && q2) {
                const BlockQ2_K& blk = ((const BlockQ2_K*)p)[b];
                d = blk.d, dmin = blk.dmin;
                for (int t = 0; t < 16; t++) {
                    sc[t] = (int8_t)(blk.scales[t] & 0xF);
                    mn[t] = (uint8_t)(blk.scales[t] >> 4);
                }
                q2k_values(blk, u);
                for (int e = 0; e < QK_K; e++) u[e] = (uint8_t)(u[e] + 32);
            } else if (p && g.type == GgmlType::Q3_K) {
                const BlockQ3_K& blk = ((const BlockQ3_K*)p)[b];
                d = blk.d;
                q3k_scales(blk.scales, sc);
                int8_t q[QK_K];
                q3k_values(blk, q);
                for (int e = 0; e < QK_K; e++) u[e] = (uint8_t)(q[e] + 32);
            } else if (p) {
                const BlockQ6_K& blk = ((const BlockQ6_K*)p)[b];
                d = blk.d;
                std::memcpy(sc, blk.scales, 16);
                q6k_unpack(blk, u);
            } else {
                std::memset(u, 32, sizeof u);
            }
            std::memcpy(o + 2 * r, &d, 2);
            for (int t = 0; t < 16; t++) {
                o[32 + 16 * t + r] = (uint8_t)sc[t];
                for (int e = 0; e < 4; e++) {
                    const uint8_t* v = u + 16 * t + e;
                    uint8_t* q = o + 288 + 192 * t + 4 * r + e;
                    q[0] = (uint8_t)((v[0] & 15) | ((v[4] & 15) << 4));
                    q[64] = (uint8_t)((v[8] & 15) | ((v[12] & 15) << 4));
                    q[128] =
                        (uint8_t)((v[0] >> 4) | ((v[4] >> 4) << 2) | ((v[8] >> 4) << 4) | ((v[12] >> 4) << 6));
                }
            }
            if (q2) {
                std::memcpy(o + kPackQ6_K + 2 * r, &dmin, 2);
                for (int t = 0; t < 16; t++) o[kPackQ6_K + 32 + 32 * (t / 2) + 2 * r + (t & 1)] = mn[t];
            }
        }
    }
}

// Repacks group g of w into dst: the fast repack where the type has one and the group's 16 rows all
// exist, the reference otherwise (or when `fast` is false, for the tests that compare the two).
static void repack_group(const MatW& w, int64_t g, uint8_t* dst, bool fast = true) {
    const WeightKernels& kt = *kernels_of(w.type);
    GroupRows rows{w.type, w.n_in, {}};
    const size_t rb = row_bytes(w.type, w.n_in);
    for (int r = 0; r < kGroup; r++) {
        const int64_t gr = g * kGroup + r;
        rows.rows[r] = gr < w.n_out ? (const uint8_t*)w.data + gr * rb : nullptr;
    }
    const bool whole = (g + 1) * kGroup <= w.n_out;
    if (!(fast && whole && kt.repack_fast && kt.repack_fast(rows, dst))) kt.repack(rows, dst);
}

// Maps the pages of [p, p + n) in one system call instead of one page fault per page (per 64 KB
// for the file mapping, per 4 KB or 2 MB for fresh memory). Advice only.
static void populate(const void* p, size_t n, bool write) {
#if defined(__linux__)
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t b = (uintptr_t)p / page * page, e = ((uintptr_t)p + n + page - 1) / page * page;
    if (e > b) madvise((void*)b, e - b, write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ);
#else
    (void)p, (void)n, (void)write;
#endif
}

// The load's threads take the groups in chunks of about 2 MB of output, in turn, so that they finish
// together on a machine whose cores other processes use as well. A large output buffer is 2 MB
// aligned, as one page table maps 2 MB: two threads' chunks then seldom map fresh pages under the
// same page table, whose lock they would take in turn (this did not measurably change the load
// where it was tried; it costs nothing).
constexpr size_t kPageTableSpan = (size_t)2 << 20;

static int64_t groups_in(size_t bytes, size_t group_bytes) {
    return std::max<int64_t>(1, (int64_t)((bytes + group_bytes - 1) / group_bytes));
}

// Repacks groups [g0, g1) into dst (the whole repacked buffer), mapping source and destination pages
// a piece of about 256 KB at a time just before the piece is written: the kernel clears each fresh
// page as it maps it, and a piece this small is still in the core's L2 cache when the repack writes
// it (mapped all at once, the cleared lines went back to memory and came again for the writes).
static void repack_groups(const MatW& w, int64_t g0, int64_t g1, uint8_t* dst, bool fast) {
    const size_t gb = packed_group_bytes(w.type, w.n_in), rb = row_bytes(w.type, w.n_in);
    const int64_t piece = groups_in(256 << 10, gb);
    for (int64_t p0 = g0; p0 < g1; p0 += piece) {
        const int64_t p1 = std::min(g1, p0 + piece);
        const int64_t r0 = p0 * kGroup, r1 = std::min<int64_t>(p1 * kGroup, w.n_out);
        populate((const uint8_t*)w.data + r0 * rb, (size_t)(r1 - r0) * rb, false);
        populate(dst + p0 * gb, (size_t)(p1 - p0) * gb, true);
        for (int64_t g = p0; g < p1; g++) repack_group(w, g, dst + g * gb, fast);
    }
}

static void prepare(MatW& w, Exec* ex, bool fast = true) {
    check_weight(w);
    w.repacked.reset();
    // The scalar kernels read the standard layout, as does every path for a type without SIMD kernels.
    if (isa_active() == Isa::Scalar || !simd_kernel(isa_active(), w.type)) return;
    const int64_t groups = (w.n_out + kGroup - 1) / kGroup;
    const size_t gb = packed_group_bytes(w.type, w.n_in);
    const size_t total = (size_t)groups * gb;
    // (Not huge pages: advised for them, the weights make the decode step faster, but the load of a
    // large model slower and less predictable: the kernel clears a 2 MB page at first touch, which
    // pushes the repack's output out of the L2 cache.)
    const size_t align = total >= kPageTableSpan ? kPageTableSpan : 64;
    void* mem = std::aligned_alloc(align, (total + align - 1) / align * align);
    if (!mem) throw std::bad_alloc();
    std::shared_ptr<uint8_t> buf((uint8_t*)mem, [](uint8_t* p) { std::free(p); });
    auto work = [&](int64_t g0, int64_t g1, int) { repack_groups(w, g0, g1, buf.get(), fast); };
    if (ex) ex->parallel_chunks(groups, groups_in(kPageTableSpan, gb), work);
    else work(0, groups, 0);
    w.repacked = std::shared_ptr<const void>(buf, buf.get());
}

void prepare_weight(MatW& w) { prepare(w, nullptr); }
void prepare_weight(MatW& w, Exec& ex) { prepare(w, &ex); }
void prepare_weight_reference(MatW& w) { prepare(w, nullptr, false); }

size_t repacked_bytes(const MatW& w) {
    return w.repacked ? (size_t)((w.n_out + kGroup - 1) / kGroup) * packed_group_bytes(w.type, w.n_in) : 0;
}

void dequantize_row(const MatW& w, int64_t row, float* out) {
    if (!matmul_supports(w.type) && w.type != GgmlType::Q8_K)
        throw ModelError(fmt("dequantize_row: unsupported type %s", type_name(w.type)));
    if (row < 0 || row >= w.n_out)
        throw ModelError(fmt("dequantize_row: row %lld out of range [0, %lld)", (long long)row, (long long)w.n_out));
    dequantize_values(w.type, (const uint8_t*)w.data + row * row_bytes(w.type, w.n_in), out, w.n_in);
}

// ---- activation quantization ----------------------------------------------------------------

void quantize_act_q8_row(const float* x, int64_t k, int8_t* qs, float* d, int32_t* sum, int gb) {
    const int64_t nb = k / QK8_0;
    for (int64_t b0 = 0, c = 0; b0 < nb; b0 += gb, c++) {
        const int64_t b1 = std::min<int64_t>(b0 + gb, nb);
        float amax = 0.f;
        for (int64_t j = b0 * QK8_0; j < b1 * QK8_0; j++) amax = std::fmax(amax, std::fabs(x[j]));
        const float dd = amax / 127.f;
        const float id = dd != 0.f ? 1.0f / dd : 0.0f;
        d[c] = fp16_to_fp32(fp32_to_fp16(dd));
        for (int64_t b = b0; b < b1; b++) {
            int32_t s = 0;
            for (int64_t j = b * QK8_0; j < (b + 1) * QK8_0; j++) {
                float v = std::round(x[j] * id);
                int q = d[c] == 0.f || v != v ? 0 : (v > 127.f ? 127 : (v < -128.f ? -128 : (int)v));
                qs[j] = (int8_t)q;
                s += q;
            }
            sum[b] = s;
        }
    }
}

void quantize_act_q8k_row(const float* x, int64_t k, int8_t* qs, float* d, int32_t* bsum, int32_t* pair32) {
    BlockQ8_K q;
    for (int64_t b = 0; b < k / QK_K; b++) {
        quantize_row_q8_K(x + b * QK_K, &q, QK_K);
        std::memcpy(qs + b * QK_K, q.qs, QK_K);
        d[b] = q.d;
        int32_t* bs = bsum + b * 16;
        for (int j = 0; j < 16; j++) bs[j] = q.bsums[j];
        for (int p = 0; p < 4; p++) {
            int lo = bs[4 * p] + bs[4 * p + 1], hi = bs[4 * p + 2] + bs[4 * p + 3];
            pair32[b * 4 + p] = (int32_t)((uint32_t)(uint16_t)lo | ((uint32_t)(uint16_t)hi << 16));
        }
    }
}

QuantActQ8Row quantize_act_q8_row_for(Isa isa) {
#if defined(TINYGPTV_X86)
    if (isa == Isa::Avx512) return &avx512::quantize_act_q8_row;
    if (isa == Isa::Avx2) return &avx2::quantize_act_q8_row;
#endif
#if defined(TINYGPTV_ARM)
    if (isa == Isa::Neon) return &neon::quantize_act_q8_row;
#endif
    (void)isa;
    return &quantize_act_q8_row;
}

QuantActQ8KRow quantize_act_q8k_row_for(Isa isa) {
#if defined(TINYGPTV_X86)
    if (isa == Isa::Avx512) return &avx512::quantize_act_q8k_row;
    if (isa == Isa::Avx2) return &avx2::quantize_act_q8k_row;
#endif
#if defined(TINYGPTV_ARM)
    if (isa == Isa::Neon) return &neon::quantize_act_q8k_row;
#endif
    (void)isa;
    return &quantize_act_q8k_row;
}

// offset: what the repacked weights add to each stored value (Q4_0 nibbles q + 8, Q8_0 bytes q + 128);
// it goes into ActQ8::corr, which only the AVX-512 kernels read.
static void quantize_act_q8(const float* x, int64_t n, int64_t k, ActQ8& a, int32_t offset, int gb, Isa isa,
                            Exec& ex) {
    a.n = n; a.k = k; a.nb = k / QK8_0; a.gb = gb; a.ng = (a.nb + gb - 1) / gb;
    a.qs.resize(n * k); a.d.resize(n * a.ng); a.sum.resize(n * a.nb);
    const bool corr = isa == Isa::Avx512;
    if (corr) a.corr.resize(n * a.nb);
    const QuantActQ8Row row = quantize_act_q8_row_for(isa);
    ex.parallel_for(n, 4, [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; i++) row(x + i * k, k, &a.qs[i * k], &a.d[i * a.ng], &a.sum[i * a.nb], gb);
        if (corr)
            for (int64_t j = i0 * a.nb; j < i1 * a.nb; j++) a.corr[j] = kMagicBits - offset * a.sum[j];
    });
}

static void quantize_act_q8k(const float* x, int64_t n, int64_t k, ActQ8K& a, Isa isa, Exec& ex) {
    a.n = n; a.k = k; a.nb = k / QK_K;
    a.qs.resize(n * k); a.d.resize(n * a.nb); a.bsum.resize(n * a.nb * 16); a.pair32.resize(n * a.nb * 4);
    const QuantActQ8KRow row = quantize_act_q8k_row_for(isa);
    ex.parallel_for(n, 4, [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; i++)
            row(x + i * k, k, &a.qs[i * k], &a.d[i * a.nb], &a.bsum[i * a.nb * 16], &a.pair32[i * a.nb * 4]);
    });
}

// ---- scalar kernels (standard GGML layout) --------------------------------------------------

static inline float finish(float acc, const float* bias, int64_t r) { return bias ? acc + bias[r] : acc; }

template <typename Load>
static void scalar_float(const GemmArgs& A, int64_t r0, int64_t r1, Load load) {
    const int64_t k = A.n_in;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t i = 0; i < A.n; i++) {
            const float* xi = A.x + i * k;
            float acc = 0.f;
            for (int64_t j = 0; j < k; j++) acc = std::fma(load(r, j), xi[j], acc);
            A.y[i * A.n_out + r] = finish(acc, A.bias, r);
        }
}

// Q8_0, and Q5_0 and IQ4_NL with the same arithmetic (values q - 16, kIQ4NL[q]).
template <GgmlType T>
static void scalar_q8_0(const GemmArgs& A, int64_t r0, int64_t r1) {
    const ActQ8& a = *A.a8;
    const size_t bb = type_traits((uint32_t)T).block_bytes;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t i = 0; i < A.n; i++) {
            float acc = 0.f;
            for (int64_t b = 0; b < a.nb; b++) {
                const uint8_t* blk = A.w + (r * a.nb + b) * bb;
                int8_t q[QK8_0];
                uint16_t dh;
                if (T == GgmlType::Q5_0) {
                    const BlockQ5_0& b5 = *(const BlockQ5_0*)blk;
                    uint8_t u[32];
                    q5_unpack(b5.qs, b5.qh, u);
                    for (int j = 0; j < 32; j++) q[j] = (int8_t)(u[j] - 16);
                    dh = b5.d;
                } else if (T == GgmlType::IQ4_NL) {
                    const BlockIQ4_NL& bn = *(const BlockIQ4_NL*)blk;
                    uint8_t u[32];
                    q5_unpack(bn.qs, nullptr, u);
                    for (int j = 0; j < 32; j++) q[j] = kIQ4NL[u[j]];
                    dh = bn.d;
                } else {
                    const BlockQ8_0& b8 = *(const BlockQ8_0*)blk;
                    std::memcpy(q, b8.qs, QK8_0);
                    dh = b8.d;
                }
                const int8_t* xq = &a.qs[i * a.k + b * QK8_0];
                int32_t isum = 0;
                for (int j = 0; j < QK8_0; j++) isum += (int32_t)q[j] * xq[j];
                acc = std::fma(fp16_to_fp32(dh) * a.d[i * a.nb + b], (float)isum, acc);
            }
            A.y[i * A.n_out + r] = finish(acc, A.bias, r);
        }
}

static void scalar_q4_0(const GemmArgs& A, int64_t r0, int64_t r1) {
    const ActQ8& a = *A.a8;
    const BlockQ4_0* W = (const BlockQ4_0*)A.w;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t i = 0; i < A.n; i++) {
            float acc = 0.f;
            for (int64_t c = 0; c < a.ng; c++) {
                float t = 0.f;
                for (int64_t b = c * a.gb; b < std::min(a.nb, (c + 1) * a.gb); b++) {
                    const BlockQ4_0& blk = W[r * a.nb + b];
                    const int8_t* xq = &a.qs[i * a.k + b * QK4_0];
                    int32_t isum = 0;
                    for (int j = 0; j < 16; j++)
                        isum += ((blk.qs[j] & 0xF) - 8) * xq[j] + ((blk.qs[j] >> 4) - 8) * xq[j + 16];
                    t = std::fma(fp16_to_fp32(blk.d), (float)isum, t);
                }
                acc = std::fma(a.d[i * a.ng + c], t, acc);
            }
            A.y[i * A.n_out + r] = finish(acc, A.bias, r);
        }
}

// Q4_1, Q5_1: the activation scale grouping of Q4_0 (kActGroupQ4_0 blocks per scale):
//   t = fma(d_w[b], (float)isum_b, t); t = fma(m_w[b], (float)xsum_b, t) with isum_b over q;
// then acc = fma(d_x[c], t, acc).
template <GgmlType T>
static void scalar_q_small(const GemmArgs& A, int64_t r0, int64_t r1) {
    const ActQ8& a = *A.a8;
    const size_t bb = type_traits((uint32_t)T).block_bytes;
    const uint8_t* W = A.w;
    uint8_t u[32];
    for (int64_t r = r0; r < r1; r++)
        for (int64_t i = 0; i < A.n; i++) {
            float acc = 0.f;
            for (int64_t c = 0; c < a.ng; c++) {
                float t = 0.f;
                for (int64_t b = c * a.gb; b < std::min(a.nb, (c + 1) * a.gb); b++) {
                    const uint8_t* blk = W + (r * a.nb + b) * bb;
                    uint16_t dh, mh = 0;
                    std::memcpy(&dh, blk, 2);
                    if (T == GgmlType::Q4_1) {
                        std::memcpy(&mh, blk + 2, 2);
                        q5_unpack(blk + 4, nullptr, u);
                    } else {
                        std::memcpy(&mh, blk + 2, 2);
                        q5_unpack(blk + 8, blk + 4, u);
                    }
                    const int8_t* xq = &a.qs[i * a.k + b * 32];
                    int32_t isum = 0;
                    for (int j = 0; j < 32; j++) isum += (int)u[j] * xq[j];
                    t = std::fma(fp16_to_fp32(dh), (float)isum, t);
                    t = std::fma(fp16_to_fp32(mh), (float)a.sum[i * a.nb + b], t);
                }
                acc = std::fma(a.d[i * a.ng + c], t, acc);
            }
            A.y[i * A.n_out + r] = finish(acc, A.bias, r);
        }
}

static void scalar_q5_K(const GemmArgs& A, int64_t r0, int64_t r1) {
    const ActQ8K& a = *A.ak;
    const BlockQ5_K* W = (const BlockQ5_K*)A.w;
    uint8_t u[QK_K];
    for (int64_t r = r0; r < r1; r++)
        for (int64_t i = 0; i < A.n; i++) {
            float acc = 0.f;
            for (int64_t b = 0; b < a.nb; b++) {
                const BlockQ5_K& blk = W[r * a.nb + b];
                const int8_t* xq = &a.qs[i * a.k + b * QK_K];
                const int32_t* bs = &a.bsum[(i * a.nb + b) * 16];
                qk_unpack5(blk.qs, blk.qh, u);
                int32_t isum = 0, msum = 0;
                for (int j = 0; j < 8; j++) {
                    uint8_t sc, m;
                    q4k_scale_min(j, blk.scales, &sc, &m);
                    int32_t dot = 0;
                    for (int l = 0; l < 32; l++) dot += u[32 * j + l] * xq[32 * j + l];
                    isum += sc * dot;
                    msum += m * (bs[2 * j] + bs[2 * j + 1]);
                }
                const float dx = a.d[i * a.nb + b];
                acc = std::fma(fp16_to_fp32(blk.d) * dx, (float)isum, acc);
                acc = std::fma(-(fp16_to_fp32(blk.dmin) * dx), (float)msum, acc);
            }
            A.y[i * A.n_out + r] = finish(acc, A.bias, r);
        }
}

static void scalar_q4_K(const GemmArgs& A, int64_t r0, int64_t r1) {
    const ActQ8K& a = *A.ak;
    const BlockQ4_K* W = (const BlockQ4_K*)A.w;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t i = 0; i < A.n; i++) {
            float acc = 0.f;
            for (int64_t b = 0; b < a.nb; b++) {
                const BlockQ4_K& blk = W[r * a.nb + b];
                const int8_t* xq = &a.qs[i * a.k + b * QK_K];
                const int32_t* bs = &a.bsum[(i * a.nb + b) * 16];
                int32_t isum = 0, msum = 0;
                for (int j = 0; j < 8; j++) {
                    uint8_t sc, m;
                    q4k_scale_min(j, blk.scales, &sc, &m);
                    const uint8_t* q = blk.qs + 32 * (j / 2);
                    int32_t dot = 0;
                    for (int l = 0; l < 32; l++) dot += ((j & 1) ? (q[l] >> 4) : (q[l] & 0xF)) * xq[32 * j + l];
                    isum += sc * dot;
                    msum += m * (bs[2 * j] + bs[2 * j + 1]);
                }
                const float dx = a.d[i * a.nb + b];
                acc = std::fma(fp16_to_fp32(blk.d) * dx, (float)isum, acc);
                acc = std::fma(-(fp16_to_fp32(blk.dmin) * dx), (float)msum, acc);
            }
            A.y[i * A.n_out + r] = finish(acc, A.bias, r);
        }
}

// IQ4_XS: Q6_K's arithmetic with sub-blocks of 32 (values kIQ4NL[q], scales ls - 32).
static void scalar_iq4_xs(const GemmArgs& A, int64_t r0, int64_t r1) {
    const ActQ8K& a = *A.ak;
    const BlockIQ4_XS* W = (const BlockIQ4_XS*)A.w;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t i = 0; i < A.n; i++) {
            float acc = 0.f;
            for (int64_t b = 0; b < a.nb; b++) {
                const BlockIQ4_XS& blk = W[r * a.nb + b];
                const int8_t* xq = &a.qs[i * a.k + b * QK_K];
                int32_t isum = 0;
                for (int j = 0; j < 8; j++) {
                    const uint8_t* q = blk.qs + 16 * j;
                    int32_t dot = 0;
                    for (int l = 0; l < 16; l++)
                        dot += kIQ4NL[q[l] & 0xF] * xq[32 * j + l] + kIQ4NL[q[l] >> 4] * xq[32 * j + 16 + l];
                    isum += iq4xs_scale(blk, j) * dot;
                }
                acc = std::fma(fp16_to_fp32(blk.d) * a.d[i * a.nb + b], (float)isum, acc);
            }
            A.y[i * A.n_out + r] = finish(acc, A.bias, r);
        }
}

static void scalar_q6_K(const GemmArgs& A, int64_t r0, int64_t r1) {
    const ActQ8K& a = *A.ak;
    const BlockQ6_K* W = (const BlockQ6_K*)A.w;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t i = 0; i < A.n; i++) {
            float acc = 0.f;
            for (int64_t b = 0; b < a.nb; b++) {
                const BlockQ6_K& blk = W[r * a.nb + b];
                const int8_t* xq = &a.qs[i * a.k + b * QK_K];
                uint8_t u[QK_K];
                q6k_unpack(blk, u);
                int32_t isum = 0;
                for (int t = 0; t < 16; t++) {
                    int32_t dot = 0;
                    for (int l = 0; l < 16; l++) dot += (u[16 * t + l] - 32) * xq[16 * t + l];
                    isum += blk.scales[t] * dot;
                }
                acc = std::fma(fp16_to_fp32(blk.d) * a.d[i * a.nb + b], (float)isum, acc);
            }
            A.y[i * A.n_out + r] = finish(acc, A.bias, r);
        }
}

// Q3_K with Q6_K's arithmetic (values q - 4, signed scales sc - 32).
static void scalar_q3_K(const GemmArgs& A, int64_t r0, int64_t r1) {
    const ActQ8K& a = *A.ak;
    const BlockQ3_K* W = (const BlockQ3_K*)A.w;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t i = 0; i < A.n; i++) {
            float acc = 0.f;
            for (int64_t b = 0; b < a.nb; b++) {
                const BlockQ3_K& blk = W[r * a.nb + b];
                const int8_t* xq = &a.qs[i * a.k + b * QK_K];
                int8_t sc[16], q[QK_K];
                q3k_scales(blk.scales, sc);
                q3k_values(blk, q);
                int32_t isum = 0;
                for (int t = 0; t < 16; t++) {
                    int32_t dot = 0;
                    for (int l = 0; l < 16; l++) dot += q[16 * t + l] * xq[16 * t + l];
                    isum += sc[t] * dot;
                }
                acc = std::fma(fp16_to_fp32(blk.d) * a.d[i * a.nb + b], (float)isum, acc);
            }
            A.y[i * A.n_out + r] = finish(acc, A.bias, r);
        }
}

// Q2_K with Q6_K's arithmetic (values 0..3, scales 0..15) and the min term of Q4_K.
static void scalar_q2_K(const GemmArgs& A, int64_t r0, int64_t r1) {
    const ActQ8K& a = *A.ak;
    const BlockQ2_K* W = (const BlockQ2_K*)A.w;
    uint8_t q[QK_K];
    for (int64_t r = r0; r < r1; r++)
        for (int64_t i = 0; i < A.n; i++) {
            float acc = 0.f;
            for (int64_t b = 0; b < a.nb; b++) {
                const BlockQ2_K& blk = W[r * a.nb + b];
                const int8_t* xq = &a.qs[i * a.k + b * QK_K];
                const int32_t* bs = &a.bsum[(i * a.nb + b) * 16];
                q2k_values(blk, q);
                int32_t isum = 0, msum = 0;
                for (int t = 0; t < 16; t++) {
                    int32_t dot = 0;
                    for (int l = 0; l < 16; l++) dot += q[16 * t + l] * xq[16 * t + l];
                    isum += (blk.scales[t] & 0xF) * dot;
                    msum += (blk.scales[t] >> 4) * bs[t];
                }
                const float dx = a.d[i * a.nb + b];
                acc = std::fma(fp16_to_fp32(blk.d) * dx, (float)isum, acc);
                acc = std::fma(-(fp16_to_fp32(blk.dmin) * dx), (float)msum, acc);
            }
            A.y[i * A.n_out + r] = finish(acc, A.bias, r);
        }
}

static void scalar_f32(const GemmArgs& A, int64_t r0, int64_t r1) {
    const float* W = (const float*)A.w;
    scalar_float(A, r0, r1, [&](int64_t r, int64_t j) { return W[r * A.n_in + j]; });
}

static void scalar_f16(const GemmArgs& A, int64_t r0, int64_t r1) {
    const uint16_t* W = (const uint16_t*)A.w;
    scalar_float(A, r0, r1, [&](int64_t r, int64_t j) { return fp16_to_fp32(W[r * A.n_in + j]); });
}

static void scalar_bf16(const GemmArgs& A, int64_t r0, int64_t r1) {
    const uint16_t* W = (const uint16_t*)A.w;
    scalar_float(A, r0, r1, [&](int64_t r, int64_t j) { return bf16_to_fp32(W[r * A.n_in + j]); });
}

// ---- the table ----------------------------------------------------------------------------------

#if defined(TINYGPTV_X86) && defined(TINYGPTV_AVX_VNNI)
#define TG_X86(name) avx2::gemm_##name, avxvnni::gemm_##name, avx512::gemm_##name
#elif defined(TINYGPTV_X86)
#define TG_X86(name) avx2::gemm_##name, nullptr, avx512::gemm_##name
#else
#define TG_X86(name) nullptr, nullptr, nullptr
#endif
#if defined(TINYGPTV_ARM)
#define TG_NEON(name) neon::gemm_##name
#else
#define TG_NEON(name) nullptr
#endif

template <size_t Bytes, int Block> size_t per_block(int64_t n_in) { return (size_t)(n_in / Block) * Bytes; }
template <size_t QB, int Block> size_t per_pair(int64_t n_in) { return pair_group_bytes<QB>(n_in / Block); }

// x86 SIMD: the AVX2, AVX-VNNI and AVX-512 kernels (TG_X86). Widened at repack, sharing another type's
// layout and SIMD kernels: Q5_0 runs Q8_0's, Q3_K Q6_K's (Q2_K has Q6_K's layout plus its mins, and
// kernels of its own).
static const WeightKernels kWeightKernels[] = {
  // type              activations      offset group          repacked group bytes          reference repack   fast repack    scalar kernel                   x86 SIMD        NEON
    {GgmlType::F32,    ActQuant::Float, 0,   1,             per_block<kGroup * 4, 1>,     repack_ref_f32,    nullptr,       scalar_f32,                     TG_X86(f32),    TG_NEON(f32)},
    {GgmlType::F16,    ActQuant::Float, 0,   1,             per_block<kGroup * 2, 1>,     repack_ref_u16,    TG_FAST(u16),  scalar_f16,                     TG_X86(f16),    TG_NEON(f16)},
    {GgmlType::BF16,   ActQuant::Float, 0,   1,             per_block<kGroup * 2, 1>,     repack_ref_u16,    TG_FAST(u16),  scalar_bf16,                    TG_X86(bf16),   TG_NEON(bf16)},
    {GgmlType::Q8_0,   ActQuant::Q8,    128, 1,             per_pair<kPackQ8_0, QK8_0>,   repack_ref_q8_0,   TG_FAST(q8_0), scalar_q8_0<GgmlType::Q8_0>,    TG_X86(q8_0),   TG_NEON(q8_0)},
    {GgmlType::Q5_0,   ActQuant::Q8,    128, 1,             per_pair<kPackQ8_0, QK8_0>,   repack_ref_q8_0,   nullptr,       scalar_q8_0<GgmlType::Q5_0>,    TG_X86(q8_0),   TG_NEON(q8_0)},
    {GgmlType::IQ4_NL, ActQuant::Q8,    128, 1,             per_pair<kPackQ4_0, QK4_0>,   repack_ref_q4_0,   TG_FAST(q4_0), scalar_q8_0<GgmlType::IQ4_NL>,  TG_X86(iq4_nl), TG_NEON(iq4_nl)},
    {GgmlType::Q4_0,   ActQuant::Q8,    8,   kActGroupQ4_0, per_pair<kPackQ4_0, QK4_0>,   repack_ref_q4_0,   TG_FAST(q4_0), scalar_q4_0,                    TG_X86(q4_0),   TG_NEON(q4_0)},
    {GgmlType::Q4_1,   ActQuant::Q8,    0,   kActGroupQ4_0, per_block<kPackQ4_1, 32>,     repack_ref_q4_1,   nullptr,       scalar_q_small<GgmlType::Q4_1>, TG_X86(q4_1),   TG_NEON(q4_1)},
    {GgmlType::Q5_1,   ActQuant::Q8,    0,   kActGroupQ4_0, per_block<kPackQ5_1, 32>,     repack_ref_q4_1,   nullptr,       scalar_q_small<GgmlType::Q5_1>, TG_X86(q5_1),   TG_NEON(q5_1)},
    {GgmlType::Q4_K,   ActQuant::Q8K,   0,   1,             per_block<kPackQ4_K, QK_K>,   repack_ref_q4_K,   TG_FAST(q4_K), scalar_q4_K,                    TG_X86(q4_K),   TG_NEON(q4_K)},
    {GgmlType::Q5_K,   ActQuant::Q8K,   0,   1,             per_block<kPackQ5_K, QK_K>,   repack_ref_q4_K,   TG_FAST(q5_K), scalar_q5_K,                    TG_X86(q5_K),   TG_NEON(q5_K)},
    {GgmlType::Q6_K,   ActQuant::Q8K,   0,   1,             per_block<kPackQ6_K, QK_K>,   repack_ref_q6_K,   TG_FAST(q6_K), scalar_q6_K,                    TG_X86(q6_K),   TG_NEON(q6_K)},
    {GgmlType::Q3_K,   ActQuant::Q8K,   0,   1,             per_block<kPackQ6_K, QK_K>,   repack_ref_q6_K,   nullptr,       scalar_q3_K,                    TG_X86(q6_K),   TG_NEON(q6_K)},
    {GgmlType::Q2_K,   ActQuant::Q8K,   0,   1,             per_block<kPackQ2_K, QK_K>,   repack_ref_q6_K,   nullptr,       scalar_q2_K,                    TG_X86(q2_K),   TG_NEON(q2_K)},
    {GgmlType::IQ4_XS, ActQuant::Q8K,   0,   1,             per_block<kPackIQ4_XS, QK_K>, repack_ref_iq4_xs, nullptr,       scalar_iq4_xs,                  TG_X86(iq4_xs), TG_NEON(iq4_xs)},
};

static const WeightKernels* kernels_of(GgmlType t) {
    for (const WeightKernels& kt : kWeightKernels)
        if (kt.type == t) return &kt;
    return nullptr;
}

static GemmFn simd_kernel(Isa isa, GgmlType t) {  // nullptr: the scalar kernel over the standard layout
    const WeightKernels* kt = kernels_of(t);
    if (!kt) return nullptr;
    switch (isa) {
        case Isa::Avx512: return kt->avx512;
        case Isa::Avx2: return avx_vnni_active() && kt->avx_vnni ? kt->avx_vnni : kt->avx2;
        case Isa::Neon: return kt->neon;
        default: return nullptr;
    }
}

// ---- dispatch -----------------------------------------------------------------------------------

// Rows up to which a product is split statically like a decode step rather than in chunks taken in
// turn: for a few rows the weights' memory stream is the cost, not the tiles' arithmetic.
static const int64_t kSmallBatchRows = 8;

void matmul(const MatW& w, const float* x, int64_t n, float* y, const float* bias, Exec& ex) {
    check_weight(w);
    if (n < 0) throw ModelError(fmt("matmul: negative row count %lld", (long long)n));
    if (n == 0) return;
    const int64_t k = w.n_in;
    GemmArgs A;
    A.n_out = w.n_out; A.n_in = k; A.n = n; A.x = x; A.y = y; A.bias = bias;
    const Isa isa = isa_active();
    thread_local ActQ8 a8;  // reused across calls: no page faults per token
    thread_local ActQ8K ak;
    const WeightKernels& kt = *kernels_of(w.type);
    if (kt.act == ActQuant::Q8) {
        quantize_act_q8(x, n, k, a8, kt.act_offset, kt.act_group, isa, ex);
        A.a8 = &a8;
    } else if (kt.act == ActQuant::Q8K) {
        quantize_act_q8k(x, n, k, ak, isa, ex);
        A.ak = &ak;
    }
    GemmFn fn = isa != Isa::Scalar ? simd_kernel(isa, w.type) : nullptr;
    const int64_t groups = (w.n_out + kGroup - 1) / kGroup;
    if (fn && w.repacked) {
        A.w = (const uint8_t*)w.repacked.get();
        auto run = [&](int64_t g0, int64_t g1, int) { fn(A, g0, g1); };
        if (n <= kSmallBatchRows) {
            // decode (one row: decode_streams) and the decode steps of a few sequences: long
            // contiguous ranges, each thread streaming its part of the weights once
            if (n > 1) A.prefetch = packed_group_bytes(w.type, k);
            ex.parallel_for(groups, 1, run);
        } else {
            // Prompt: chunks of at most about 256 KB of weights (one stays in L2 across the activation
            // chunks), at least 4 per thread, taken in turn: a thread slowed down by another process
            // on its core takes fewer.
            const int64_t by_size = (int64_t)((256u << 10) / packed_group_bytes(w.type, k));
            const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(by_size, groups / (4 * ex.size())));
            ex.parallel_chunks(groups, chunk, run);
        }
    } else if (fn) {
        // Not prepared: repack one group at a time into a scratch buffer (slower than a prepared
        // weight, same results).
        const size_t gb = packed_group_bytes(w.type, k);
        ex.parallel_for(groups, 1, [&](int64_t g0, int64_t g1, int) {
            thread_local std::vector<uint8_t> scratch;
            if (scratch.size() < gb) scratch.resize(gb);
            GemmArgs B = A;
            B.w = scratch.data();
            for (int64_t g = g0; g < g1; g++) {
                repack_group(w, g, scratch.data());
                B.g_base = g;
                fn(B, g, g + 1);
            }
        });
    } else {
        A.w = (const uint8_t*)w.data;
        ex.parallel_for(w.n_out, kGroup, [&](int64_t r0, int64_t r1, int) { kt.scalar(A, r0, r1); });
    }
}

}  // namespace tg
