#version 450
// Element-wise activations, in place over n floats:
//   GELU_ERF:  0.5 x (1 + erf(x / sqrt 2))
//   GELU_TANH: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), written as x / (1 + exp(-2u)), which is the
//              same function without the cancellation of 1 + tanh(u) for negative u.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(std430, binding = 0) buffer X { float x[]; };
layout(push_constant) uniform Params { uint n; } p;

// erfc(|z|) by the Chebyshev fit of Numerical Recipes (fractional error below 1.2e-7 everywhere), so the
// tail 1 + erf(z) = erfc(-z) of negative z keeps its relative precision (GLSL has no erf).
float erfc_abs(float z) {
    const float t = 1.0 / (1.0 + 0.5 * z);
    return t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
           t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
           t * (-0.82215223 + t * 0.17087277)))))))));
}

void main() {
    const uint i = flat_group() * WG + gl_LocalInvocationID.x;
    if (i >= p.n) return;
    const float v = x[i];
#ifdef GELU_ERF
    const float z = v * 0.70710678118654752;
    const float c = erfc_abs(abs(z));
    const float one_plus_erf = z >= 0.0 ? 2.0 - c : c;
    x[i] = 0.5 * v * one_plus_erf;
#else
    const float u = 0.79788456080286536 * (v + 0.044715 * v * v * v);
    x[i] = v / (1.0 + exp(-2.0 * u));
#endif
}
