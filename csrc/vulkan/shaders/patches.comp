#version 450
// The ViT's patch gather (im2col): the normalised [3][S][S] image into rows of the patch matrix, one row
// per patch in row-major grid order, each in the conv kernel's (c, ky, kx) order, so the patch embedding
// is one product with v.patch_embd's rows (as the CPU path, model/vision.cpp, gathers them).
//   patches[i][(c * P + ky) * P + kx] = pixels[c][gy * P + ky][gx * P + kx],  i = gy * G + gx
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(std430, binding = 0) readonly buffer Pix { float pix[]; };
layout(std430, binding = 1) writeonly buffer Patches { float patches[]; };
layout(push_constant) uniform Params {
    uint image_size;  // S
    uint patch_size;  // P
    uint grid;        // G = S / P
    uint n;           // G * G * 3 * P * P, the patch matrix's values
} p;

void main() {
    const uint idx = flat_group() * WG + gl_LocalInvocationID.x;
    if (idx >= p.n) return;
    const uint P = p.patch_size, K = 3u * P * P;
    const uint i = idx / K, r = idx % K;
    const uint c = r / (P * P), ky = (r / P) % P, kx = r % P;
    const uint gy = i / p.grid, gx = i % p.grid;
    patches[idx] = pix[(c * p.image_size + gy * P + ky) * p.image_size + gx * P + kx];
}
