// A standalone check of the SIMD kernels, for machines the Python tests cannot reach: it is built for
// AArch64 by tests/test_native_kernel_check.py and run under an emulator there (qemu-aarch64), and builds
// natively too. For every instruction set this CPU supports it requires:
//  - matrix products: for every weight type and a set of shapes (odd block counts, a last row group
//    of fewer than 16 rows, decode and prompt row counts, with and without bias, zero rows), the SIMD
//    result equal to the scalar one bit for bit with 1, 2 and 3 threads and with the weight prepared
//    (repacked) or not, and the scalar result within a stated error of a double-precision product of
//    the dequantized weights;
//  - the activation quantizers (int8 blocks with a scale per 32 or 128 values, Q8_K) giving the
//    scalar ones' bytes, on rows with zeros, tiny values, halves (rounding ties), infinities and NaN;
//  - vector math (exp, erf, GELUs, softmax sums, max, half conversions) on random and special values
//    (zeros, infinities, NaN, denormals, the clamps' edges) and attention (row and blocked paths,
//    float and half K/V, grouped heads, causal, bf16) equal to the scalar versions bit for bit, the
//    attention with 1, 2 and 3 threads.
//
// Output: one line per instruction set, then "kernel_check: ... 0 mismatches"; exit status 1 on any
// mismatch or error (the first few are printed).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cpu.h"
#include "errors.h"
#include "fp16.h"
#include "ggml_type.h"
#include "kernels/matmul.h"
#include "kernels/matmul_impl.h"
#include "kernels/ops.h"
#include "kernels/vecmath.h"
#include "quants.h"
#include "exec.h"

using namespace tg;

