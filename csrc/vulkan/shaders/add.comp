#version 450
// y[i] = a[i] + b[i % nb]: a residual add (nb = n) or a bias over rows (nb = the row length).
// y may be a (in place).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(std430, binding = 0) readonly buffer A { float a[]; };
layout(std430, binding = 1) readonly buffer B { float b[]; };
layout(std430, binding = 2) writeonly buffer Y { float y[]; };
layout(push_constant) uniform Params { uint n; uint nb; } p;

void main() {
    const uint i = flat_group() * WG + gl_LocalInvocationID.x;
    if (i >= p.n) return;
    y[i] = a[i] + b[i % p.nb];
}
