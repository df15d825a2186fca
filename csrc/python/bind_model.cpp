// Python binding of the GGUF reader and the Model. Compute runs with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "errors.h"
#include "model/tinygptv.h"
#include "python/bind.h"

namespace py = pybind11;

namespace tg {

static py::object value_to_py(const GGUFValue& v, size_t max_array) {
    switch (v.type) {
        case GGUFValueType::U8: case GGUFValueType::U16: case GGUFValueType::U32: case GGUFValueType::U64:
            return py::int_(v.u);
        case GGUFValueType::I8: case GGUFValueType::I16: case GGUFValueType::I32: case GGUFValueType::I64:
            return py::int_(v.i);
        case GGUFValueType::F32: case GGUFValueType::F64: return py::float_(v.f);
        case GGUFValueType::BOOL: return py::bool_(v.u != 0);
        case GGUFValueType::STRING: return py::bytes(v.s).attr("decode")("utf-8", "replace");
        case GGUFValueType::ARRAY: {
            if (v.n > max_array) return py::none();
            py::list out;
            if (v.elem_type == GGUFValueType::STRING) {
                for (auto& s : v.strs) out.append(py::bytes(s).attr("decode")("utf-8", "replace"));
            } else if (!v.ints.empty() || v.n == 0) {
                for (auto x : v.ints)  // u64 elements above INT64_MAX are kept as their bit pattern
                    out.append(v.elem_type == GGUFValueType::U64 ? py::int_((uint64_t)x) : py::int_(x));
            } else if (v.elem_type == GGUFValueType::BOOL) {
                for (auto x : v.nums) out.append(py::bool_(x != 0));
            } else {
                for (auto x : v.nums) out.append(py::float_(x));
            }
            return std::move(out);
        }
    }
    return py::none();
}

// metadata as a dict; arrays longer than max_array are left out (the vocabulary, merges, scores).
static py::dict metadata_dict(const GGUFFile& f, size_t max_array) {
    py::dict d;
    for (auto& kv : f.kvs()) {
        py::object o = value_to_py(kv.second, max_array);
        if (!o.is_none()) d[py::bytes(kv.first).attr("decode")("utf-8", "replace")] = o;
    }
    return d;
}

static py::list tensor_list(const GGUFFile& f) {
    py::list out;
    for (auto& t : f.tensors()) {
        py::list shape;
        for (uint32_t i = 0; i < t.n_dims; i++) shape.append(t.ne[i]);
        out.append(py::make_tuple(t.name, type_name(t.type), shape, t.offset, t.nbytes));
    }
    return out;
}

using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using I32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

void bind_model(py::module_& m) {
    py::class_<GGUFFile, std::shared_ptr<GGUFFile>>(m, "GGUFReader",
        "A validated, memory-mapped GGUF file (metadata and tensor table).")
        .def(py::init([](const std::string& path) {
                 py::gil_scoped_release nogil;
                 return std::make_shared<GGUFFile>(path);
             }), py::arg("path"))
        .def_property_readonly("version", &GGUFFile::version)
        .def_property_readonly("alignment", &GGUFFile::alignment)
        .def_property_readonly("file_size", &GGUFFile::file_size)
        .def("metadata", [](const GGUFFile& f, size_t max_array) { return metadata_dict(f, max_array); },
             py::arg("max_array") = (size_t)-1)
        .def("tensors", &tensor_list, "list of (name, type, shape [ne0, ne1, ...], offset, nbytes)")
        .def("validate", [](const GGUFFile& f) {
            py::gil_scoped_release nogil;
            f.validate();
        }, "Scans tensor data for NaN/Inf (F32/F16/BF16 values, fp16 scales of Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/IQ4_NL "
           "blocks and of Q4_K/Q5_K/Q6_K/IQ4_XS super-blocks); raises GGUFError naming the first offending tensor and element.")
        .def("tensor_data", [](std::shared_ptr<GGUFFile> f, const std::string& name) {
            const GGUFTensor* t = f->find_tensor(name);
            if (!t) throw py::key_error(name);
            // A read-only uint8 view that keeps the file mapped while it lives.
            py::array a(py::dtype("uint8"), {(py::ssize_t)t->nbytes}, {(py::ssize_t)1}, t->data, py::cast(f));
            py::detail::array_proxy(a.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
            return a;
        }, py::arg("name"));

    py::class_<Model, std::shared_ptr<Model>>(m, "Model")
        .def(py::init([](const std::string& path, int n_threads) {
                 py::gil_scoped_release nogil;
                 return std::make_shared<Model>(path, n_threads);
             }), py::arg("path"), py::arg("n_threads") = 0,
             "loads and validates a GGUF file; n_threads prepares the weights (0: all cores)")
        .def("metadata", [](const Model& mo, size_t max_array) { return metadata_dict(mo.file(), max_array); },
             py::arg("max_array") = 64)
        .def("tensors", [](const Model& mo) { return tensor_list(mo.file()); })
        .def("validate", [](const Model& mo) {
            py::gil_scoped_release nogil;
            mo.file().validate();
        }, "The NaN/Inf scan of GGUFReader.validate over this model's file.")
        .def_property_readonly("arch", [](const Model& mo) { return mo.hparams().arch; })
        .def_property_readonly("n_vocab", [](const Model& mo) { return mo.hparams().n_vocab; })
        .def_property_readonly("n_embd", [](const Model& mo) { return mo.hparams().n_embd; })
        .def_property_readonly("n_layer", [](const Model& mo) { return mo.hparams().n_layer; })
        .def_property_readonly("n_ctx_train", [](const Model& mo) { return mo.hparams().n_ctx_train; })
        .def_property_readonly("file_size", [](const Model& mo) { return mo.file().file_size(); })
        .def_property_readonly("has_vision", &Model::has_vision)
        .def_property_readonly("image_size", [](const Model& mo) -> py::object {
            return mo.has_vision() ? py::object(py::int_(mo.vision_hparams().image_size)) : py::none();
        }, "side of the square input image in pixels (None without a vision path)")
        .def_property_readonly("n_image_tokens", [](const Model& mo) -> int64_t {
            return mo.has_vision() ? mo.qformer_hparams().n_query : 0;
        }, "rows of embeddings one image contributes to the prompt (0 without a vision path)")
        .def_property_readonly("image_mean", [](const Model& mo) -> py::object {
            if (!mo.has_vision()) return py::none();
            const float* m = mo.vision_hparams().mean;
            return py::make_tuple(m[0], m[1], m[2]);
        }, "per-channel (R, G, B) mean used to normalise pixels in [0, 1]")
        .def_property_readonly("image_std", [](const Model& mo) -> py::object {
            if (!mo.has_vision()) return py::none();
            const float* s = mo.vision_hparams().std;
            return py::make_tuple(s[0], s[1], s[2]);
        }, "per-channel (R, G, B) standard deviation used to normalise pixels")
        .def_property_readonly("vision_hparams", [](const Model& mo) -> py::object {
            if (!mo.has_vision()) return py::none();
            const VisionHparams& v = mo.vision_hparams();
            const QformerHparams& q = mo.qformer_hparams();
            py::dict d;
            d["image_size"] = v.image_size; d["patch_size"] = v.patch_size; d["n_tokens"] = v.n_tokens();
            d["vit_n_embd"] = v.n_embd; d["vit_n_layer"] = v.n_layer; d["vit_n_head"] = v.n_head;
            d["vit_n_ff"] = v.n_ff; d["vit_ln_eps"] = v.ln_eps; d["post_ln_eps"] = v.post_eps;
            d["qformer_n_embd"] = q.n_embd; d["qformer_n_layer"] = q.n_layer; d["qformer_n_head"] = q.n_head;
            d["qformer_n_ff"] = q.n_ff; d["n_query"] = q.n_query; d["cross_attention_freq"] = q.cross_freq;
            d["qformer_ln_eps"] = q.ln_eps; d["proj_n_mid"] = q.n_proj_mid; d["proj_n_out"] = q.n_embd_out;
            return std::move(d);
        }, "hyperparameters of the ViT, Q-Former and projector (None without a vision path)")
        .def("embed_tokens", [](const Model& mo, I32Array ids) {
            const int64_t n = ids.size(), E = mo.hparams().n_embd;
            F32Array out({n, E});
            const int32_t* ip = ids.data();
            float* op = out.mutable_data();
            {
                py::gil_scoped_release nogil;
                mo.embed_tokens(ip, n, op);
            }
            return out;
        }, py::arg("ids"));
}

}  // namespace tg
