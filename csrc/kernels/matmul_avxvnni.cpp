// The AVX2 kernels built again for CPUs with AVX-VNNI (256-bit vpdpbusd, without AVX-512: Intel's
// consumer CPUs since Alder Lake): one instruction per four int8 products in place of pmaddubsw +
// pmaddwd + paddd. The sums are the same, so the results stay bit-identical to the scalar kernels.
// The AVX2 path chooses these at run time where the CPU has AVX-VNNI (cpu.h).
#define TG_AVX2_VNNI 1
#include "kernels/matmul_avx2.cpp"
