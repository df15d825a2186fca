// A standalone check of the matrix-product kernels, for machines the Python tests cannot reach: it
// is built for AArch64 by tests/test_arm_kernels.py and run under an emulator there (qemu-aarch64),
// and builds natively too. For every weight type, a set of shapes (odd block counts, a last row
// group of fewer than 16 rows, decode and prompt row counts, with and without bias, zero rows) and
// every instruction set this CPU supports, it requires the SIMD result to equal the scalar one bit
// for bit with 1, 2 and 3 threads and with the weight prepared (repacked) or not, and the scalar
// result to lie within a stated error of a double-precision product of the dequantized weights.
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
#include "ggml_type.h"
#include "kernels/matmul.h"
#include "quants.h"
#include "threadpool.h"

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
    ThreadPool pool(threads);
    matmul(w, x.data(), n, y.data(), bias, pool);
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

        std::mt19937 rng(1234);
        const Shape block_shapes[] = {{21, 96, 1}, {21, 96, 6}, {33, 160, 1}, {40, 64, 9}, {5, 32, 3}};
        const Shape super_shapes[] = {{37, 256, 1}, {37, 256, 5}, {16, 512, 1}, {70, 768, 9}, {5, 256, 3},
                                      {53, 1280, 1}, {19, 2560, 2}};
        const GgmlType types[] = {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0,
                                  GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q6_K};
        int cases = 0;
        for (GgmlType t : types) {
            const bool super = t == GgmlType::Q4_K || t == GgmlType::Q6_K;
            if (!super)
                for (const Shape& s : block_shapes) check_case(t, s, (cases++ & 1) != 0, rng, isas);
            for (const Shape& s : super_shapes) check_case(t, s, (cases++ & 1) != 0, rng, isas);
        }
        std::printf("kernel_check: %d cases, %ld SIMD results compared with the scalar ones, %d mismatches\n", cases,
                    g_compared, g_fail);
        return g_fail ? 1 : 0;
    } catch (const std::exception& e) {
        std::printf("ERROR %s\n", e.what());
        return 1;
    }
}
