#version 450
// Full (non-causal) attention over float32 rows: every query row attends every key row, as the image path
// needs (the ViT's self-attention over its tokens, the Q-Former's over its queries, and its cross-attention
// from the queries to the image tokens). q, k and v are read where a product wrote them: row r of q at
// q_off + r * q_stride (head h at + h * head_dim), likewise k and v, so one [q | k | v] buffer may be bound
// three times. One workgroup per (query row, head) walks the keys in tiles of WG with an online softmax
// (running maximum and sum, the partial output rescaled as the maximum grows): no score matrix, and the key
// count is not bounded by shared memory. Reductions are trees in shared memory.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(std430, binding = 0) readonly buffer Q { float q[]; };
layout(std430, binding = 1) readonly buffer K { float k[]; };
layout(std430, binding = 2) readonly buffer V { float v[]; };
layout(std430, binding = 3) writeonly buffer Out { float o[]; };

layout(push_constant) uniform Params {
    uint n_q;        // query rows
    uint n_kv;       // key (and value) rows
    uint n_head;
    uint head_dim;   // at most 256 and at most 4 * WG (checked by the host)
    uint q_stride, q_off;
    uint k_stride, k_off;
    uint v_stride, v_off;
    uint o_stride;
    float scale;
} p;

#define MAX_D 256
#define DPT 4  // output dims per thread: head_dim <= DPT * WG

shared float qs[MAX_D];
shared float pr[WG];
shared float red[WG];

void main() {
    const uint tid = gl_LocalInvocationID.x;
    const uint g = flat_group();
    if (g >= p.n_q * p.n_head) return;  // uniform over the workgroup
    const uint i = g / p.n_head, h = g % p.n_head;
    const uint D = p.head_dim;
    const uint qb = p.q_off + i * p.q_stride + h * D;
    for (uint d = tid; d < D; d += WG) qs[d] = q[qb + d];
    barrier();

    const uint kh = p.k_off + h * D, vh = p.v_off + h * D;
    float run_max = -3.402823466e38, run_sum = 0.0;
    float acc[DPT];
    for (uint e = 0; e < DPT; e++) acc[e] = 0.0;

    for (uint t0 = 0; t0 < p.n_kv; t0 += WG) {
        const uint j = t0 + tid;
        float s = -3.402823466e38;
        if (j < p.n_kv) {
            s = 0.0;
            const uint kb = kh + j * p.k_stride;
            for (uint d = 0; d < D; d++) s += qs[d] * k[kb + d];
            s *= p.scale;
        }
        red[tid] = s;
        barrier();
        for (uint st = WG / 2u; st > 0u; st >>= 1) {
            if (tid < st) red[tid] = max(red[tid], red[tid + st]);
            barrier();
        }
        const float new_max = max(run_max, red[0]);
        barrier();
        const float e = j < p.n_kv ? exp(s - new_max) : 0.0;
        pr[tid] = e;
        red[tid] = e;
        barrier();
        for (uint st = WG / 2u; st > 0u; st >>= 1) {
            if (tid < st) red[tid] += red[tid + st];
            barrier();
        }
        const float c = exp(run_max - new_max);  // 0 on the first tile
        run_sum = run_sum * c + red[0];
        run_max = new_max;
        const uint n_tile = min(uint(WG), p.n_kv - t0);
        for (uint u = 0; u < DPT; u++) {
            const uint d = tid + u * WG;
            if (d >= D) break;
            float a = acc[u] * c;
            for (uint jj = 0; jj < n_tile; jj++) a += pr[jj] * v[vh + (t0 + jj) * p.v_stride + d];
            acc[u] = a;
        }
        barrier();  // pr and red are rewritten by the next tile
    }
    const float inv = 1.0 / run_sum;
    for (uint u = 0; u < DPT; u++) {
        const uint d = tid + u * WG;
        if (d < D) o[i * p.o_stride + h * D + d] = acc[u] * inv;
    }
}