namespace {

struct Shape {
    int64_t n_out, n_in, n;
};

int g_fail = 0;
long g_compared = 0;

void fail(const std::string& what) {
    if (g_fail++ < 10) std::printf("MISMATCH %s\n", what.c_str());
}

// Root-mean-square error allowed between the scalar product and the float64 one, relative to the
// root mean square of the float64 outputs: float types see only float32 rounding; quantized types
// also the int8 rounding of the activations (at most half a step of 1/127 of a block's largest value
// per value: up to 4% measured with the outlier of 40 standard deviations these inputs hold). Float
// types: up to 1.1e-6 measured. A kernel error shows as an error of the order of the outputs.
double tolerance(GgmlType t) {
    switch (t) {
        case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16: return 1e-5;
        default: return 0.1;
    }
}

std::vector<float> run(const MatW& w, const std::vector<float>& x, int64_t n, const float* bias, int threads) {
    std::vector<float> y((size_t)(n * w.n_out), -1.f);
    Exec ex(threads);
    matmul(w, x.data(), n, y.data(), bias, ex);
    return y;
}

void check_case(GgmlType type, const Shape& s, bool with_bias, std::mt19937& rng,
                const std::vector<Isa>& isas) {
    std::normal_distribution<float> nd(0.f, 1.f);
    std::vector<float> wf((size_t)(s.n_out * s.n_in));
    for (auto& v : wf) v = nd(rng);
    for (int64_t j = 0; j < s.n_in; j++) wf[(size_t)(2 * s.n_in + j)] = 0.f;  // an all-zero row
    std::vector<float> x((size_t)(s.n * s.n_in));
    for (auto& v : x) v = nd(rng);
    x[3] = 40.f;  // an outlier
    if (s.n > 2)
        for (int64_t j = 0; j < s.n_in; j++) x[(size_t)(s.n_in + j)] = 0.f;  // an all-zero activation row
    std::vector<float> bias((size_t)s.n_out);
    for (auto& v : bias) v = nd(rng);
    const float* b = with_bias ? bias.data() : nullptr;

    std::vector<uint8_t> data(row_bytes(type, s.n_in) * (size_t)s.n_out);
    quantize_rows(type, wf.data(), data.data(), s.n_out, s.n_in);
    char label[160];
    std::snprintf(label, sizeof label, "%s %lldx%lld n=%lld%s", type_name(type), (long long)s.n_out,
                  (long long)s.n_in, (long long)s.n, with_bias ? " +bias" : "");

    // the scalar result against float64 over the dequantized weights
    set_isa(Isa::Scalar);
    MatW w;
    w.type = type; w.n_out = s.n_out; w.n_in = s.n_in; w.data = data.data();
    prepare_weight(w);
    const std::vector<float> ref = run(w, x, s.n, b, 1);
    std::vector<float> wd((size_t)s.n_in);
    double err = 0, ss = 0;
    for (int64_t r = 0; r < s.n_out; r++) {
        dequantize_row(w, r, wd.data());
        for (int64_t i = 0; i < s.n; i++) {
            double acc = b ? b[r] : 0.0;
            for (int64_t j = 0; j < s.n_in; j++) acc += (double)wd[(size_t)j] * x[(size_t)(i * s.n_in + j)];
            const double e = acc - ref[(size_t)(i * s.n_out + r)];
            err += e * e;
            ss += acc * acc;
        }
    }
    const double rel = std::sqrt(err / ss);
    if (std::getenv("KERNEL_CHECK_VERBOSE")) std::printf("%s: scalar rms error %.3g\n", label, rel);
    if (!(rel <= tolerance(type)))
        fail(std::string(label) + ": scalar rms error " + std::to_string(rel) + " of the outputs' > " +
             std::to_string(tolerance(type)));

    for (Isa isa : isas) {
        if (isa == Isa::Scalar) continue;
        set_isa(isa);
        for (int prepared = 0; prepared < 2; prepared++) {
            MatW v = w;
            if (prepared) prepare_weight(v);
            else v.repacked.reset();
            for (int threads = 1; threads <= 3; threads++) {
                const std::vector<float> y = run(v, x, s.n, b, threads);
                g_compared++;
                if (std::memcmp(y.data(), ref.data(), y.size() * sizeof(float)) != 0) {
                    size_t at = 0;
                    while (at < y.size() && std::memcmp(&y[at], &ref[at], sizeof(float)) == 0) at++;
                    fail(std::string(label) + " " + isa_name(isa) + (prepared ? " prepared" : " unprepared") + ", " +
                         std::to_string(threads) + " threads: y[" + std::to_string(at) + "] = " +
                         std::to_string(y[at]) + ", scalar " + std::to_string(ref[at]));
                }
            }
        }
    }
}

bool same_bits(const void* a, const void* b, size_t n) { return std::memcmp(a, b, n) == 0; }

// Random values with the special ones mixed in.
std::vector<float> vm_inputs(std::mt19937& rng, int n, float scale) {
    std::normal_distribution<float> nd(0.f, scale);
    const float special[] = {0.f, -0.f, INFINITY, -INFINITY, NAN, 88.72f, -103.97f, 89.f, -105.f, 1e-40f,
                             -1e-40f, 3e38f, -3e38f, 0.921875f, -0.921875f, 1e-20f, 65504.f, 65520.f, 6e-8f};
    std::vector<float> x((size_t)n);
    for (auto& v : x) v = nd(rng);
    for (int i = 0; i < n && i < (int)(sizeof special / sizeof *special); i++) x[(size_t)(i * 3 % n)] = special[i];
    return x;
}

void check_vecmath(Isa isa, std::mt19937& rng) {
    const VecMath& s = vecmath_scalar();
    set_isa(isa);
    const VecMath& v = vecmath();
    for (int n : {1, 7, 37, 64, 301})
        for (float scale : {1.f, 10.f}) {
            const std::vector<float> x = vm_inputs(rng, n, scale);
            const std::string at = std::string(isa_name(isa)) + " vecmath n=" + std::to_string(n) + " scale " +
                                   std::to_string(scale) + ": ";
            std::vector<float> a(x.size()), b(x.size());
            s.exp(x.data(), a.data(), n); v.exp(x.data(), b.data(), n);
            if (!same_bits(a.data(), b.data(), n * 4)) fail(at + "exp");
            s.erf(x.data(), a.data(), n); v.erf(x.data(), b.data(), n);
            if (!same_bits(a.data(), b.data(), n * 4)) fail(at + "erf");
            a = x; b = x; s.gelu_erf(a.data(), n); v.gelu_erf(b.data(), n);
            if (!same_bits(a.data(), b.data(), n * 4)) fail(at + "gelu_erf");
            a = x; b = x; s.gelu_tanh(a.data(), n); v.gelu_tanh(b.data(), n);
            if (!same_bits(a.data(), b.data(), n * 4)) fail(at + "gelu_tanh");
            std::vector<float> f(x.size());  // softmax rows: finite, below the max given
            for (int i = 0; i < n; i++) f[(size_t)i] = std::isfinite(x[(size_t)i]) ? std::fmin(x[(size_t)i], 50.f) : -1e30f;
            a = f; b = f;
            const float sa = s.exp_sum(a.data(), n, 50.f), sb = v.exp_sum(b.data(), n, 50.f);
            if (!same_bits(a.data(), b.data(), n * 4) || !same_bits(&sa, &sb, 4)) fail(at + "exp_sum");
            const float ma = s.max(x.data(), n), mb = v.max(x.data(), n);  // NaN never wins
            if (!same_bits(&ma, &mb, 4)) fail(at + "max");
            std::vector<uint16_t> ha((size_t)n), hb((size_t)n);
            s.to_f16(x.data(), ha.data(), n); v.to_f16(x.data(), hb.data(), n);
            if (!same_bits(ha.data(), hb.data(), n * 2)) fail(at + "to_f16");
            s.from_f16(ha.data(), a.data(), n); v.from_f16(ha.data(), b.data(), n);
            if (!same_bits(a.data(), b.data(), n * 4)) fail(at + "from_f16");
            g_compared += 8;
        }
}

void check_act_quantizers(Isa isa, std::mt19937& rng) {
    std::normal_distribution<float> nd(0.f, 1.f);
    const int64_t k = 1280;  // 40 blocks of 32 (10 groups of 4), 5 super-blocks of 256
    for (int kind = 0; kind < 7; kind++) {
        std::vector<float> x((size_t)k);
        for (auto& v : x) v = nd(rng);
        switch (kind) {
            case 1: for (int64_t j = 0; j < 300; j++) x[(size_t)j] = 0.f; break;            // zero blocks
            case 2: for (int64_t j = 0; j < k; j += 2) x[(size_t)j] *= 1e-30f; break;       // tiny scales
            case 3:  // scale 1 (127 in every block) and half-integers: every value a rounding tie
                for (int64_t j = 0; j < k; j++) x[(size_t)j] = j % 32 == 0 ? 127.f : (float)(j % 9) - 4.5f;
                break;
            case 4: x[40] = INFINITY; x[700] = -INFINITY; break;
            case 5: x[33] = NAN; x[1000] = NAN; break;
            case 6: x[5] = 1e30f; x[900] = -3e38f; break;
            default: break;
        }
        for (int gb : {1, 4}) {
            const int64_t nb = k / QK8_0, ng = (nb + gb - 1) / gb;
            std::vector<int8_t> qa((size_t)k), qb((size_t)k);
            std::vector<float> da((size_t)ng), db((size_t)ng);
            std::vector<int32_t> sa((size_t)nb), sb((size_t)nb);
            quantize_act_q8_row_for(Isa::Scalar)(x.data(), k, qa.data(), da.data(), sa.data(), gb);
            quantize_act_q8_row_for(isa)(x.data(), k, qb.data(), db.data(), sb.data(), gb);
            g_compared++;
            if (qa != qb || !same_bits(da.data(), db.data(), da.size() * 4) || sa != sb)
                fail(std::string(isa_name(isa)) + " activation quantizer, group " + std::to_string(gb) + ", input kind " +
                     std::to_string(kind));
        }
        const int64_t nb = k / QK_K;
        std::vector<int8_t> qa((size_t)k), qb((size_t)k);
        std::vector<float> da((size_t)nb), db((size_t)nb);
        std::vector<int32_t> ba((size_t)(16 * nb)), bb(ba.size()), pa((size_t)(4 * nb)), pb(pa.size());
        quantize_act_q8k_row_for(Isa::Scalar)(x.data(), k, qa.data(), da.data(), ba.data(), pa.data());
        quantize_act_q8k_row_for(isa)(x.data(), k, qb.data(), db.data(), bb.data(), pb.data());
        g_compared++;
        if (kind == 5) continue;  // NaN: ggml's Q8_K leaves those values undefined (both paths take the scalar one)
        if (qa != qb || !same_bits(da.data(), db.data(), da.size() * 4) || ba != bb || pa != pb)
            fail(std::string(isa_name(isa)) + " Q8_K activation quantizer, input kind " + std::to_string(kind));
    }
}

struct AttnCase {
    int64_t T, n_kv;
    int n_head, n_head_kv, hd;
    bool causal, kv_f16, bf16;
};

void check_attention(Isa isa, std::mt19937& rng) {
    const AttnCase cases[] = {
        {1, 37, 4, 2, 40, false, false, false}, {1, 37, 4, 4, 64, true, true, false},   // row path
        {7, 50, 4, 2, 88, true, false, false},  {13, 13, 2, 2, 72, false, true, false},  // blocked
        {33, 33, 2, 2, 16, true, false, false}, {9, 41, 2, 1, 66, false, false, true},   // bf16
        {6, 6, 2, 2, 40, true, false, true},    {20, 20, 3, 3, 30, false, false, true},
    };
    std::normal_distribution<float> nd(0.f, 1.f);
    for (const AttnCase& c : cases) {
        const int64_t q_stride = c.n_head * c.hd, kv_stride = c.n_head_kv * c.hd;
        std::vector<float> q((size_t)(c.T * q_stride)), k((size_t)(c.n_kv * kv_stride)), v(k.size());
        for (auto& x : q) x = 2.f * nd(rng);
        for (auto& x : k) x = nd(rng);
        for (auto& x : v) x = nd(rng);
        std::vector<uint16_t> kh(k.size()), vh(v.size());
        for (size_t i = 0; i < k.size(); i++) kh[i] = fp32_to_fp16(k[i]), vh[i] = fp32_to_fp16(v[i]);
        const void* kp = c.kv_f16 ? (const void*)kh.data() : (const void*)k.data();
        const void* vp = c.kv_f16 ? (const void*)vh.data() : (const void*)v.data();
        const float scale = 1.f / std::sqrt((float)c.hd);
        auto run_attn = [&](Isa which, int threads) {
            set_isa(which);
            std::vector<float> out((size_t)(c.T * q_stride), -1.f);
            Exec ex(threads);
            attention(q.data(), c.T, q_stride, kp, vp, kv_stride, c.kv_f16, c.n_kv, c.causal, c.n_kv - c.T, c.n_head,
                      c.n_head_kv, c.hd, scale, out.data(), q_stride, ex, c.bf16);
            return out;
        };
        const std::vector<float> ref = run_attn(Isa::Scalar, 1);
        for (int threads = 1; threads <= 3; threads++) {
            const std::vector<float> out = run_attn(isa, threads);
            g_compared++;
            if (!same_bits(out.data(), ref.data(), out.size() * 4))
                fail(std::string(isa_name(isa)) + " attention T=" + std::to_string(c.T) + " n_kv=" +
                     std::to_string(c.n_kv) + " hd=" + std::to_string(c.hd) + (c.bf16 ? " bf16" : "") +
                     (c.kv_f16 ? " f16 kv" : "") + ", " + std::to_string(threads) + " threads");
        }
    }
}

}  // namespace

