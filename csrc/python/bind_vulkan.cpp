// Python bindings of the Vulkan backend. Product API (module _core):
//   vulkan_built() -> bool: whether this build has the backend (its headers and a GLSL compiler were found)
//   vulkan_devices() -> list of dicts: the Vulkan devices (opens the loader and makes the instance on first
//       call; VulkanError where there is no loader, or the build has no backend)
// Test hooks (submodule _core._testing), each on device `device` (made on first use, kept for the process):
//   vk_matmul(type, w_bytes, n_out, n_in, x[rows, n_in], bias=None, device=0, replay=1, kernel="auto",
//             o_begin=0, y_stride=0, y_col0=0): w_bytes holds weight rows o_begin..n_out-1 (a part of a split
//             tensor); kernel "auto", "matvec" or "tiled" (vk::ProductKernel); y_stride > 0: the result is
//             [rows, y_stride], output o at column y_col0 + o, the other columns NaN as uploaded
//   vk_layernorm(x, w=None, b=None, eps=1e-5), vk_rmsnorm(x, w=None, eps=1e-5), vk_gelu(x, tanh=False),
//   vk_softmax(x), vk_rope_neox(x, n_head, head_dim, n_rot, pos, cos, sin), vk_add(a, b, replay=1),
//   vk_attention_full(q[n_q, *], k[n_kv, *] | None, v | None, n_head, head_dim, scale, q_off=0, k_off=0, v_off=0)
//       -> [n_q, n_head * head_dim] (k and v None: q's one buffer is bound as all three, at their offsets),
//   vk_patches(pixels[3, S, S], patch_size) -> [(S/p)^2, 3 p^2],
//   vk_roundtrip(data uint8) -> uint8 (upload then download), vk_messages() -> [str] (the validation
//   layer's messages since the last call), vk_validation() -> bool
// replay: the recorded command sequence is submitted that many times (it is recorded once).
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cctype>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "errors.h"
#include "python/bind.h"

#ifdef TINYGPTV_HAVE_VULKAN
#include "quants.h"
#include "vulkan/device.h"
#include "vulkan/ops.h"
#endif

namespace py = pybind11;

