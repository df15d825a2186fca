#version 450
// Causal attention of a run of rows of one sequence against its F16 cache slot (kv_write.comp's layout):
// row i of the run, at position p0 + i, attends keys [0, p0 + i], p0 read from the step's positions (pos,
// int32 per row), so a recorded step replays at any position. One workgroup per (row, head), walking
// the keys in tiles of WG with an online softmax (running maximum and sum, the partial output rescaled as
// the maximum grows), so a tile's scores are the only ones held and n_ctx is not bounded by shared memory.
// Every reduction is a tree in shared memory: nothing depends on the subgroup width.
// The same shader serves a decode step (one row) and a prompt (many): a row's result does not depend on
// the other rows of its run. Heads share keys in groups (n_head / n_head_kv query heads per kv head).
// Split over keys (n_split > 1, decode: one row would keep only n_head workgroups busy): workgroup
// (row, head, split) takes keys [split * chunk, +chunk) and writes its unnormalised output, running maximum
// and sum to part[] ([rows * n_head][n_split][head_dim + 2]); attention_merge.comp combines them. The
// splits cover n_ctx keys, whatever the position: a split past the row's keys writes an empty part.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(std430, binding = 0) readonly buffer Qkv { float qkv[]; };
layout(std430, binding = 1) readonly buffer Kv { uint kv[]; };
layout(std430, binding = 2) writeonly buffer Out { float o[]; };
layout(std430, binding = 3) writeonly buffer Part { float part[]; };
layout(std430, binding = 4) readonly buffer Pos { int pos[]; };

layout(push_constant) uniform Params {
    uint row0;        // the run's first row in the [q | k | v] buffer and in o
    uint rows;
    uint qkv_stride;
    uint n_head;
    uint n_head_kv;
    uint head_dim;    // at most 256 and at most 4 * WG (checked by the host)
    uint kv_dim;
    uint n_ctx;
    uint o_stride;
    float scale;
    uint chunk;       // keys per split
    uint n_split;
} p;

#define MAX_D 256
#define DPT 4  // output dims per thread: head_dim <= DPT * WG

shared float qs[MAX_D];
shared float pr[WG];
shared float red[WG];

float kv_at(uint e) {  // the half at index e of the slot's halves
    const vec2 pair = unpackHalf2x16(kv[e >> 1]);
    return (e & 1u) == 0u ? pair.x : pair.y;
}

void main() {
    const uint tid = gl_LocalInvocationID.x;
    const uint g = flat_group();
    if (g >= p.rows * p.n_head * p.n_split) return;  // uniform over the workgroup
    const uint split = g % p.n_split, gh = g / p.n_split;
    const uint i = gh / p.n_head, h = gh % p.n_head;
    const uint kvh = h / (p.n_head / p.n_head_kv);
    const uint D = p.head_dim;
    const uint n_keys = min(uint(pos[p.row0]) + i + 1u, p.n_ctx);
    const uint k_begin = split * p.chunk, k_end = min(n_keys, k_begin + p.chunk);  // may be empty
    if (p.n_split > 1u && k_begin >= n_keys) {  // uniform over the workgroup: a part that weighs nothing
        const uint pb = (gh * p.n_split + split) * (D + 2u);
        for (uint d = tid; d < D; d += WG) part[pb + d] = 0.0;
        if (tid == 0u) {
            part[pb + D] = -3.402823466e38;
            part[pb + D + 1u] = 0.0;
        }
        return;
    }
    const uint qb = (p.row0 + i) * p.qkv_stride + h * D;
    for (uint d = tid; d < D; d += WG) qs[d] = qkv[qb + d];
    barrier();

    const uint kbase = kvh * D, vbase = p.n_ctx * p.kv_dim + kvh * D;
    float run_max = -3.402823466e38, run_sum = 0.0;
    float acc[DPT];
    for (uint k = 0; k < DPT; k++) acc[k] = 0.0;

    for (uint t0 = k_begin; t0 < k_end; t0 += WG) {
        const uint j = t0 + tid;
        float s = -3.402823466e38;
        if (j < k_end) {
            s = 0.0;
            const uint kb = j * p.kv_dim + kbase;
            for (uint d = 0; d < D; d++) s += qs[d] * kv_at(kb + d);
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
        const float e = j < k_end ? exp(s - new_max) : 0.0;
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
        const uint n_tile = min(uint(WG), k_end - t0);
        for (uint k = 0; k < DPT; k++) {
            const uint d = tid + k * WG;
            if (d >= D) break;
            float a = acc[k] * c;
            for (uint jj = 0; jj < n_tile; jj++) a += pr[jj] * kv_at((t0 + jj) * p.kv_dim + vbase + d);
            acc[k] = a;
        }
        barrier();  // pr and red are rewritten by the next tile
    }
    if (p.n_split > 1u) {
        const uint pb = (gh * p.n_split + split) * (D + 2u);
        for (uint k = 0; k < DPT; k++) {
            const uint d = tid + k * WG;
            if (d < D) part[pb + d] = acc[k];
        }
        if (tid == 0u) {
            part[pb + D] = run_max;
            part[pb + D + 1u] = run_sum;
        }
        return;
    }
    const float inv = 1.0 / run_sum;
    for (uint k = 0; k < DPT; k++) {
        const uint d = tid + k * WG;
        if (d < D) o[(p.row0 + i) * p.o_stride + h * D + d] = acc[k] * inv;
    }
}
