#include "cpu.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "errors.h"

#if defined(TINYGPTV_X86)
#include <cpuid.h>
#endif
#if defined(TINYGPTV_ARM) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1 << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif
#if defined(TINYGPTV_ARM) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

namespace tg {

namespace {

struct Features {
    bool avx2 = false, avx512 = false, avx512_bf16 = false;
    bool neon = false, neon_dot = false;  // AArch64 NEON, and its ARMv8.2 dot product (sdot)
};

Features detect() {
    Features f;
#if defined(TINYGPTV_X86)
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    const bool osxsave = c & (1u << 27), fma = c & (1u << 12), f16c = c & (1u << 29), avx = c & (1u << 28);
    if (!osxsave || !avx) return f;
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    const bool ymm_os = (xlo & 0x6) == 0x6;
    const bool zmm_os = (xlo & 0xe6) == 0xe6;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
    const bool avx2 = b & (1u << 5);
    const bool f512 = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
    const bool vnni = c & (1u << 11);
    f.avx2 = ymm_os && avx2 && fma && f16c;
    f.avx512 = f.avx2 && zmm_os && f512 && dq && bw && vl && vnni;
    if (f.avx512 && __get_cpuid_count(7, 1, &a, &b, &c, &d)) f.avx512_bf16 = a & (1u << 5);
#endif
#if defined(TINYGPTV_ARM) && defined(__linux__)
    const unsigned long hw = getauxval(AT_HWCAP);
    f.neon = (hw & HWCAP_ASIMD) != 0;
    f.neon_dot = f.neon && (hw & HWCAP_ASIMDDP) != 0;
#elif defined(TINYGPTV_ARM) && defined(__APPLE__)
    int v = 0;
    size_t len = sizeof v;
    f.neon = true;  // every arm64 Mac
    f.neon_dot = sysctlbyname("hw.optional.arm.FEAT_DotProd", &v, &len, nullptr, 0) == 0 && v != 0;
#endif
    return f;
}

const Features& features() {
    static const Features f = detect();
    return f;
}

std::atomic<int> g_active{-1};
std::once_flag g_init;

void init_active() {
    std::call_once(g_init, [] {
        const char* env = std::getenv("TINYGPTV_ISA");
        Isa want = isa_best();
        if (env && *env) {
            want = parse_isa(env);
            if (!isa_supported(want))
                throw ModelError(fmt("TINYGPTV_ISA=%s is not supported by this CPU (best: %s)", env,
                                     isa_name(isa_best())));
        }
        int expected = -1;
        g_active.compare_exchange_strong(expected, (int)want);
    });
}

}  // namespace

bool cpu_has_avx512_bf16() { return features().avx512_bf16; }
bool cpu_has_neon_dot() { return features().neon_dot; }

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::Scalar: return "scalar";
        case Isa::Avx2: return "avx2";
        case Isa::Avx512: return "avx512";
        case Isa::Neon: return "neon";
    }
    return "?";
}

Isa parse_isa(const char* name) {
    if (!std::strcmp(name, "scalar")) return Isa::Scalar;
    if (!std::strcmp(name, "avx2")) return Isa::Avx2;
    if (!std::strcmp(name, "avx512")) return Isa::Avx512;
    if (!std::strcmp(name, "neon")) return Isa::Neon;
    throw ModelError(fmt("unknown instruction set '%s' (expected scalar, avx2, avx512 or neon)", name));
}

bool isa_supported(Isa isa) {
    switch (isa) {
        case Isa::Scalar: return true;
        case Isa::Avx2: return features().avx2;
        case Isa::Avx512: return features().avx512;
        case Isa::Neon: return features().neon;
    }
    return false;
}

Isa isa_best() {
    if (isa_supported(Isa::Avx512)) return Isa::Avx512;
    if (isa_supported(Isa::Avx2)) return Isa::Avx2;
    if (isa_supported(Isa::Neon)) return Isa::Neon;
    return Isa::Scalar;
}

Isa isa_active() {
    int v = g_active.load(std::memory_order_relaxed);
    if (v < 0) {
        init_active();
        v = g_active.load();
    }
    return (Isa)v;
}

void set_isa(Isa isa) {
    if (!isa_supported(isa))
        throw ModelError(fmt("instruction set %s is not supported by this CPU (best: %s)", isa_name(isa),
                             isa_name(isa_best())));
    try {
        init_active();
    } catch (const ModelError&) {
        // a bad TINYGPTV_ISA is overridden by an explicit choice
    }
    g_active.store((int)isa);
}

}  // namespace tg