namespace tg {

#ifndef TINYGPTV_HAVE_VULKAN

void bind_vulkan(py::module_& m, py::module_& t) {
    m.def("vulkan_built", [] { return false; }, "Whether this build has the Vulkan backend.");
    m.def("vulkan_devices", []() -> py::list {
        throw VulkanError("this build of tinygptv_native has no Vulkan backend (the Vulkan headers or a GLSL "
                          "compiler were missing when it was built, or TINYGPTV_VULKAN was OFF)");
    }, "The Vulkan devices (VulkanError: this build has no Vulkan backend).");
}

#else

namespace {

using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using U8Array = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;
using I32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

py::list devices_list() {
    const vk::Instance* inst;
    {
        py::gil_scoped_release release;  // the first call loads the driver
        inst = &vk::Instance::get();
    }
    py::list out;
    for (const vk::DeviceInfo& d : inst->devices()) {
        py::dict e;
        e["index"] = d.index;
        e["name"] = d.name;
        e["type"] = d.type;
        e["api_version"] = d.api_version;
        e["driver"] = d.driver;
        e["vendor_id"] = d.vendor_id;
        e["device_id"] = d.device_id;
        py::list heaps;
        uint64_t local = 0;
        for (const auto& h : inst->memory_heaps(d.index)) {  // read now: the budget moves with use
            py::dict hd;
            hd["size"] = h.size;
            hd["device_local"] = h.device_local;
            hd["budget"] = h.has_budget ? py::object(py::int_(h.budget)) : py::object(py::none());
            hd["usage"] = h.has_budget ? py::object(py::int_(h.usage)) : py::object(py::none());
            heaps.append(hd);
            if (h.device_local) local += h.size;
        }
        e["memory_heaps"] = heaps;
        e["device_local_bytes"] = local;
        e["subgroup_size"] = d.subgroup_size;
        e["fp16"] = d.fp16;
        e["int8"] = d.int8;
        e["storage_16bit"] = d.storage16;
        e["storage_8bit"] = d.storage8;
        e["cooperative_matrix"] = d.cooperative_matrix;
        e["memory_budget"] = d.memory_budget;
        e["max_storage_buffer_range"] = d.max_storage_buffer_range;
        e["max_allocation"] = d.max_allocation;
        e["max_shared_memory"] = d.max_shared_memory;
        e["max_workgroup_invocations"] = d.max_workgroup_invocations;
        out.append(e);
    }
    return out;
}

// The test hooks' devices: made on first use and kept for the process (never destroyed at exit, where the
// driver's own teardown order is not ours). One lock serialises every hook.
std::mutex hooks_mutex;
vk::Device& hook_device(int index) {
    static auto* devices = new std::map<int, std::unique_ptr<vk::Device>>();
    auto it = devices->find(index);
    if (it != devices->end()) return *it->second;
    auto d = std::make_unique<vk::Device>(index);
    vk::Device& ref = *d;
    (*devices)[index] = std::move(d);
    return ref;
}

std::unique_ptr<vk::Buffer> upload(vk::Device& d, const void* data, size_t bytes) {
    auto b = d.buffer(bytes);
    d.upload(*b, data, bytes);
    return b;
}

py::array_t<float> download(vk::Device& d, const vk::Buffer& b, std::vector<py::ssize_t> shape) {
    py::array_t<float> out(shape);
    py::gil_scoped_release release;
    d.download(b, out.mutable_data(), (uint64_t)out.size() * 4);
    return out;
}

void check_2d(const F32Array& x, const char* what) {
    if (x.ndim() != 2 || x.shape(0) < 1 || x.shape(1) < 1)
        throw VulkanError(fmt("%s must be a non-empty 2-D float32 array, got %d dimensions", what, (int)x.ndim()));
}

py::array_t<float> vk_matmul(const std::string& type, U8Array w, int64_t n_out, int64_t n_in, F32Array x,
                             py::object bias_obj, int device, int replay, const std::string& kernel_name,
                             int64_t o_begin, int64_t y_stride, int64_t y_col0) {
    check_2d(x, "x");
    const GgmlType t = type_from_name(type);
    if (x.shape(1) != n_in) throw VulkanError(fmt("x has rows of %lld, n_in is %lld", (long long)x.shape(1), (long long)n_in));
    if (o_begin < 0 || o_begin >= n_out)
        throw VulkanError(fmt("o_begin = %lld is outside [0, %lld)", (long long)o_begin, (long long)n_out));
    const size_t need = n_in > 0 && n_out > 0 ? (size_t)(n_out - o_begin) * row_bytes(t, n_in) : 0;
    if ((size_t)w.size() != need)
        throw VulkanError(fmt("weight data has %zu bytes, rows %lld..%lld of a [%lld, %lld] %s tensor needs %zu",
                              (size_t)w.size(), (long long)o_begin, (long long)n_out - 1, (long long)n_out,
                              (long long)n_in, type_name(t), need));
    vk::ProductKernel kernel;
    if (kernel_name == "auto") kernel = vk::ProductKernel::Auto;
    else if (kernel_name == "matvec") kernel = vk::ProductKernel::MatVec;
    else if (kernel_name == "tiled") kernel = vk::ProductKernel::Tiled;
    else throw VulkanError(fmt("kernel '%s': expected auto, matvec or tiled", kernel_name.c_str()));
    if (y_stride == 0) y_stride = n_out;
    // (a default-constructed array_t is an empty array, not a null handle: presence is has_bias)
    const bool has_bias = !bias_obj.is_none();
    F32Array bias;
    if (has_bias) {
        bias = bias_obj.cast<F32Array>();
        if (bias.ndim() != 1 || bias.shape(0) != n_out)
            throw VulkanError(fmt("bias must have shape [%lld]", (long long)n_out));
    }
    if (replay < 1) throw VulkanError(fmt("replay must be at least 1, got %d", replay));
    const int64_t rows = x.shape(0);
    std::lock_guard<std::mutex> lock(hooks_mutex);
    vk::Device* dp;
    std::unique_ptr<vk::Buffer> bw, bx, bb, by;
    {
        py::gil_scoped_release release;
        vk::Device& d = hook_device(device);
        dp = &d;
        bw = upload(d, w.data(), w.size());
        bx = upload(d, x.data(), (size_t)x.size() * 4);
        if (has_bias) bb = upload(d, bias.data(), (size_t)n_out * 4);
        // NaN everywhere first: columns the product must not write stay NaN
        const std::vector<float> nan((size_t)(rows * y_stride), std::numeric_limits<float>::quiet_NaN());
        by = upload(d, nan.data(), nan.size() * 4);
        vk::Sequence seq(d);
        vk::matmul_rows(seq, t, *bw, o_begin, n_out, n_in, *bx, rows, *by, y_stride, y_col0, bb.get(), kernel);
        for (int i = 0; i < replay; i++) seq.run();
    }
    return download(*dp, *by, {(py::ssize_t)rows, (py::ssize_t)y_stride});
}

// A row-wise op on x[rows][n]: in, out (may be the same buffer), and optional float vectors.
py::array_t<float> vk_norm(bool rms, F32Array x, py::object w_obj, py::object b_obj, float eps, int device) {
    check_2d(x, "x");
    const int64_t rows = x.shape(0), n = x.shape(1);
    auto vec = [&](py::object o, const char* what) {
        F32Array a = o.cast<F32Array>();
        if (a.ndim() != 1 || a.shape(0) != n) throw VulkanError(fmt("%s must have shape [%lld]", what, (long long)n));
        return a;
    };
    // (a default-constructed array_t is an empty array, not a null handle: presence is has_w / has_b)
    const bool has_w = !w_obj.is_none(), has_b = !b_obj.is_none();
    F32Array w, b;
    if (has_w) w = vec(w_obj, "w");
    if (has_b) b = vec(b_obj, "b");
    std::lock_guard<std::mutex> lock(hooks_mutex);
    vk::Device* dp;
    std::unique_ptr<vk::Buffer> bx, bw, bb, by;
    {
        py::gil_scoped_release release;
        vk::Device& d = hook_device(device);
        dp = &d;
        bx = upload(d, x.data(), (size_t)x.size() * 4);
        if (has_w) bw = upload(d, w.data(), (size_t)n * 4);
        if (has_b) bb = upload(d, b.data(), (size_t)n * 4);
        by = d.buffer((uint64_t)x.size() * 4);
        vk::Sequence seq(d);
        if (rms) vk::rmsnorm(seq, *bx, *by, rows, n, bw.get(), eps);
        else vk::layernorm(seq, *bx, *by, rows, n, bw.get(), bb.get(), eps);
        seq.run();
    }
    return download(*dp, *by, {(py::ssize_t)rows, (py::ssize_t)n});
}

// In-place ops on a copy of x: gelu (any shape, flat), softmax (rows of the last axis).
py::array_t<float> vk_inplace(const char* op, F32Array x, bool tanh_form, int device) {
    if (x.size() < 1) throw VulkanError(fmt("%s of an empty array", op));
    std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
    const int64_t n = x.ndim() ? x.shape(x.ndim() - 1) : 1, rows = (int64_t)x.size() / n;
    std::lock_guard<std::mutex> lock(hooks_mutex);
    vk::Device* dp;
    std::unique_ptr<vk::Buffer> bx;
    {
        py::gil_scoped_release release;
        vk::Device& d = hook_device(device);
        dp = &d;
        bx = upload(d, x.data(), (size_t)x.size() * 4);
        vk::Sequence seq(d);
        if (std::string(op) == "softmax") vk::softmax(seq, *bx, rows, n);
        else vk::gelu(seq, *bx, (int64_t)x.size(), tanh_form);
        seq.run();
    }
    return download(*dp, *bx, shape);
}

py::array_t<float> vk_rope(F32Array x, int n_head, int head_dim, int n_rot, I32Array pos, F32Array cos, F32Array sin,
                           int device) {
    check_2d(x, "x");
    check_2d(cos, "cos");
    const int64_t rows = x.shape(0);
    if (pos.ndim() != 1 || pos.shape(0) != rows) throw VulkanError(fmt("pos must have shape [%lld]", (long long)rows));
    if (sin.ndim() != 2 || sin.shape(0) != cos.shape(0) || sin.shape(1) != cos.shape(1) || cos.shape(1) != n_rot / 2)
        throw VulkanError(fmt("cos and sin must both have shape [n_pos, %d]", n_rot / 2));
    const int64_t n_pos = cos.shape(0);
    for (int64_t r = 0; r < rows; r++)
        if (pos.data()[r] < 0 || pos.data()[r] >= n_pos)
            throw VulkanError(fmt("position %d of row %lld is outside the table's %lld", pos.data()[r], (long long)r,
                                  (long long)n_pos));
    std::lock_guard<std::mutex> lock(hooks_mutex);
    vk::Device* dp;
    std::unique_ptr<vk::Buffer> bx, bp, bc, bs;
    {
        py::gil_scoped_release release;
        vk::Device& d = hook_device(device);
        dp = &d;
        bx = upload(d, x.data(), (size_t)x.size() * 4);
        bp = upload(d, pos.data(), (size_t)rows * 4);
        bc = upload(d, cos.data(), (size_t)cos.size() * 4);
        bs = upload(d, sin.data(), (size_t)sin.size() * 4);
        vk::Sequence seq(d);
        vk::rope_neox(seq, *bx, rows, x.shape(1), n_head, head_dim, n_rot, *bp, *bc, *bs, n_pos);
        seq.run();
    }
    return download(*dp, *bx, {(py::ssize_t)rows, (py::ssize_t)x.shape(1)});
}

// a + b (b broadcast over a's leading rows when it is one row long), in place on a's buffer, replayed.
py::array_t<float> vk_add(F32Array a, F32Array b, int replay, int device) {
    if (a.size() < 1 || b.size() < 1 || a.size() % b.size() != 0)
        throw VulkanError(fmt("add: %lld values and %lld (a whole number of b's is needed)", (long long)a.size(),
                              (long long)b.size()));
    if (replay < 1) throw VulkanError(fmt("replay must be at least 1, got %d", replay));
    std::vector<py::ssize_t> shape(a.shape(), a.shape() + a.ndim());
    std::lock_guard<std::mutex> lock(hooks_mutex);
    vk::Device* dp;
    std::unique_ptr<vk::Buffer> ba, bb;
    {
        py::gil_scoped_release release;
        vk::Device& d = hook_device(device);
        dp = &d;
        ba = upload(d, a.data(), (size_t)a.size() * 4);
        bb = upload(d, b.data(), (size_t)b.size() * 4);
        vk::Sequence seq(d);
        vk::add(seq, *ba, *bb, *ba, (int64_t)a.size(), (int64_t)b.size());
        for (int i = 0; i < replay; i++) seq.run();
    }
    return download(*dp, *ba, shape);
}

// Full attention; each of q, k, v has rows of its own width (its stride), the head columns starting at the
// given offset. k and v None: the three are one buffer (q's), as the image path binds its [q | k | v] rows.
py::array_t<float> vk_attention_full(F32Array q, py::object k_obj, py::object v_obj, int n_head, int head_dim,
                                     float scale, int64_t q_off, int64_t k_off, int64_t v_off, int device) {
    check_2d(q, "q");
    const bool shared = k_obj.is_none() && v_obj.is_none();
    if (!shared && (k_obj.is_none() || v_obj.is_none()))
        throw VulkanError("k and v are both given or both None (then q's buffer holds them)");
    F32Array k = shared ? q : k_obj.cast<F32Array>(), v = shared ? q : v_obj.cast<F32Array>();
    check_2d(k, "k");
    check_2d(v, "v");
    if (v.shape(0) != k.shape(0))
        throw VulkanError(fmt("k has %lld rows, v %lld", (long long)k.shape(0), (long long)v.shape(0)));
    const int64_t n_q = q.shape(0), n_kv = k.shape(0), width = (int64_t)n_head * head_dim;
    std::lock_guard<std::mutex> lock(hooks_mutex);
    vk::Device* dp;
    std::unique_ptr<vk::Buffer> bq, bk, bv, bo;
    {
        py::gil_scoped_release release;
        vk::Device& d = hook_device(device);
        dp = &d;
        bq = upload(d, q.data(), (size_t)q.size() * 4);
        if (!shared) {
            bk = upload(d, k.data(), (size_t)k.size() * 4);
            bv = upload(d, v.data(), (size_t)v.size() * 4);
        }
        bo = d.buffer((uint64_t)n_q * width * 4);
        vk::Sequence seq(d);
        vk::attention_full(seq, *bq, q.shape(1), q_off, shared ? *bq : *bk, k.shape(1), k_off, shared ? *bq : *bv,
                           v.shape(1), v_off, n_q, n_kv, n_head, head_dim, scale, *bo, width);
        seq.run();
    }
    return download(*dp, *bo, {(py::ssize_t)n_q, (py::ssize_t)width});
}

py::array_t<float> vk_patches(F32Array pixels, int64_t patch_size, int device) {
    if (pixels.ndim() != 3 || pixels.shape(0) != 3 || pixels.shape(1) != pixels.shape(2))
        throw VulkanError(fmt("pixels must have shape [3, S, S], got %d dimensions", (int)pixels.ndim()));
    const int64_t size = pixels.shape(1);
    if (patch_size < 1 || size % patch_size != 0)
        throw VulkanError(fmt("patches: an image of %lld pixels a side is not a whole number of %lld-pixel patches",
                              (long long)size, (long long)patch_size));
    const int64_t g = size / patch_size, k = 3 * patch_size * patch_size;
    std::lock_guard<std::mutex> lock(hooks_mutex);
    vk::Device* dp;
    std::unique_ptr<vk::Buffer> bp, bo;
    {
        py::gil_scoped_release release;
        vk::Device& d = hook_device(device);
        dp = &d;
        bp = upload(d, pixels.data(), (size_t)pixels.size() * 4);
        bo = d.buffer((uint64_t)g * g * k * 4);
        vk::Sequence seq(d);
        vk::patches(seq, *bp, size, patch_size, *bo);
        seq.run();
    }
    return download(*dp, *bo, {(py::ssize_t)(g * g), (py::ssize_t)k});
}

}  // namespace

void bind_vulkan(py::module_& m, py::module_& t) {
    m.def("vulkan_built", [] { return true; }, "Whether this build has the Vulkan backend.");
    m.def("vulkan_devices", &devices_list,
          "The Vulkan devices: a dict each (name, type, memory heaps, subgroup size, fp16/int8/cooperative-matrix "
          "support, limits). VulkanError where the loader or an instance is missing.");

    t.def("vk_validation", [] { return vk::Instance::get().validation(); },
          "Whether the instance runs with the validation layer (TINYGPTV_VK_VALIDATION=1 when it was made).");
    t.def("vk_messages", [] { return vk::Instance::get().take_messages(); },
          "The validation layer's messages since the last call.");
    t.def("vk_matmul", &vk_matmul, py::arg("type"), py::arg("w"), py::arg("n_out"), py::arg("n_in"), py::arg("x"),
          py::arg("bias") = py::none(), py::arg("device") = 0, py::arg("replay") = 1, py::arg("kernel") = "auto",
          py::arg("o_begin") = 0, py::arg("y_stride") = 0, py::arg("y_col0") = 0);
    t.def("vk_tiled_min_rows", &vk::tiled_min_rows,
          "The fewest rows whose products take the tiled shader (TINYGPTV_VK_TILED_ROWS, else 16).");
    t.def("vk_matmul_supports", [](const std::string& type) { return vk::matmul_supports(type_from_name(type)); },
          py::arg("type"));
    t.def("vk_layernorm", [](F32Array x, py::object w, py::object b, float eps, int device) {
        return vk_norm(false, x, w, b, eps, device);
    }, py::arg("x"), py::arg("w") = py::none(), py::arg("b") = py::none(), py::arg("eps") = 1e-5f, py::arg("device") = 0);
    t.def("vk_rmsnorm", [](F32Array x, py::object w, float eps, int device) {
        return vk_norm(true, x, w, py::none(), eps, device);
    }, py::arg("x"), py::arg("w") = py::none(), py::arg("eps") = 1e-5f, py::arg("device") = 0);
    t.def("vk_gelu", [](F32Array x, bool tanh_form, int device) { return vk_inplace("gelu", x, tanh_form, device); },
          py::arg("x"), py::arg("tanh") = false, py::arg("device") = 0);
    t.def("vk_softmax", [](F32Array x, int device) { return vk_inplace("softmax", x, false, device); }, py::arg("x"),
          py::arg("device") = 0);
    t.def("vk_rope_neox", &vk_rope, py::arg("x"), py::arg("n_head"), py::arg("head_dim"), py::arg("n_rot"),
          py::arg("pos"), py::arg("cos"), py::arg("sin"), py::arg("device") = 0);
    t.def("vk_add", &vk_add, py::arg("a"), py::arg("b"), py::arg("replay") = 1, py::arg("device") = 0);
    t.def("vk_attention_full", &vk_attention_full, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("n_head"),
          py::arg("head_dim"), py::arg("scale"), py::arg("q_off") = 0, py::arg("k_off") = 0, py::arg("v_off") = 0,
          py::arg("device") = 0);
    t.def("vk_patches", &vk_patches, py::arg("pixels"), py::arg("patch_size"), py::arg("device") = 0);
    t.def("vk_roundtrip", [](U8Array data, int device) {
        std::vector<uint8_t> back((size_t)data.size());
        {
            std::lock_guard<std::mutex> lock(hooks_mutex);
            py::gil_scoped_release release;
            vk::Device& d = hook_device(device);
            auto b = upload(d, data.data(), back.size());
            d.download(*b, back.data(), back.size());
        }
        py::array_t<uint8_t> out((py::ssize_t)back.size());
        std::copy(back.begin(), back.end(), out.mutable_data());
        return out;
    }, py::arg("data"), py::arg("device") = 0);
}

#endif

}  // namespace tg
