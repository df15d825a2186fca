// Internals shared by the matmul dispatcher (matmul.cpp) and its SIMD kernels
// (matmul_avx2.cpp, matmul_avx512.cpp, matmul_neon.cpp). Not part of the engine's contract.
//
// Repacked weight layout ("interleaved groups"): rows are taken 16 at a time (a group; the last
// group is padded with zero rows). Within a group, data is ordered so that one 64-byte load
// holds 4 consecutive bytes of each of the 16 rows: a SIMD lane is a row, and a dot-product
// instruction (vpdpbusd, pmaddubsw+pmaddwd, or NEON's sdot on 4 rows at a time) accumulates 4 products per row per lane without
// horizontal sums. Per block (per k value for float types) of one group:
//
//   F32   k x [16 rows] f32                                             64 B per k
//   F16   k x [16 rows] f16                                             32 B per k
//   BF16  k x [16 rows] bf16                                            32 B per k
//   Q8_0  8 slots x [16 rows][4 B] (int8 + 128, as uint8)               512 B per block of 32
//         (Q5_0 is stored in this layout too, its values q - 16 widened to int8)
//   Q4_0  4 slots x [16 rows][4 B] (qs bytes 4s..4s+3)                  256 B per block of 32
//         (IQ4_NL is stored in this layout too: its indices into kIQ4NL)
//         (Q8_0 and Q4_0 blocks are stored in pairs, d[b][16] f16 | d[b+1][16] f16 | quants of b |
//          quants of b+1, so that every 64-byte load is cache-line aligned; a lone last block has
//          32 zero bytes after its scales)
//   Q4_1  d[16] f16 | m[16] f16 | 4 slots x [16 rows][4 B] (qs bytes 4s..4s+3)   320 B per block of 32
//   Q5_1  d[16] f16 | m[16] f16 | 8 slots x [16 rows][4 B] (values 4s..4s+3, 0..31 as bytes)
//                                                                       576 B per block of 32
//   Q4_K  d[16] f16 | dmin[16] f16 | sc[8][16] u8 | m[4][16][2] u8 |
//         32 slots x [16 rows][4 B] (slot 8c+s: qs bytes 32c+4s..+3)    2368 B per block of 256
//   Q5_K  Q4_K's layout (low 4 bits), then 8 slots x [16 rows][4 B]
//         (slot s: qh bytes 4s..4s+3; bit j of qh byte l: 5th bit of value 32j + l)  2880 B per block of 256
//   Q6_K  d[16] f16 | sc[16][16] i8 | 16 x (ql slot, ql slot, qh slot)  3360 B per block of 256
//         (sub-block t of 16 values, slots at 288 + 192t: first byte e = u[16t+e] | u[16t+4+e] << 4,
//          second byte e = u[16t+8+e] | u[16t+12+e] << 4, third byte e = high 2 bits of
//          u[16t+e], u[16t+4+e], u[16t+8+e], u[16t+12+e] at bits 0, 2, 4, 6; u = q + 32)
//         (Q3_K is stored in this layout too: its values -4..3 as q, its scales sc - 32 as sc)
//   Q2_K  Q6_K's layout (values 0..3 as q, the 4-bit scales as sc), then dmin[16] f16 |
//         m[8][16][2] u8 (pair p, row r: mins of sub-blocks 2p and 2p + 1)   3648 B per block of 256
//   IQ4_XS d[16] f16 | sc[8][16] i8 (ls - 32) | 32 zero bytes | 32 slots x [16 rows][4 B] (indices
//         into kIQ4NL, arranged as Q4_K's qs: slot 8c+s byte e holds value 64c+4s+e in its low
//         nibble, 64c+32+4s+e in its high one)                       2240 B per block of 256
//
// Every path computes each output with the same arithmetic, so results are bit-identical across
// instruction sets and thread counts:
//   float weights:  acc = fma(w[k], x[k], acc) for k = 0, 1, ... in order (acc starts at 0)
//   Q8_0:           per block b: isum = exact int32 dot of the int8 values;
//                   acc = fma(d_w * d_x, (float)isum, acc)
//   Q4_0:           per activation scale group c (kActGroupQ4_0 blocks, the last one shorter):
//                   t = 0; per block b of c: t = fma(d_w[b], (float)isum_b, t); then acc = fma(d_x[c], t, acc)
//                   (one activation scale for 4 blocks: the product d_w * d_x per block would cost
//                   a multiply on the ports of vpdpbusd, 1 in 10 of a block's operations there)
//   Q4_K:           per super-block: isum = sum_j sc_j * dot_j, msum = sum_j m_j * xsum_j (int32);
//                   acc = fma(d_w * d_x, (float)isum, acc); acc = fma(-(dmin_w * d_x), (float)msum, acc)
//   Q6_K:           per super-block: isum = sum_t sc_t * dot_t (values q - 32);
//                   acc = fma(d_w * d_x, (float)isum, acc)
//   Q5_0:           as Q8_0 (values q - 16; repacked into Q8_0's layout, so Q8_0's kernels run it)
//   Q4_1, Q5_1:     as Q4_0 (values q, unsigned), and after each block's t = fma(d_w[b], (float)isum_b, t)
//                   also t = fma(m_w[b], (float)xsum_b, t) (xsum_b: sum of the block's int8 activations)
//   Q5_K:           as Q4_K (values 0..31)
//   Q3_K:           as Q6_K (values -4..3, scales -32..31; repacked into Q6_K's layout, so Q6_K's kernels run it)
//   Q2_K:           as Q6_K (values 0..3, scales 0..15), plus msum = sum_t m_t * xsum_t (int32, xsum_t: sum of the
//                   16 int8 activations of sub-block t) and acc = fma(-(dmin_w * d_x), (float)msum, acc) after
//                   the isum step
//   IQ4_NL:         as Q8_0 (values kIQ4NL[q]; stored in Q4_0's layout, looked up before the dots)
//   IQ4_XS:         as Q6_K with sub-blocks of 32 (values kIQ4NL[q], scales ls - 32)
//   then y = acc + bias (or acc without bias).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "cpu.h"
#include "ggml_type.h"

