// Multi-head attention (ops.h: attention()): the driver of both paths of attention_kernels.h, the
// scalar kernels that define their arithmetic, and the run-time choice of kernel set.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu.h"
#include "fp16.h"
#include "kernels/attention_kernels.h"
#include "kernels/ops.h"
#include "kernels/vecmath.h"
#include "exec.h"

namespace tg {

// ---- scalar kernels -----------------------------------------------------------------------------

static inline float as_f32(float x) { return x; }
static inline float as_f32(uint16_t h) { return fp16_to_fp32(h); }

template <class T>
static float dot16_scalar(const float* q, const T* k, int n) {
    float lanes[vm::kSumLanes] = {};
    for (int i = 0; i < n; i++) lanes[i % vm::kSumLanes] = std::fma(q[i], as_f32(k[i]), lanes[i % vm::kSumLanes]);
    return lane_sum16(lanes);
}

template <class T>
static void axpy_scalar(float* y, float a, const T* x, int n) {
    for (int i = 0; i < n; i++) y[i] = std::fma(a, as_f32(x[i]), y[i]);
}

// The blocked kernels for both element kinds (attention_kernels.h): float32 values take one fma per
// step, bf16 pairs two (the halves widened to float32, the odd one first).
struct ScalarF32 {
    using E = float;
    static float mac(float acc, float a, float b) { return std::fma(a, b, acc); }
};
struct ScalarBF16 {
    using E = uint32_t;
    static float mac(float acc, uint32_t a, uint32_t b) {
        acc = std::fma(bf16_to_fp32((uint16_t)(a >> 16)), bf16_to_fp32((uint16_t)(b >> 16)), acc);
        return std::fma(bf16_to_fp32((uint16_t)a), bf16_to_fp32((uint16_t)b), acc);
    }
};

template <class El>
static void scores_scalar(const typename El::E* q, int64_t qs, int rows, const typename El::E* kt, int64_t ldk,
                          int64_t nk, int hd, float scale, float* s) {
    for (int r = 0; r < rows; r++) {
        float* sr = s + r * ldk;
        std::fill(sr, sr + nk, 0.f);
        for (int d = 0; d < hd; d++) {
            const typename El::E qd = q[r * qs + d];
            const typename El::E* kd = kt + d * ldk;
            for (int64_t j = 0; j < nk; j++) sr[j] = El::mac(sr[j], qd, kd[j]);
        }
        for (int64_t j = 0; j < nk; j++) sr[j] = sr[j] * scale;
    }
}

template <class El>
static void pv_scalar(const typename El::E* p, int64_t ldp, int rows, int64_t n, const typename El::E* vp,
                      int64_t ldv, float* o) {
    for (int r = 0; r < rows; r++) {
        float* orow = o + r * ldv;
        std::fill(orow, orow + ldv, 0.f);
        for (int64_t j = 0; j < n; j++)
            for (int64_t d = 0; d < ldv; d++) orow[d] = El::mac(orow[d], p[r * ldp + j], vp[j * ldv + d]);
    }
}

static void to_bf16_scalar(const float* x, uint16_t* y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = bf16_round(x[i]);
}

const AttnKernels& attn_kernels_scalar() {
    static const AttnKernels k = {dot16_scalar<float>, dot16_scalar<uint16_t>, axpy_scalar<float>, axpy_scalar<uint16_t>,
                                  1, 1, scores_scalar<ScalarF32>, pv_scalar<ScalarF32>, 1, 1,
                                  scores_scalar<ScalarBF16>, pv_scalar<ScalarBF16>, to_bf16_scalar};
    return k;
}

#if defined(TINYGPTV_X86)
// AVX-512 without AVX512_BF16: the bf16 kernels of the AVX2 set (the two fmas of each step, 8 lanes; the
// conversion in integer steps).
static const AttnKernels& attn_kernels_avx512_no_bf16() {
    static const AttnKernels k = [] {
        AttnKernels a = attn_kernels_avx512();
        const AttnKernels& e = attn_kernels_avx2();
        a.bf16_key_block = e.bf16_key_block;
        a.bf16_dim_block = e.bf16_dim_block;
        a.scores_bf16 = e.scores_bf16;
        a.pv_bf16 = e.pv_bf16;
        a.to_bf16 = e.to_bf16;
        return a;
    }();
    return k;
}
#endif

const AttnKernels& attn_kernels() {
#if defined(TINYGPTV_X86)
    switch (isa_active()) {
        case Isa::Avx512: return cpu_has_avx512_bf16() ? attn_kernels_avx512() : attn_kernels_avx512_no_bf16();
        case Isa::Avx2: return attn_kernels_avx2();
        case Isa::Scalar: case Isa::Neon: break;
    }
#elif defined(TINYGPTV_ARM)
    if (isa_active() == Isa::Neon) return attn_kernels_neon();
#endif
    return attn_kernels_scalar();
}

// ---- row path: one (query row, head) at a time --------------------------------------------------

// One head of one query row against len keys; att: room for len scores.
template <bool F16>
static void attend_head(const float* qh, const uint8_t* kb, const uint8_t* vb, int64_t kv_stride, int64_t len, int hd,
                        float scale, float* att, float* o, const AttnKernels& K, const VecMath& M) {
    const size_t esz = F16 ? 2 : 4;
    for (int64_t j = 0; j < len; j++) {
        const void* kr = kb + (size_t)j * kv_stride * esz;
        att[j] = (F16 ? K.dot_f16(qh, (const uint16_t*)kr, hd) : K.dot_f32(qh, (const float*)kr, hd)) * scale;
    }
    const float inv = 1.0f / M.exp_sum(att, len, M.max(att, len));
    std::fill(o, o + hd, 0.f);
    for (int64_t j = 0; j < len; j++) {
        const void* vr = vb + (size_t)j * kv_stride * esz;
        if (F16) K.axpy_f16(o, att[j], (const uint16_t*)vr, hd);
        else K.axpy_f32(o, att[j], (const float*)vr, hd);
    }
    for (int d = 0; d < hd; d++) o[d] = o[d] * inv;
}

template <bool F16>
static void attention_rows(const float* q, int64_t T, int64_t q_stride, const void* k, const void* v,
                           int64_t kv_stride, int64_t n_kv, bool causal, int64_t pos0, int n_head, int n_head_kv,
                           int hd, float scale, float* out, int64_t out_stride, Exec& ex) {
    const size_t esz = F16 ? 2 : 4;
    const int group = n_head / n_head_kv;
    const AttnKernels& K = attn_kernels();
    const VecMath& M = vecmath();
    ex.parallel_for(T * n_head, 1, [&](int64_t i0, int64_t i1, int) {
        std::vector<float> att((size_t)n_kv);
        for (int64_t i = i0; i < i1; i++) {
            const int64_t t = i / n_head;
            const int h = (int)(i % n_head), hk = h / group;
            const int64_t len = causal ? std::min<int64_t>(n_kv, pos0 + t + 1) : n_kv;
            attend_head<F16>(q + t * q_stride + (int64_t)h * hd, (const uint8_t*)k + (size_t)hk * hd * esz,
                             (const uint8_t*)v + (size_t)hk * hd * esz, kv_stride, len, hd, scale, att.data(),
                             out + t * out_stride + (int64_t)h * hd, K, M);
        }
    });
}

template <bool F16>
static void attention_decode_impl(const AttnRow* rows, int64_t n, int64_t kv_stride, int n_head, int n_head_kv, int hd,
                                  float scale, float* scratch, int64_t scratch_stride, Exec& ex) {
    const size_t esz = F16 ? 2 : 4;
    const int group = n_head / n_head_kv;
    const AttnKernels& K = attn_kernels();
    const VecMath& M = vecmath();
    ex.parallel_for(n * n_head, 1, [&](int64_t i0, int64_t i1, int th) {
        float* att = scratch + (int64_t)th * scratch_stride;
        for (int64_t i = i0; i < i1; i++) {
            const AttnRow& r = rows[i / n_head];
            const int h = (int)(i % n_head), hk = h / group;
            attend_head<F16>(r.q + (int64_t)h * hd, (const uint8_t*)r.k + (size_t)hk * hd * esz,
                             (const uint8_t*)r.v + (size_t)hk * hd * esz, kv_stride, r.n_kv, hd, scale, att,
                             r.out + (int64_t)h * hd, K, M);
        }
    });
}

void attention_decode(const AttnRow* rows, int64_t n, int64_t kv_stride, bool kv_f16, int n_head, int n_head_kv,
                      int hd, float scale, float* scratch, int64_t scratch_stride, Exec& ex) {
    if (n <= 0) return;
    if (kv_f16) attention_decode_impl<true>(rows, n, kv_stride, n_head, n_head_kv, hd, scale, scratch, scratch_stride, ex);
    else attention_decode_impl<false>(rows, n, kv_stride, n_head, n_head_kv, hd, scale, scratch, scratch_stride, ex);
}

// ---- blocked path: a tile of query rows of one head against its keys ---------------------------
//
// A thread packs one head's K and V at a time (a Pack), then runs its tiles of query rows: scores,
// softmax (float32, here), P V, scaling. PackF32 keeps float32 values; PackBF16 the bf16 pairs of the
// bf16 variant, converting the query rows and the softmax weights on the way in.

static inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// Rows of q, k and v lie a whole qkv row apart (thousands of bytes): the packing loops ask for the
// row kAhead rows on while converting one.
constexpr int64_t kAhead = 4;
template <class T>
static inline void prefetch_row(const T* p, int n) {
    const char* b = (const char*)p;
    for (size_t i = 0; i < n * sizeof(T); i += 64) __builtin_prefetch(b + i);
    __builtin_prefetch(b + n * sizeof(T) - 1);
}

// One key/value row of hd values as float32 (exact for half).
static inline void widen_row(const VecMath&, const float* x, float* y, int hd) { std::copy(x, x + hd, y); }
static inline void widen_row(const VecMath& M, const uint16_t* x, float* y, int hd) { M.from_f16(x, y, hd); }

template <class T>
struct PackF32 {
    const AttnKernels& K;
    const VecMath& M;
    const int hd;
    const int64_t n_kv, ldk, ldv;
    std::vector<float> kt, vp, krow;  // K transposed: hd rows of ldk keys; V: n_kv rows of ldv; zero padded
    PackF32(const AttnKernels& K_, const VecMath& M_, int hd_, int64_t n_kv_, int64_t /*tile_rows*/)
        : K(K_), M(M_), hd(hd_), n_kv(n_kv_), ldk(round_up(n_kv_, K_.key_block)), ldv(round_up(hd_, K_.dim_block)),
          kt((size_t)(hd * ldk), 0.f), vp((size_t)(n_kv * ldv), 0.f), krow((size_t)hd) {}
    void head(const T* kh, const T* vh, int64_t kv_stride) {  // kt beyond n_kv is never written: stays zero
        for (int64_t j = 0; j < n_kv; j++) {
            if (j + kAhead < n_kv) {
                prefetch_row(kh + (j + kAhead) * kv_stride, hd);
                prefetch_row(vh + (j + kAhead) * kv_stride, hd);
            }
            widen_row(M, kh + j * kv_stride, krow.data(), hd);
            for (int d = 0; d < hd; d++) kt[(size_t)(d * ldk + j)] = krow[(size_t)d];
            widen_row(M, vh + j * kv_stride, &vp[(size_t)(j * ldv)], hd);
        }
    }
    void scores(const float* q, int64_t q_stride, int rows, int64_t nk, float scale, float* s) {
        K.scores(q, q_stride, rows, kt.data(), ldk, nk, hd, scale, s);
    }
    void pv(float* p, int rows, int64_t nk, float* o) { K.pv(p, ldk, rows, nk, vp.data(), ldv, o); }
};

struct PackBF16 {
    const AttnKernels& K;
    const int hd, np;        // np pairs of dimensions
    const int64_t n_kv, ldk, ldv;  // ldk even: the P rows hold key pairs
    // K transposed: np rows of ldk keys; V: one row of ldv per key pair; the tile's query rows and weights
    std::vector<uint32_t> kt, vp, qp, pp, krow;
    std::vector<uint16_t> a, b;  // one row in bf16 (a: room for the pad of an odd hd, or a row of P)
    PackBF16(const AttnKernels& K_, const VecMath&, int hd_, int64_t n_kv_, int64_t tile_rows)
        : K(K_), hd(hd_), np((hd_ + 1) / 2), n_kv(n_kv_), ldk(round_up(n_kv_ + (n_kv_ & 1), K_.bf16_key_block)),
          ldv(round_up(hd_, K_.bf16_dim_block)), kt((size_t)(np * ldk), 0), vp((size_t)((n_kv + 1) / 2 * ldv), 0),
          qp((size_t)(tile_rows * np)), pp((size_t)(tile_rows * ldk / 2)), krow((size_t)np),
          a((size_t)std::max<int64_t>(2 * np + 1, ldk), 0), b((size_t)hd, 0) {}
    // a row's bf16 values in memory order are its pairs (a[hd] = 0 pads an odd hd)
    void pairs_of(const float* x, uint32_t* dst) {
        a[(size_t)hd] = 0;
        K.to_bf16(x, a.data(), hd);
        std::memcpy(dst, a.data(), sizeof(uint32_t) * np);
    }
    void head(const float* kh, const float* vh, int64_t kv_stride) {
        for (int64_t j = 0; j < n_kv; j++) {
            if (j + kAhead < n_kv) prefetch_row(kh + (j + kAhead) * kv_stride, hd);
            pairs_of(kh + j * kv_stride, krow.data());
            for (int p = 0; p < np; p++) kt[(size_t)(p * ldk + j)] = krow[(size_t)p];
        }
        for (int64_t jp = 0; 2 * jp < n_kv; jp++) {  // pair (key 2jp, key 2jp + 1) of each dimension
            for (int64_t j = 2 * jp + kAhead; j < std::min(n_kv, 2 * jp + kAhead + 2); j++) prefetch_row(vh + j * kv_stride, hd);
            K.to_bf16(vh + 2 * jp * kv_stride, a.data(), hd);
            if (2 * jp + 1 < n_kv) K.to_bf16(vh + (2 * jp + 1) * kv_stride, b.data(), hd);
            else std::fill(b.begin(), b.end(), (uint16_t)0);
            for (int d = 0; d < hd; d++) vp[(size_t)(jp * ldv + d)] = (uint32_t)a[(size_t)d] | (uint32_t)b[(size_t)d] << 16;
        }
    }
    void scores(const float* q, int64_t q_stride, int rows, int64_t nk, float scale, float* s) {
        for (int r = 0; r < rows; r++) {
            if (r + kAhead < rows) prefetch_row(q + (r + kAhead) * q_stride, hd);
            pairs_of(q + r * q_stride, &qp[(size_t)(r * np)]);
        }
        K.scores_bf16(qp.data(), np, rows, kt.data(), ldk, nk, np, scale, s);
    }
    void pv(float* p, int rows, int64_t nk, float* o) {
        const int64_t n_even = nk + (nk & 1);
        for (int r = 0; r < rows; r++) {
            float* pr = p + r * ldk;
            std::fill(pr + nk, pr + n_even, 0.f);
            K.to_bf16(pr, a.data(), n_even);
            std::memcpy(&pp[(size_t)(r * ldk / 2)], a.data(), sizeof(uint16_t) * n_even);
        }
        K.pv_bf16(pp.data(), ldk / 2, rows, n_even / 2, vp.data(), ldv, o);
    }
};

template <class Pack, class T>
static void attention_blocked(const float* q, int64_t T_, int64_t q_stride, const T* k, const T* v, int64_t kv_stride,
                              int64_t n_kv, bool causal, int64_t pos0, int n_head, int n_head_kv, int hd, float scale,
                              float* out, int64_t out_stride, Exec& ex) {
    constexpr int64_t kTile = 48;  // query rows per work item
    const AttnKernels& K = attn_kernels();
    const VecMath& M = vecmath();
    const int group = n_head / n_head_kv;
    const int64_t n_tiles = (T_ + kTile - 1) / kTile;
    // keys query row t sees
    auto keys_of = [&](int64_t t) { return causal ? std::min<int64_t>(n_kv, pos0 + t + 1) : n_kv; };
    // Work items in (head, tile) order: a thread's contiguous chunk mostly shares one head's K and V.
    ex.parallel_for(n_head * n_tiles, 1, [&](int64_t i0, int64_t i1, int) {
        Pack pk(K, M, hd, n_kv, kTile);
        std::vector<float> s((size_t)(kTile * pk.ldk)), o((size_t)(kTile * pk.ldv));
        int packed = -1;
        for (int64_t i = i0; i < i1; i++) {
            const int h = (int)(i / n_tiles), hk = h / group;
            if (hk != packed) {
                pk.head(k + (int64_t)hk * hd, v + (int64_t)hk * hd, kv_stride);
                packed = hk;
            }
            const int64_t t0 = (i % n_tiles) * kTile;
            const int rows = (int)std::min(kTile, T_ - t0);
            const int64_t n_tile = keys_of(t0 + rows - 1);  // the longest row of the tile
            pk.scores(q + t0 * q_stride + (int64_t)h * hd, q_stride, rows, n_tile, scale, s.data());
            float inv[kTile];
            for (int r = 0; r < rows; r++) {
                float* sr = &s[(size_t)(r * pk.ldk)];
                const int64_t len = keys_of(t0 + r);
                inv[r] = 1.0f / M.exp_sum(sr, len, M.max(sr, len));
                std::fill(sr + len, sr + n_tile, 0.f);
            }
            pk.pv(s.data(), rows, n_tile, o.data());
            for (int r = 0; r < rows; r++) {
                float* dst = out + (t0 + r) * out_stride + (int64_t)h * hd;
                const float* src = &o[(size_t)(r * pk.ldv)];
                for (int d = 0; d < hd; d++) dst[d] = src[d] * inv[r];
            }
        }
    });
}

void attention(const float* q, int64_t T, int64_t q_stride, const void* k, const void* v, int64_t kv_stride,
               bool kv_f16, int64_t n_kv, bool causal, int64_t pos0, int n_head, int n_head_kv, int hd,
               float scale, float* out, int64_t out_stride, Exec& ex, bool bf16) {
    if (T > 1 && bf16 && !kv_f16)
        attention_blocked<PackBF16>(q, T, q_stride, (const float*)k, (const float*)v, kv_stride, n_kv, causal, pos0,
                                    n_head, n_head_kv, hd, scale, out, out_stride, ex);
    else if (T > 1 && kv_f16)
        attention_blocked<PackF32<uint16_t>>(q, T, q_stride, (const uint16_t*)k, (const uint16_t*)v, kv_stride, n_kv,
                                             causal, pos0, n_head, n_head_kv, hd, scale, out, out_stride, ex);
    else if (T > 1)
        attention_blocked<PackF32<float>>(q, T, q_stride, (const float*)k, (const float*)v, kv_stride, n_kv, causal,
                                          pos0, n_head, n_head_kv, hd, scale, out, out_stride, ex);
    else if (kv_f16)
        attention_rows<true>(q, T, q_stride, k, v, kv_stride, n_kv, causal, pos0, n_head, n_head_kv, hd, scale, out,
                             out_stride, ex);
    else
        attention_rows<false>(q, T, q_stride, k, v, kv_stride, n_kv, causal, pos0, n_head, n_head_kv, hd, scale, out,
                              out_stride, ex);
}

}  // namespace tg