int main() {
    try {
        std::vector<Isa> isas;
        for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon})
            if (isa_supported(isa)) isas.push_back(isa);
        isa_active();  // a TINYGPTV_ISA this CPU cannot run is an error here
        std::printf("best instruction set: %s; checked:", isa_name(isa_best()));
        for (Isa isa : isas) std::printf(" %s", isa_name(isa));
        std::printf("\n");
#if defined(TINYGPTV_ARM)
        std::printf("neon dot product: %s\n", cpu_has_neon_dot() ? "yes (sdot)" : "no (widening multiplies)");
#endif

        std::mt19937 rng(1234);
        const Shape block_shapes[] = {{21, 96, 1}, {21, 96, 6}, {33, 160, 1}, {40, 64, 9}, {5, 32, 3}};
        const Shape super_shapes[] = {{37, 256, 1}, {37, 256, 5}, {16, 512, 1}, {70, 768, 9}, {5, 256, 3},
                                      {53, 1280, 1}, {19, 2560, 2}};
        const GgmlType types[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q8_0,
                                  GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1,
                                  GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K,
                                  GgmlType::IQ4_NL, GgmlType::IQ4_XS};
        int cases = 0;
        for (GgmlType t : types) {
            const bool super = type_traits((uint32_t)t).block == QK_K;
            if (!super)
                for (const Shape& s : block_shapes) check_case(t, s, (cases++ & 1) != 0, rng, isas);
            for (const Shape& s : super_shapes) check_case(t, s, (cases++ & 1) != 0, rng, isas);
        }
        for (Isa isa : isas) {
            if (isa == Isa::Scalar) continue;
            check_act_quantizers(isa, rng);
            check_vecmath(isa, rng);
            check_attention(isa, rng);
        }
        std::printf("kernel_check: %d matmul cases, %ld SIMD results compared with the scalar ones, %d mismatches\n", cases,
                    g_compared, g_fail);
        return g_fail ? 1 : 0;
    } catch (const std::exception& e) {
        std::printf("ERROR %s\n", e.what());
        return 1;
    }
}
