// Python bindings of the kernels. Product API (module _core), used by tinygptv_native/quantize.py:
//   _core.quantize(type, x[rows, n] float32) -> uint8[rows, row_bytes]
//   _core.dequantize(type, data uint8, shape) -> float32[shape]
// Test and benchmark hooks (submodule _core._testing; not part of the package's API):
//   matmul_test(type, w_bytes, n_out, n_in, x[n, n_in], bias=None, n_threads=1) -> float32[n, n_out]
//   PreparedWeight(type, w_bytes, n_out, n_in, prepare_threads=1, prepared=True)
//       .matmul(x, bias=None, n_threads=1, repeat=1)
//   isa(), isa_best(), isa_supported(name), set_isa(name), amx_supported(), amx(), set_amx(on),
//   avx_vnni_supported(), avx_vnni(), set_avx_vnni(on), kernel_path()
//   vec_math(fn, x) -> float32 (fn: exp, erf, gelu_erf, gelu_tanh, softmax; softmax over the last axis)
//   quantize_act_q8(x, group=1), to_f16(x), from_f16(bits)
//   attention_test(q, k, v, n_head, n_head_kv, scale, causal=False, pos0=0, n_threads=1, bf16=False)
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cctype>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cpu.h"
#include "errors.h"
#include "kernels/matmul.h"
#include "kernels/matmul_impl.h"
#include "kernels/ops.h"
#include "kernels/vecmath.h"
#include "python/bind.h"
#include "quants.h"
#include "exec.h"

namespace py = pybind11;

namespace tg {

GgmlType type_from_name(const std::string& name) {
    std::string up;
    for (char c : name) up += (char)std::toupper((unsigned char)c);
    for (uint32_t id = 0; id < 64; id++) {
        const char* n = type_traits(id).name;
        if (n && up == n) return (GgmlType)id;
    }
    throw ModelError(fmt("unknown tensor type '%s'", name.c_str()));
}

namespace {

using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using U8Array = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;


class PreparedWeight {
public:
    PreparedWeight(const std::string& type, U8Array data, int64_t n_out, int64_t n_in, int prepare_threads = 1,
                   bool prepared = true)
        : prepared_(prepared) {
        if (prepare_threads < 1 || prepare_threads > 256)
            throw ModelError(fmt("prepare_threads must be in [1, 256], got %d", prepare_threads));
        w_.type = type_from_name(type);
        w_.n_out = n_out;
        w_.n_in = n_in;
        if (!matmul_supports(w_.type))
            throw ModelError(fmt("weight type %s is not supported by the kernels", type_name(w_.type)));
        const int64_t blk = type_traits((uint32_t)w_.type).block;
        if (n_out <= 0 || n_in <= 0 || n_in % blk != 0)
            throw ModelError(fmt("bad weight shape [%lld, %lld] for %s (row length must be a positive multiple of %lld)",
                                 (long long)n_out, (long long)n_in, type_name(w_.type), (long long)blk));
        const size_t need = (size_t)n_out * row_bytes(w_.type, n_in);
        if ((size_t)data.size() != need)
            throw ModelError(fmt("weight data has %zu bytes, a [%lld, %lld] %s tensor needs %zu", (size_t)data.size(),
                                 (long long)n_out, (long long)n_in, type_name(w_.type), need));
        bytes_.assign(data.data(), data.data() + need);
        w_.data = bytes_.data();
        py::gil_scoped_release release;
        if (!prepared_) return;
        if (prepare_threads > 1) prepare_weight(w_, pool_for(prepare_threads));
        else prepare_weight(w_);
    }

