// The attention_kernels.h contract written once for the SIMD vector type of simd_vec.h (included by
// attention_avx2.cpp and attention_avx512.cpp only, each giving the register blocking R x C).
#pragma once
#include "fp16.h"
#include "kernels/attention_kernels.h"
#include "kernels/simd_vec.h"
#include "kernels/vecmath.h"

namespace tg {
namespace {

// ---- row path -----------------------------------------------------------------------------------

struct LoadF32 {
    static Vec load(const float* p) { return Vec::load(p); }
    static float get(const float* p) { return *p; }
};
struct LoadF16 {
    static Vec load(const uint16_t* p) { return Vec::load_f16(p); }
    static float get(const uint16_t* p) { return fp16_to_fp32(*p); }
};

template <class L, class T>
float dot16(const float* q, const T* k, int n) {
    constexpr int NV = vm::kSumLanes / Vec::W;
    Vec acc[NV];
    for (int c = 0; c < NV; c++) acc[c] = Vec::zero();
    int i = 0;
    for (; i + vm::kSumLanes <= n; i += vm::kSumLanes)
        for (int c = 0; c < NV; c++) acc[c] = Vec::fma(Vec::load(q + i + c * Vec::W), L::load(k + i + c * Vec::W), acc[c]);
    if (i == n) return Vec::sum16(acc);
    float lanes[vm::kSumLanes];
    for (int c = 0; c < NV; c++) acc[c].store(lanes + c * Vec::W);
    for (int l = 0; i < n; i++, l++) lanes[l] = std::fma(q[i], L::get(k + i), lanes[l]);
    return lane_sum16(lanes);
}

template <class L, class T>
void axpy(float* y, float a, const T* x, int n) {
    const Vec va = Vec::set1(a);
    int i = 0;
    for (; i + Vec::W <= n; i += Vec::W) Vec::fma(va, L::load(x + i), Vec::load(y + i)).store(y + i);
    for (; i < n; i++) y[i] = std::fma(a, L::get(x + i), y[i]);
}

// ---- blocked path -------------------------------------------------------------------------------
// Written once for both element kinds: float32 values (one fma per step) and pairs of bf16 values in
// a uint32 (dot_bf16: two products per step).

struct ElemF32 {
    using E = float;
    static Vec load(const float* p) { return Vec::load(p); }
    static Vec set1(float x) { return Vec::set1(x); }
    static Vec mac(Vec acc, Vec a, Vec b) { return Vec::fma(a, b, acc); }
};
struct ElemBF16 {
    using E = uint32_t;
    static Vec load(const uint32_t* p) { return Vec::load_bits(p); }
    static Vec set1(uint32_t x) { return Vec::set1_bits(x); }
    static Vec mac(Vec acc, Vec a, Vec b) { return Vec::dot_bf16(acc, a, b); }
};

// R query rows x C vectors of keys; each lane runs its chain over d (or d pairs) in order.
template <class El, int R, int C>
void scores_micro(const typename El::E* q, int64_t qs, const typename El::E* kt, int64_t ldk, int hd, float scale,
                  float* s) {
    Vec acc[R][C];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) acc[r][c] = Vec::zero();
    for (int d = 0; d < hd; d++) {
        Vec kv[C];
        for (int c = 0; c < C; c++) kv[c] = El::load(kt + d * ldk + c * Vec::W);
        for (int r = 0; r < R; r++) {
            const Vec b = El::set1(q[r * qs + d]);
            for (int c = 0; c < C; c++) acc[r][c] = El::mac(acc[r][c], b, kv[c]);
        }
    }
    const Vec sc = Vec::set1(scale);
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) (acc[r][c] * sc).store(s + r * ldk + c * Vec::W);
}