namespace tg {

constexpr int kGroup = 16;

// Bytes of one block (one k value for float types) of one group in the repacked layout.
constexpr size_t kPackQ8_0 = 8 * 64;   // quants of one block; the scales are paired, see above
constexpr size_t kPackQ4_0 = 4 * 64;
// Offsets in a group of the scales and of the quants of block b, and the group's size, for blocks
// of QB quant bytes stored in pairs.
template <size_t QB> constexpr size_t pair_bytes() { return 64 + 2 * QB; }
template <size_t QB> constexpr size_t pair_scale_off(int64_t b) { return (size_t)(b >> 1) * pair_bytes<QB>() + 32 * (size_t)(b & 1); }
template <size_t QB> constexpr size_t pair_quant_off(int64_t b) { return (size_t)(b >> 1) * pair_bytes<QB>() + 64 + QB * (size_t)(b & 1); }
template <size_t QB> constexpr size_t pair_group_bytes(int64_t nb) { return (size_t)(nb / 2) * pair_bytes<QB>() + (size_t)(nb & 1) * (64 + QB); }
constexpr size_t kPackQ4_K = 32 + 32 + 128 + 128 + 32 * 64;
constexpr size_t kPackQ6_K = 32 + 256 + 32 * 64 + 16 * 64;
constexpr size_t kPackQ5_K = kPackQ4_K + 8 * 64;
constexpr size_t kPackQ2_K = kPackQ6_K + 32 + 256;
constexpr size_t kPackQ4_1 = 64 + 4 * 64;
constexpr size_t kPackQ5_1 = 64 + 8 * 64;
constexpr size_t kPackIQ4_XS = 32 + 128 + 32 + 32 * 64;  // quants start on a cache line
// kIQ4NL + 128: the table the x86 kernels look indices up in, unsigned for vpdpbusd.
alignas(16) constexpr uint8_t kIQ4NLBiased[16] = {1, 24, 45, 63, 79, 93, 106, 118, 129, 141, 153, 166, 181, 197, 217, 241};

// Two int16 activation sums (of 16 values each: |sum| <= 2032) as one int32 lane pattern, low half
// first, for the pairwise multiply-adds of the Q2_K min term.
inline int32_t pack_int16_pair(int32_t lo, int32_t hi) {
    return (int32_t)((uint32_t)(uint16_t)lo | ((uint32_t)(uint16_t)hi << 16));
}

// Blocks of 32 activations that share one scale for Q4_0 weights (Q8_0 weights: 1, as ggml's Q8_0).
// With 4-bit weights the weights' rounding error is ~15x the activations' even at one scale per 128
// values (numpy: relative error of a 2560-wide product 0.0857 with scales per 32, 0.0857 per 128;
// 0.0862 -> 0.0874 with six 20x outlier channels); ggml's K-quants take one per 256 (Q8_K).
constexpr int kActGroupQ4_0 = 4;

// Activations quantized once per matmul (shared by all paths, so all see identical int8 data).
struct ActQ8 {                 // for Q8_0 and Q4_0 weights: int8 blocks of 32, a scale per gb blocks
    int64_t n = 0, k = 0, nb = 0;
    int64_t gb = 1, ng = 0;    // blocks per scale; scales per row = ceil(nb / gb)
    std::vector<int8_t> qs;    // [n][k]
    std::vector<float> d;      // [n][ng]  fp16 scale as float
    std::vector<int32_t> sum;  // [n][nb]  sum of the block's qs
    std::vector<int32_t> corr; // [n][nb]  AVX-512 only: kMagicBits - offset * sum, where the weights'
                               //          stored values are q + offset (the term each block's dot starts from)
};

// Bits of the float 1.5 * 2^23: an int32 v with |v| < 2^22 added to them reads as the float
// 1.5 * 2^23 + v exactly (see matmul_avx512.cpp, magic_to_float).
constexpr int32_t kMagicBits = 0x4B400000;

struct ActQ8K {                // for K-quant weights: Q8_K blocks of 256
    int64_t n = 0, k = 0, nb = 0;
    std::vector<int8_t> qs;      // [n][k]
    std::vector<float> d;        // [n][nb]
    std::vector<int32_t> bsum;   // [n][nb][16] sums of 16 values
    std::vector<int32_t> pair32; // [n][nb][4]  int16 pair (sum of sub-block 2p, 2p+1) of 32 values
};

// Activation quantizers, one row of k values (the scalar versions are the reference; the SIMD
// versions produce identical bytes). Q8_0 rows: blocks of 32 with one fp16 scale per gb blocks (gb
// 1 or 4; the last group may be shorter); gb = 1 is ggml's quantize_row_q8_0 except that a block
// whose fp16 scale is 0 gets all-zero values, gb = 4 the same rule over 128 values.
// Q8_K rows: ggml's quantize_row_q8_K (blocks of 256, float scale), plus sums of 16 and 32.
void quantize_act_q8_row(const float* x, int64_t k, int8_t* qs, float* d, int32_t* sum, int gb);
void quantize_act_q8k_row(const float* x, int64_t k, int8_t* qs, float* d, int32_t* bsum, int32_t* pair32);
using QuantActQ8Row = void (*)(const float* x, int64_t k, int8_t* qs, float* d, int32_t* sum, int gb);
QuantActQ8Row quantize_act_q8_row_for(Isa isa);  // the instruction set's version of quantize_act_q8_row
using QuantActQ8KRow = void (*)(const float* x, int64_t k, int8_t* qs, float* d, int32_t* bsum, int32_t* pair32);
QuantActQ8KRow quantize_act_q8k_row_for(Isa isa);  // ... of quantize_act_q8k_row

struct GemmArgs {
    const uint8_t* w = nullptr;  // repacked weight, starting at group g_base
    int64_t g_base = 0;
    int64_t n_out = 0, n_in = 0;
    int64_t n = 0;               // activation rows
    const float* x = nullptr;    // float activations [n][n_in] (float weights)
    const ActQ8* a8 = nullptr;   // Q8_0 / Q4_0 weights
    const ActQ8K* ak = nullptr;  // K-quant weights
    float* y = nullptr;          // [n][n_out]
    const float* bias = nullptr; // [n_out] or null
    size_t prefetch = 0;         // a few rows (the decode steps of several sequences): bytes of a
                                 // group, prefetched for the next group while this one is computed
};

// Computes the outputs of row groups [g0, g1) for every activation row.
using GemmFn = void (*)(const GemmArgs&, int64_t g0, int64_t g1);

// Bytes of the repacked layout of one group (0: type has no repacked layout).
size_t packed_group_bytes(GgmlType t, int64_t n_in);

// Decode (n == 1) kernel over NG row groups at once: wg[j] is group g[j]'s repacked data.
using DecodeFn = void (*)(const GemmArgs&, const uint8_t* const* wg, const int64_t* g);

// Decode driver shared by the SIMD paths: the thread's groups [g0, g1) are split into
// kDecodeStreams equal parts walked side by side, so each core reads kDecodeStreams places of the
// weight at once: more cache-line fetches in flight than one sequential stream keeps, so a core
// reads the weights faster. V4 takes one group from each part, V1 the groups left over. Per output
// the arithmetic is that of the ISA's tile kernels.
constexpr int kDecodeStreams = 4;
template <DecodeFn V4, DecodeFn V1>
void decode_streams(const GemmArgs& A, int64_t g0, int64_t g1, size_t gbytes) {
    const int64_t len = (g1 - g0) / kDecodeStreams;
    for (int64_t i = 0; i < len; i++) {
        int64_t g[kDecodeStreams];
        const uint8_t* w[kDecodeStreams];
        for (int j = 0; j < kDecodeStreams; j++) {
            g[j] = g0 + j * len + i;
            w[j] = A.w + (g[j] - A.g_base) * gbytes;
        }
        V4(A, w, g);
    }
    for (int64_t gg = g0 + kDecodeStreams * len; gg < g1; gg++) {
        const uint8_t* w = A.w + (gg - A.g_base) * gbytes;
        V1(A, &w, &gg);
    }
}

// A few activation rows (the decode steps of several sequences) take the prompt tiles over a thread's
// contiguous range of groups, one memory stream per core, whose arithmetic leaves the hardware
// prefetcher behind: each step of a tile also asks for its share of the next group's bytes
// (GemmArgs::prefetch), so the next group arrives while this one computes. Bytes per step, whole lines.
inline int64_t prefetch_step(size_t group_bytes, int64_t steps) {
    return group_bytes ? (int64_t)((group_bytes + steps - 1) / steps + 63) / 64 * 64 : 0;
}
__attribute__((always_inline)) inline void prefetch_lines(const uint8_t* p, int64_t bytes) {
    for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(p + o, 0, 3);
}

// Activation rows processed together so that they stay in the L2 cache (about 384 KB of them): the
// n rows cut into equal chunks of whole tiles of `tile` rows (95 rows of 10240 bytes: 35, 35, 25
// rather than 32, 32, 31, whose tails of 2 and 1 rows reuse each unpacked weight block less).
inline int64_t act_chunk_rows(int64_t n, int64_t k_bytes, int64_t tile) {
    int64_t c = (int64_t)(384 * 1024) / (k_bytes > 0 ? k_bytes : 1);
    if (c < 2 * tile) c = 2 * tile;
    if (c >= n) return n;
    const int64_t chunks = (n + c - 1) / c;
    const int64_t rows = (n + chunks - 1) / chunks;
    return (rows + tile - 1) / tile * tile;
}

// Prompt driver of the kernels that take a 16-row group in PARTS parts of 16 / PARTS rows (AVX2:
// halves, NEON: quarters): row groups outer, parts, then activation tiles of up to 4 rows (the
// unpacked weights of a block are reused across the tile); activations are taken in L2-sized chunks.
// tiles[t - 1] computes a tile of t rows of one part.
using PartTileFn = void (*)(const GemmArgs& A, const uint8_t* wg, int64_t g, int64_t i0, int part);
template <int PARTS>
void part_quant_gemm(const GemmArgs& A, int64_t g0, int64_t g1, size_t gbytes, const PartTileFn (&tiles)[4]) {
    const int64_t chunk = act_chunk_rows(A.n, A.n_in, 4);
    for (int64_t c0 = 0; c0 < A.n; c0 += chunk) {
        const int64_t c1 = c0 + chunk < A.n ? c0 + chunk : A.n;
        for (int64_t g = g0; g < g1; g++) {
            const uint8_t* wg = A.w + (g - A.g_base) * gbytes;
            for (int p = 0; p < PARTS; p++) {
                if (g * kGroup + (kGroup / PARTS) * p >= A.n_out) break;
                for (int64_t i = c0; i < c1; i += 4) tiles[(c1 - i < 4 ? c1 - i : 4) - 1](A, wg, g, i, p);
            }
        }
    }
}

// Float-weight driver of the kernels that take a whole 16-row group per call (AVX2, NEON; AVX-512
// widens 16-bit weights once per pair of groups and has its own). Decode (one activation row): two
// groups at once, from the two halves of the thread's range, so that each core reads two places of
// the weight at once (pair). Prompts: row groups outer, then activation tiles of up to MAXNT rows (the
// loaded weights of a k step are reused across the tile), the activations in L2-sized chunks.
// tiles[t - 1] computes a tile of t rows of one group; gstep is the group distance of pair's groups.
using FloatTileFn = void (*)(const GemmArgs& A, size_t gbytes, int64_t g, int64_t i0, int64_t gstep);
template <int MAXNT>
void float_gemm_groups(const GemmArgs& A, int64_t g0, int64_t g1, size_t gbytes, FloatTileFn pair,
                       const FloatTileFn (&tiles)[MAXNT]) {
    if (A.n == 1) {
        const int64_t len = (g1 - g0) / 2;
        for (int64_t g = g0; g < g0 + len; g++) pair(A, gbytes, g, 0, len);
        for (int64_t g = g0 + 2 * len; g < g1; g++) tiles[0](A, gbytes, g, 0, 1);
        return;
    }
    const int64_t chunk = act_chunk_rows(A.n, A.n_in * 4, MAXNT);
    for (int64_t c0 = 0; c0 < A.n; c0 += chunk) {
        const int64_t c1 = c0 + chunk < A.n ? c0 + chunk : A.n;
        for (int64_t g = g0; g < g1; g++)
            for (int64_t i = c0; i < c1; i += MAXNT) tiles[(c1 - i < MAXNT ? c1 - i : MAXNT) - 1](A, gbytes, g, i, 1);
    }
}

// The entry points of each SIMD instruction set (one namespace each, the same set).
#define TG_SIMD_KERNEL_SET                                                                                  \
    void quantize_act_q8_row(const float* x, int64_t k, int8_t* qs, float* d, int32_t* sum, int gb);        \
    void quantize_act_q8k_row(const float* x, int64_t k, int8_t* qs, float* d, int32_t* bsum, int32_t* pair32); \
    void gemm_f32(const GemmArgs&, int64_t, int64_t);                                                       \
    void gemm_f16(const GemmArgs&, int64_t, int64_t);                                                       \
    void gemm_bf16(const GemmArgs&, int64_t, int64_t);                                                      \
    void gemm_q8_0(const GemmArgs&, int64_t, int64_t);                                                      \
    void gemm_q4_0(const GemmArgs&, int64_t, int64_t);                                                      \
    void gemm_q4_K(const GemmArgs&, int64_t, int64_t);                                                      \
    void gemm_q6_K(const GemmArgs&, int64_t, int64_t);                                                      \
    void gemm_q2_K(const GemmArgs&, int64_t, int64_t);                                                      \
    void gemm_iq4_xs(const GemmArgs&, int64_t, int64_t);                                                     \
    void gemm_iq4_nl(const GemmArgs&, int64_t, int64_t);
#if defined(TINYGPTV_X86)
#define TG_X86_KERNEL_SET                                   \
    TG_SIMD_KERNEL_SET                                      \
    void gemm_q5_K(const GemmArgs&, int64_t, int64_t);      \
    void gemm_q4_1(const GemmArgs&, int64_t, int64_t);      \
    void gemm_q5_1(const GemmArgs&, int64_t, int64_t);
namespace avx2 { TG_X86_KERNEL_SET }
namespace avx512 { TG_X86_KERNEL_SET }
#if defined(TINYGPTV_AVX_VNNI)
namespace avxvnni { TG_X86_KERNEL_SET }  // the AVX2 kernels with vpdpbusd (matmul_avxvnni.cpp)
#endif
#undef TG_X86_KERNEL_SET
#endif
#if defined(TINYGPTV_ARM)
namespace neon {
TG_SIMD_KERNEL_SET
void gemm_q5_K(const GemmArgs&, int64_t, int64_t);
void gemm_q4_1(const GemmArgs&, int64_t, int64_t);
void gemm_q5_1(const GemmArgs&, int64_t, int64_t);
}
#endif
#undef TG_SIMD_KERNEL_SET

}  // namespace tg