    py::array_t<float> matmul(F32Array x, py::object bias_obj, int n_threads, int repeat) {
        if (x.ndim() != 2 || x.shape(1) != w_.n_in)
            throw ModelError(fmt("x must have shape [n, %lld], got %s", (long long)w_.n_in, shape_str(x).c_str()));
        if (n_threads < 1 || n_threads > 256) throw ModelError(fmt("n_threads must be in [1, 256], got %d", n_threads));
        if (repeat < 1) throw ModelError(fmt("repeat must be >= 1, got %d", repeat));
        F32Array bias;
        const float* bp = nullptr;
        if (!bias_obj.is_none()) {
            bias = bias_obj.cast<F32Array>();
            if (bias.ndim() != 1 || bias.shape(0) != w_.n_out)
                throw ModelError(fmt("bias must have shape [%lld], got %s", (long long)w_.n_out, shape_str(bias).c_str()));
            bp = bias.data();
        }
        const int64_t n = x.shape(0);
        py::array_t<float> y({(py::ssize_t)n, (py::ssize_t)w_.n_out});
        float* yp = y.mutable_data();
        const float* xp = x.data();
        {
            py::gil_scoped_release release;
            if (prepared_ && isa_active() != Isa::Scalar && !w_.repacked) prepare_weight(w_);
            Exec& ex = pool_for(n_threads);
            for (int r = 0; r < repeat; r++) tg::matmul(w_, xp, n, yp, bp, ex);
        }
        return y;
    }

    void prepare() {
        py::gil_scoped_release release;
        prepare_weight(w_);
    }

    bool repacked() const { return (bool)w_.repacked; }

    // The repacked layout's bytes (empty without one).
    py::array_t<uint8_t> repacked_bytes() const { return bytes_of(w_); }

    // The bytes the plain element-by-element repack gives for this weight.
    py::array_t<uint8_t> reference_bytes() const {
        MatW w = w_;
        {
            py::gil_scoped_release release;
            prepare_weight_reference(w);
        }
        return bytes_of(w);
    }

private:
    static py::array_t<uint8_t> bytes_of(const MatW& w) {
        const size_t n = tg::repacked_bytes(w);
        py::array_t<uint8_t> out((py::ssize_t)n);
        if (n) std::memcpy(out.mutable_data(), w.repacked.get(), n);
        return out;
    }
    static std::string shape_str(const py::array& a) {
        std::string s = "[";
        for (py::ssize_t i = 0; i < a.ndim(); i++) s += (i ? ", " : "") + std::to_string(a.shape(i));
        return s + "]";
    }
    Exec& pool_for(int n) {
        auto& p = pools_[n];
        if (!p) p = std::make_unique<Exec>(n);
        return *p;
    }