// R query rows x C vectors of output dimensions; each lane runs its chain over keys (or key pairs) in order.
template <class El, int R, int C>
void pv_micro(const typename El::E* p, int64_t ldp, int64_t n, const typename El::E* vp, int64_t ldv, float* o) {
    Vec acc[R][C];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) acc[r][c] = Vec::zero();
    for (int64_t j = 0; j < n; j++) {
        Vec vv[C];
        for (int c = 0; c < C; c++) vv[c] = El::load(vp + j * ldv + c * Vec::W);
        for (int r = 0; r < R; r++) {
            const Vec b = El::set1(p[r * ldp + j]);
            for (int c = 0; c < C; c++) acc[r][c] = El::mac(acc[r][c], b, vv[c]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) acc[r][c].store(o + r * ldv + c * Vec::W);
}

// Calls F<r>::run(args...) for a runtime row count r in [1, R].
template <int R, template <int> class F, class... A>
void with_rows(int r, A... args) {
    if constexpr (R >= 1) {
        if (r == R) return F<R>::run(args...);
        with_rows<R - 1, F>(r, args...);
    }
}

template <class El, int R, int C>
struct Blocked {
    using E = typename El::E;
    static constexpr int key_block = C * Vec::W;
    template <int c>
    struct Cols {
        template <int r>
        struct Scores {
            static void run(const E* q, int64_t qs, const E* kt, int64_t ldk, int hd, float scale, float* s) {
                scores_micro<El, r, c>(q, qs, kt, ldk, hd, scale, s);
            }
        };
        static void run(const E* q, int64_t qs, int rows, const E* kt, int64_t ldk, int hd, float scale, float* s) {
            for (int r = 0; r < rows; r += R)
                with_rows<R, Scores>(rows - r < R ? rows - r : R, q + r * qs, qs, kt, ldk, hd, scale, s + r * ldk);
        }
    };
    template <int c>
    static void tail(int cols, const E* q, int64_t qs, int rows, const E* kt, int64_t ldk, int hd, float scale,
                     float* s) {
        if constexpr (c >= 1) {
            if (cols == c) return Cols<c>::run(q, qs, rows, kt, ldk, hd, scale, s);
            tail<c - 1>(cols, q, qs, rows, kt, ldk, hd, scale, s);
        }
    }
    // Full blocks of C vectors of keys, then the last part of the keys in as few vectors as it needs.
    static void scores(const E* q, int64_t qs, int rows, const E* kt, int64_t ldk, int64_t nk, int hd, float scale,
                       float* s) {
        int64_t j = 0;
        for (; j + key_block <= nk; j += key_block) Cols<C>::run(q, qs, rows, kt + j, ldk, hd, scale, s + j);
        if (j < nk) tail<C>((int)((nk - j + Vec::W - 1) / Vec::W), q, qs, rows, kt + j, ldk, hd, scale, s + j);
    }
};

template <class El, int R, int C>
struct BlockedPV {
    using E = typename El::E;
    static constexpr int dim_block = C * Vec::W;
    template <int r>
    struct Run {
        static void run(const E* p, int64_t ldp, int64_t n, const E* vp, int64_t ldv, float* o) {
            pv_micro<El, r, C>(p, ldp, n, vp, ldv, o);
        }
    };
    static void pv(const E* p, int64_t ldp, int rows, int64_t n, const E* vp, int64_t ldv, float* o) {
        for (int64_t d = 0; d < ldv; d += dim_block)
            for (int r = 0; r < rows; r += R)
                with_rows<R, Run>(rows - r < R ? rows - r : R, p + r * ldp, ldp, n, vp + d, ldv, o + r * ldv + d);
    }
};

inline void to_bf16_rows(const float* x, uint16_t* y, int64_t n) {
    int64_t i = 0;
    for (; i + Vec::W <= n; i += Vec::W) Vec::to_bf16(x + i, y + i);
    if (i < n) Vec::to_bf16(x + i, y + i, (int)(n - i));
}

template <int RS, int CS, int RP, int CP>
AttnKernels make_attn_kernels() {
    return {dot16<LoadF32, float>, dot16<LoadF16, uint16_t>, axpy<LoadF32, float>, axpy<LoadF16, uint16_t>,
            Blocked<ElemF32, RS, CS>::key_block, BlockedPV<ElemF32, RP, CP>::dim_block,
            Blocked<ElemF32, RS, CS>::scores, BlockedPV<ElemF32, RP, CP>::pv,
            Blocked<ElemBF16, RS, CS>::key_block, BlockedPV<ElemBF16, RP, CP>::dim_block,
            Blocked<ElemBF16, RS, CS>::scores, BlockedPV<ElemBF16, RP, CP>::pv, to_bf16_rows};
}

}  // namespace
}  // namespace tg
