// Instruction-set selection for the SIMD kernels, decided once at first use: CPUID on x86, the
// kernel's hardware capabilities on AArch64 (NEON, with or without the dot-product extension: the
// int8 products take sdot where it exists).
// TINYGPTV_ISA=scalar|avx2|avx512|neon in the environment forces a path (an unsupported choice is an
// error at first use). set_isa() switches at run time (tests use it to compare every path).
// On the AVX-512 path, AMX tiles (Intel, Sapphire Rapids and later) take the int8 products of prompts
// where the CPU and the OS allow them; TINYGPTV_AMX=0 turns them off, set_amx() switches at run time.
// On the AVX2 path, AVX-VNNI (256-bit vpdpbusd: Intel since Alder Lake, AMD since Zen 4) takes the int8
// products where the CPU has it and the build could compile it; TINYGPTV_AVX_VNNI=0 turns it off,
// set_avx_vnni() switches at run time.
#pragma once

namespace tg {

enum class Isa { Scalar = 0, Avx2 = 1, Avx512 = 2, Neon = 3 };

const char* isa_name(Isa isa);
bool isa_supported(Isa isa);  // compiled in and supported by this CPU and OS
Isa isa_best();               // the fastest supported path
Isa isa_active();             // the path the kernels use now
void set_isa(Isa isa);        // throws ModelError if unsupported
Isa parse_isa(const char* name);  // throws ModelError on an unknown name
bool cpu_has_avx512_bf16();   // AVX512_BF16 (vdpbf16ps) on top of the AVX-512 path
bool cpu_has_neon_dot();      // the ARMv8.2 dot product (sdot) on top of the NEON path
bool cpu_has_amx_int8();      // AMX-TILE + AMX-INT8, enabled by the OS and permitted to this process
bool amx_active();            // the AVX-512 path uses AMX tiles now
void set_amx(bool on);        // throws ModelError when turning on where cpu_has_amx_int8() is false
bool cpu_has_avx_vnni();      // AVX-VNNI on top of the AVX2 path, and kernels built for it
bool avx_vnni_active();       // the AVX2 path uses AVX-VNNI now
void set_avx_vnni(bool on);   // throws ModelError when turning on where cpu_has_avx_vnni() is false
// The kernels in use now, for benchmarks and logs: "avx512+amx", "avx2+avx-vnni", "neon+dotprod", ...
const char* kernel_path();

}  // namespace tg