    bool prepared_ = true;
    std::vector<uint8_t> bytes_;
    MatW w_;
    std::map<int, std::unique_ptr<Exec>> pools_;
};

std::string shape_of(const py::array& a) {
    std::string s = "[";
    for (py::ssize_t i = 0; i < a.ndim(); i++) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + "]";
}

py::array_t<float> vec_math(const std::string& fn, F32Array x) {
    py::array_t<float> y(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
    const int64_t n = x.size();
    const int64_t row = x.ndim() ? x.shape(x.ndim() - 1) : 1;
    const float* xp = x.data();
    float* yp = y.mutable_data();
    const VecMath& M = vecmath();
    if (fn == "exp") {
        py::gil_scoped_release release;
        M.exp(xp, yp, n);
    } else if (fn == "erf") {
        py::gil_scoped_release release;
        M.erf(xp, yp, n);
    } else if (fn == "gelu_erf" || fn == "gelu_tanh" || fn == "softmax") {
        py::gil_scoped_release release;
        std::copy(xp, xp + n, yp);
        if (fn == "gelu_erf") gelu_erf(yp, n);
        else if (fn == "gelu_tanh") gelu_tanh(yp, n);
        else
            for (int64_t r = 0; row > 0 && r < n / row; r++) softmax(yp + r * row, row);
    } else {
        throw ModelError(fmt("unknown function '%s' (expected exp, erf, gelu_erf, gelu_tanh or softmax)", fn.c_str()));
    }
    return y;
}

// K/V as float32, or float16 for a half-precision cache.
py::array_t<float> attention_test(F32Array q, py::array k, py::array v, int n_head, int n_head_kv, float scale,
                                  bool causal, int64_t pos0, int n_threads, bool bf16) {
    const bool f16 = k.dtype().kind() == 'f' && k.dtype().itemsize() == 2;
    if (!k.dtype().is(v.dtype()) || !(f16 || (k.dtype().kind() == 'f' && k.dtype().itemsize() == 4)))
        throw ModelError(fmt("k and v must both be float32 or both float16, got %s and %s",
                             std::string(py::str(k.dtype())).c_str(), std::string(py::str(v.dtype())).c_str()));
    if (n_head < 1 || n_head_kv < 1 || n_head % n_head_kv != 0)
        throw ModelError(fmt("n_head %d must be a positive multiple of n_head_kv %d", n_head, n_head_kv));
    if (n_threads < 1 || n_threads > 256) throw ModelError(fmt("n_threads must be in [1, 256], got %d", n_threads));
    if (bf16 && f16) throw ModelError("bf16 attention takes float32 k and v, got float16");
    if (q.ndim() != 2 || q.shape(0) < 1 || q.shape(1) % n_head != 0 || q.shape(1) == 0)
        throw ModelError(fmt("q must be [T, n_head * hd] with T >= 1, got %s for %d heads", shape_of(q).c_str(), n_head));
    const int64_t T = q.shape(0), hd = q.shape(1) / n_head;
    if (k.ndim() != 2 || k.shape(1) != n_head_kv * hd || v.ndim() != 2 || v.shape(0) != k.shape(0) ||
        v.shape(1) != k.shape(1) || k.shape(0) < 1)
        throw ModelError(fmt("k and v must be [n_kv, %lld] with n_kv >= 1, got %s and %s", (long long)(n_head_kv * hd),
                             shape_of(k).c_str(), shape_of(v).c_str()));
    const int64_t n_kv = k.shape(0);
    if (pos0 < 0 || (causal && pos0 + T > n_kv))
        throw ModelError(fmt("pos0 %lld with %lld query rows needs pos0 >= 0 and pos0 + T <= n_kv (%lld) when causal",
                             (long long)pos0, (long long)T, (long long)n_kv));
    py::array kc = py::array::ensure(k, py::array::c_style), vc = py::array::ensure(v, py::array::c_style);
    py::array_t<float> out({(py::ssize_t)T, (py::ssize_t)(n_head * hd)});
    const float* qp = q.data();
    const void *kp = kc.data(), *vp = vc.data();
    float* op = out.mutable_data();
    {
        py::gil_scoped_release release;
        Exec ex(n_threads);
        attention(qp, T, n_head * hd, kp, vp, n_head_kv * hd, f16, n_kv, causal, pos0, n_head, n_head_kv, (int)hd,
                  scale, op, n_head * hd, ex, bf16);
    }
    return out;
}

}  // namespace

void bind_kernels(py::module_& m) {
    m.def(
        "quantize",
        [](const std::string& type, F32Array x) {
            GgmlType t = type_from_name(type);
            if (!quant_supported(t) || t == GgmlType::Q8_K)
                throw ModelError(fmt("cannot quantize to %s (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS)", type_name(t)));
            if (x.ndim() != 2) throw ModelError(fmt("quantize expects a 2-D array, got %d dimensions", (int)x.ndim()));
            const int64_t rows = x.shape(0), n = x.shape(1);
            const int64_t blk = type_traits((uint32_t)t).block;
            if (n % blk != 0)
                throw ModelError(fmt("%s needs rows whose length is a multiple of %lld, got %lld", type_name(t),
                                     (long long)blk, (long long)n));
            const size_t rb = row_bytes(t, n);
            py::array_t<uint8_t> out({(py::ssize_t)rows, (py::ssize_t)rb});
            uint8_t* op = out.mutable_data();
            const float* xp = x.data();
            {
                py::gil_scoped_release release;
                quantize_rows(t, xp, op, rows, n);
            }
            return out;
        },
        py::arg("type"), py::arg("x"), "Quantize the rows of a 2-D float32 array to a GGML type (GGML byte layout).");

    m.def(
        "dequantize",
        [](const std::string& type, U8Array data, std::vector<int64_t> shape) {
            GgmlType t = type_from_name(type);
            if (!quant_supported(t)) throw ModelError(fmt("cannot dequantize %s", type_name(t)));
            if (shape.empty()) throw ModelError("dequantize needs a non-empty shape");
            int64_t total = 1;
            for (int64_t s : shape) {
                if (s < 0) throw ModelError(fmt("negative dimension %lld in shape", (long long)s));
                total *= s;
            }
            const int64_t n = shape.back();
            const int64_t blk = type_traits((uint32_t)t).block;
            if (n % blk != 0)
                throw ModelError(fmt("%s rows must be a multiple of %lld values, got %lld", type_name(t), (long long)blk,
                                     (long long)n));
            const size_t need = n ? (size_t)(total / n) * row_bytes(t, n) : 0;
            if ((size_t)data.size() != need)
                throw ModelError(fmt("%s data of shape with %lld values needs %zu bytes, got %zu", type_name(t),
                                     (long long)total, need, (size_t)data.size()));
            std::vector<py::ssize_t> pshape(shape.begin(), shape.end());
            py::array_t<float> out(pshape);
            float* op = out.mutable_data();
            const uint8_t* dp = data.data();
            {
                py::gil_scoped_release release;
                if (total) dequantize_values(t, dp, op, total);
            }
            return out;
        },
        py::arg("type"), py::arg("data"), py::arg("shape"), "Dequantize GGML-layout bytes to float32 of the given shape.");
}

void bind_kernel_hooks(py::module_& t) {
    py::class_<PreparedWeight>(t, "PreparedWeight", "A weight prepared (repacked) for the active instruction set.")
        .def(py::init<const std::string&, U8Array, int64_t, int64_t, int, bool>(), py::arg("type"), py::arg("data"),
             py::arg("n_out"), py::arg("n_in"), py::arg("prepare_threads") = 1, py::arg("prepared") = true,
             "prepared=False leaves the weight unprepared (matmul then repacks it on every call).")
        .def("matmul", &PreparedWeight::matmul, py::arg("x"), py::arg("bias") = py::none(), py::arg("n_threads") = 1,
             py::arg("repeat") = 1, "y[n, n_out] = x[n, n_in] @ W.T (+ bias); repeat runs it several times (benchmarks).")
        .def("prepare", &PreparedWeight::prepare, "Rebuild the repacked layout for the active instruction set.")
        .def_property_readonly("repacked", &PreparedWeight::repacked)
        .def("repacked_bytes", &PreparedWeight::repacked_bytes, "The repacked layout's bytes (empty without one).")
        .def("reference_bytes", &PreparedWeight::reference_bytes,
             "The bytes of the plain element-by-element repack of this weight (what repacked_bytes must equal).");

    t.def(
        "matmul_test",
        [](const std::string& type, U8Array w, int64_t n_out, int64_t n_in, F32Array x, py::object bias, int n_threads) {
            PreparedWeight pw(type, w, n_out, n_in);
            return pw.matmul(x, bias, n_threads, 1);
        },
        py::arg("type"), py::arg("w"), py::arg("n_out"), py::arg("n_in"), py::arg("x"), py::arg("bias") = py::none(),
        py::arg("n_threads") = 1, "Multiply through the engine's matmul with the active instruction set.");

    t.def("isa", [] { return std::string(isa_name(isa_active())); }, "The instruction set the kernels use now.");
    t.def("isa_best", [] { return std::string(isa_name(isa_best())); }, "The fastest instruction set this CPU supports.");
    t.def("isa_supported", [](const std::string& name) { return isa_supported(parse_isa(name.c_str())); },
          py::arg("name"), "Whether 'scalar', 'avx2', 'avx512' or 'neon' can run here.");
    t.def("set_isa", [](const std::string& name) { set_isa(parse_isa(name.c_str())); }, py::arg("name"),
          "Force the kernels onto 'scalar', 'avx2', 'avx512' or 'neon' (weights prepared later use it).");
    t.def("amx_supported", &cpu_has_amx_int8, "Whether AMX tiles can run here (CPU, OS and permission).");
    t.def("amx", &amx_active, "Whether the AVX-512 path uses AMX tiles for prompt products now.");
    t.def("set_amx", &set_amx, py::arg("on"),
          "Turn the AMX tiles of the AVX-512 path on or off (ModelError turning on where unsupported).");
    t.def("kernel_path", &kernel_path, "The kernels in use now: the instruction set and its extensions (avx512+amx, ...).");
    t.def("avx_vnni_supported", &cpu_has_avx_vnni, "Whether the AVX2 path can take AVX-VNNI's kernels here.");
    t.def("avx_vnni", &avx_vnni_active, "Whether the AVX2 path uses AVX-VNNI's kernels now.");
    t.def("set_avx_vnni", &set_avx_vnni, py::arg("on"),
          "Turn AVX-VNNI's kernels of the AVX2 path on or off (ModelError turning on where unsupported).");
    t.def("vec_math", &vec_math, py::arg("fn"), py::arg("x"),
          "Apply the engine's float32 'exp', 'erf', 'gelu_erf', 'gelu_tanh' or 'softmax' (over the last axis) to x.");
    t.def("quantize_act_q8", [](F32Array x, int group) {
        if (x.ndim() != 2 || x.shape(1) % QK8_0 != 0)
            throw ModelError(fmt("quantize_act_q8: x must be [n, k] with k a multiple of %d, got %s", QK8_0,
                                 shape_of(x).c_str()));
        if (group != 1 && group != kActGroupQ4_0)
            throw ModelError(fmt("quantize_act_q8: group must be 1 (Q8_0) or %d (Q4_0), got %d", kActGroupQ4_0, group));
        const int64_t n = x.shape(0), k = x.shape(1), nb = k / QK8_0, ng = (nb + group - 1) / group;
        py::array_t<int8_t> qs({n, k});
        py::array_t<float> d({n, ng});
        py::array_t<int32_t> sum({n, nb});
        {
            py::gil_scoped_release release;
            const QuantActQ8Row row = quantize_act_q8_row_for(isa_active());
            for (int64_t i = 0; i < n; i++)
                row(x.data() + i * k, k, qs.mutable_data() + i * k, d.mutable_data() + i * ng,
                    sum.mutable_data() + i * nb, group);
        }
        return py::make_tuple(qs, d, sum);
    }, py::arg("x"), py::arg("group") = 1,
       "Activation rows as the int8 blocks of 32 the Q8_0 (group 1) and Q4_0 (group 4) products use, one "
       "fp16 scale per `group` blocks, with the active instruction set: (values [n, k], scales as float "
       "[n, ceil(k/32/group)], block sums [n, k/32]).");
    t.def("to_f16", [](F32Array x) {
        py::array_t<uint16_t> y(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
        {
            py::gil_scoped_release release;
            vecmath().to_f16(x.data(), y.mutable_data(), (int64_t)x.size());
        }
        return y;
    }, py::arg("x"), "The engine's float32 -> IEEE half conversion (as stored in a half-precision K/V cache); bits as uint16.");
    t.def("from_f16", [](py::array_t<uint16_t, py::array::c_style | py::array::forcecast> x) {
        py::array_t<float> y(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
        {
            py::gil_scoped_release release;
            vecmath().from_f16(x.data(), y.mutable_data(), (int64_t)x.size());
        }
        return y;
    }, py::arg("x"), "IEEE half bits (uint16) as float32, as the attention reads a half-precision K/V cache.");
    t.def("attention_test", &attention_test, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("n_head"),
          py::arg("n_head_kv"), py::arg("scale"), py::arg("causal") = false, py::arg("pos0") = 0,
          py::arg("n_threads") = 1, py::arg("bf16") = false,
          "The engine's multi-head attention: q [T, n_head*hd] float32, k and v [n_kv, n_head_kv*hd] float32 or "
          "float16 (a half-precision cache); returns [T, n_head*hd]. bf16: products in bfloat16 (float32 k, v; "
          "several query rows).");
}

}  // namespace tg
