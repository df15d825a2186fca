#include "cpu.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "errors.h"

#if defined(TINYGPTV_X86)
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
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
    bool avx2 = false, avx512 = false, avx512_bf16 = false, amx_int8 = false, avx_vnni = false;
    bool neon = false, neon_dot = false;  // AArch64 NEON, and its ARMv8.2 dot product (sdot)
};

#if defined(TINYGPTV_X86)
// Linux hands out the tile data state per process on request; without it the first tile instruction
// raises SIGILL. Elsewhere (no such request) the tiles are not used.
bool amx_permitted() {
#if defined(__linux__)
    const long kReqPerm = 0x1023, kGetPerm = 0x1022, kXTileData = 18;  // asm/prctl.h, XFEATURE_XTILEDATA
    if (syscall(SYS_arch_prctl, kReqPerm, kXTileData) != 0) return false;
    unsigned long perm = 0;
    return syscall(SYS_arch_prctl, kGetPerm, &perm) == 0 && (perm & (1ul << kXTileData));
#else
    return false;
#endif
}
#endif

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
    const bool amx_cpu = (d & (1u << 24)) && (d & (1u << 25));  // AMX-TILE, AMX-INT8
    const bool amx_os = (xlo & 0x60000) == 0x60000;              // XCR0: XTILECFG, XTILEDATA
    if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) {
        f.avx512_bf16 = f.avx512 && (a & (1u << 5));
#if defined(TINYGPTV_AVX_VNNI)
        f.avx_vnni = f.avx2 && (a & (1u << 4));
#endif
    }
    f.amx_int8 = f.avx512 && amx_cpu && amx_os && amx_permitted();
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
bool cpu_has_amx_int8() { return features().amx_int8; }

namespace {

// An optional extension of a path (AMX tiles, AVX-VNNI): on where the CPU has it, unless the environment
// variable says 0 or off; set() switches at run time. Decided at first use.
class ExtensionSwitch {
public:
    constexpr ExtensionSwitch(const char* env, bool (*supported)(), const char* unavailable)
        : env_(env), supported_(supported), unavailable_(unavailable) {}

    bool on() {
        int v = state_.load(std::memory_order_relaxed);
        if (v < 0) {
            const char* e = std::getenv(env_);
            const bool off = e && (!std::strcmp(e, "0") || !std::strcmp(e, "off"));
            int expected = -1;
            state_.compare_exchange_strong(expected, supported_() && !off ? 1 : 0);
            v = state_.load();
        }
        return v == 1;
    }

    void set(bool on) {
        if (on && !supported_()) throw ModelError(unavailable_);
        state_.store(on ? 1 : 0);
    }

private:
    const char* env_;
    bool (*supported_)();
    const char* unavailable_;
    std::atomic<int> state_{-1};  // -1: not decided yet
};

ExtensionSwitch g_amx("TINYGPTV_AMX", cpu_has_amx_int8,
                      "AMX tiles are not available here (the CPU lacks AMX-INT8, or the OS does not allow them)");
ExtensionSwitch g_avx_vnni("TINYGPTV_AVX_VNNI", cpu_has_avx_vnni,
                           "AVX-VNNI is not available here (the CPU lacks it, or the build has no kernels for it)");

}  // namespace

bool cpu_has_avx_vnni() { return features().avx_vnni; }
bool amx_active() { return g_amx.on(); }
void set_amx(bool on) { g_amx.set(on); }
bool avx_vnni_active() { return g_avx_vnni.on(); }
void set_avx_vnni(bool on) { g_avx_vnni.set(on); }

const char* kernel_path() {
    switch (isa_active()) {
        case Isa::Scalar: return "scalar";
        case Isa::Avx2: return avx_vnni_active() ? "avx2+avx-vnni" : "avx2";
        case Isa::Avx512: return amx_active() ? "avx512+amx" : "avx512";
        case Isa::Neon: return cpu_has_neon_dot() ? "neon+dotprod" : "neon";
    }
    return "?";
}

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
