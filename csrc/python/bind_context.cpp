// Python binding of the engine Context: batches, decode, sequence operations, image embeddings.
// Every call holds the context's mutex with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <array>

#include "errors.h"
#include "model/context.h"
#include "python/bind.h"

namespace py = pybind11;

namespace tg {

using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using I32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

namespace {

// A Batch that keeps the images its rows name alive.
struct PyBatch {
    Batch b;
    std::vector<std::shared_ptr<const ImageEmbd>> images;
};

}  // namespace

std::shared_ptr<const ImageEmbd> encode_pixels(Context& c, F32Array pixels) {
    const Model& mo = c.model();
    if (!mo.has_vision())
        throw ModelError(fmt("this model (general.architecture '%s') has no vision encoder", mo.hparams().arch.c_str()));
    const int64_t S = mo.vision_hparams().image_size;
    if (pixels.ndim() != 3 || pixels.shape(0) != 3 || pixels.shape(1) != S || pixels.shape(2) != S) {
        std::string shape = "(";
        for (py::ssize_t i = 0; i < pixels.ndim(); i++) shape += (i ? ", " : "") + std::to_string(pixels.shape(i));
        shape += pixels.ndim() == 1 ? ",)" : ")";
        throw ModelError(fmt("image must have shape (3, %lld, %lld), got %s", (long long)S, (long long)S, shape.c_str()));
    }
    const float* xp = pixels.data();
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lk(c.mutex());
    return c.encode_image(xp);
}

// Appends n rows (built by add(batch, n_past)) to one sequence; the logits of every row or of the last.
template <class Add>
static F32Array eval_rows(Context& c, int seq, int64_t n, bool all_logits, Add add) {
    const int64_t V = c.model().hparams().n_vocab;
    if (n < 1) throw ModelError("eval needs at least one row");
    F32Array out = all_logits ? F32Array({n, V}) : F32Array({V});
    float* op = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lk(c.mutex());
        Batch b;
        add(b, c.n_past(seq));
        const int64_t got = c.decode(b);
        std::memcpy(op, c.logits(), sizeof(float) * (size_t)(got * V));
    }
    return out;
}

void bind_context(py::module_& m) {
    py::class_<ImageEmbd, std::shared_ptr<ImageEmbd>>(m, "ImageEmbedding",
        "The projected embeddings of one image (n_rows, n_embd), named by prompts and batches.")
        .def_readonly("hash", &ImageEmbd::hash, "content hash of the normalised pixels")
        .def_readonly("n_rows", &ImageEmbd::n_rows)
        .def_readonly("n_embd", &ImageEmbd::n_embd)
        .def("numpy", [](const ImageEmbd& e) {
            F32Array out({e.n_rows, e.n_embd});
            std::memcpy(out.mutable_data(), e.data.data(), e.bytes());
            return out;
        }, "a copy as a float32 array");

    py::class_<PyBatch>(m, "Batch", "Rows of one decode call: tokens or image rows, each with its sequence, "
                                    "position and whether its logits are wanted.")
        .def(py::init<>())
        .def("add_token", [](PyBatch& b, int32_t token, int32_t seq, int64_t pos, bool logits) {
            if (token < 0) throw ModelError(fmt("token id %d is negative", token));
            b.b.add_token(token, seq, pos, logits);
        }, py::arg("token"), py::arg("seq"), py::arg("pos"), py::arg("logits") = false)
        .def("add_image_row", [](PyBatch& b, std::shared_ptr<ImageEmbd> img, int32_t row, int32_t seq, int64_t pos,
                                 bool logits) {
            if (row < 0 || row >= img->n_rows)
                throw ModelError(fmt("image row %d is outside [0, %lld)", row, (long long)img->n_rows));
            b.b.add_image_row(*img, row, seq, pos, logits);
            b.images.push_back(img);
        }, py::arg("image"), py::arg("row"), py::arg("seq"), py::arg("pos"), py::arg("logits") = false)
        .def("clear", [](PyBatch& b) { b.b.clear(); b.images.clear(); })
        .def("__len__", [](const PyBatch& b) { return b.b.size(); });

    py::class_<Context, std::shared_ptr<Context>>(m, "Context",
        "One execution context over a shared Model: its threads, a KV cache of n_seq sequences, scratch and an "
        "image-embedding cache.")
        .def(py::init([](std::shared_ptr<Model> model, int64_t n_ctx, int n_seq, int n_threads, bool kv_f16,
                         double image_cache_mb, int gpu, int64_t gpu_layers) {
                 if (!(image_cache_mb >= 0) || image_cache_mb > 1e6)
                     throw ModelError(fmt("image_cache_mb %g must be in [0, 1e6]", image_cache_mb));
                 if (gpu < -1) throw ModelError(fmt("gpu %d must be a Vulkan device index (or -1: the CPU)", gpu));
                 py::gil_scoped_release nogil;
                 return std::make_shared<Context>(model, n_ctx, n_seq, n_threads, kv_f16,
                                                  (size_t)(image_cache_mb * (1 << 20)), gpu, gpu_layers);
             }), py::arg("model"), py::arg("n_ctx"), py::arg("n_seq") = 1, py::arg("n_threads") = 1,
             py::arg("kv_f16") = true, py::arg("image_cache_mb") = 64.0, py::arg("gpu") = -1,
             py::arg("gpu_layers") = -1,
             "gpu: the Vulkan device the decoder runs on (weights uploaded now, the F16 KV cache on the device); "
             "-1 (default) runs on the CPU threads. gpu_layers: only the first that many decoder layers go to the "
             "device, the rest and the output head run on the CPU threads (-1, default: all).")
        .def_property_readonly("backend", [](const Context& c) {
            return c.backend() == Backend::Vulkan ? "vulkan" : "cpu";
        }, "where the decoder runs: 'cpu' or 'vulkan'")
        .def_property_readonly("gpu_weight_bytes", &Context::gpu_weight_bytes,
                               "device memory of the uploaded weights, the decoder's and the image path's (0 on the CPU)")
        .def_property_readonly("gpu_image_activation_bytes", &Context::gpu_image_activation_bytes,
                               "device and host-visible memory of the image path's buffers on the GPU (0 without)")
        .def_property_readonly("gpu_layers", &Context::gpu_layers, "the decoder layers on the device (0 on the CPU)")
        .def_property_readonly("gpu_steps", [](Context& c) {
            const auto n = without_gil_locked(c, [&] { return c.gpu_steps(); });
            py::dict d;
            d["recorded"] = n.recorded;
            d["replayed"] = n.replayed;
            return d;
        }, "the GPU decoder's steps so far: {'recorded': whose commands were recorded, 'replayed': that replayed "
           "a recording of the same shape} (zeros without one)")
        .def_property_readonly("gpu_kv_reserved_bytes", [](Context& c) {
            return without_gil_locked(c, [&] { return c.gpu_kv_bytes(); });
        }, "the device's part of kv_reserved_bytes (0 on the CPU)")
        .def_property_readonly("n_ctx", &Context::n_ctx)
        .def_property_readonly("n_seq", &Context::n_seq)
        .def_property_readonly("n_threads", &Context::n_threads)
        .def_property_readonly("kv_reserved_bytes", [](Context& c) {
            return without_gil_locked(c, [&] { return c.kv_reserved_bytes(); });
        }, "bytes of the KV cache reserved by the sequences written so far")
        .def("decode", [](Context& c, const PyBatch& b) {
            const int64_t V = c.model().hparams().n_vocab;
            std::vector<float> logits;  // copied under the lock: another thread's decode reuses the buffer
            int64_t n;
            {
                py::gil_scoped_release nogil;
                std::lock_guard<std::mutex> lk(c.mutex());
                n = c.decode(b.b);
                logits.assign(c.logits(), c.logits() + n * V);
            }
            F32Array out({n, V});
            std::memcpy(out.mutable_data(), logits.data(), sizeof(float) * logits.size());
            return out;
        }, py::arg("batch"), "Runs the batch; the logits of the rows that wanted them, in row order (n, n_vocab).")
        .def("eval_tokens", [](Context& c, int seq, I32Array ids, bool all_logits) {
            return eval_rows(c, seq, ids.size(), all_logits, [&](Batch& b, int64_t past) {
                for (int64_t i = 0; i < ids.size(); i++) {
                    if (ids.data()[i] < 0) throw ModelError(fmt("token id %d is negative", ids.data()[i]));
                    b.add_token(ids.data()[i], seq, past + i, all_logits || i + 1 == ids.size());
                }
            });
        }, py::arg("seq"), py::arg("ids"), py::arg("all_logits") = false,
           "Appends token ids to one sequence (a batch of that sequence alone); the logits of every row (n, n_vocab) "
           "or of the last (n_vocab,).")
        .def("eval_embeddings", [](Context& c, int seq, F32Array x, bool all_logits) {
            const int64_t E = c.model().hparams().n_embd;
            if (x.ndim() != 2 || x.shape(1) != E)
                throw ModelError(fmt("embeddings must have shape (n, %lld)", (long long)E));
            const int64_t n = x.shape(0);
            const uint64_t hash = content_hash(x.data(), sizeof(float) * (size_t)(n * E));
            return eval_rows(c, seq, n, all_logits, [&](Batch& b, int64_t past) {
                for (int64_t i = 0; i < n; i++) {
                    b.token.push_back(-1);
                    b.embd.push_back(x.data() + i * E);
                    b.cell.push_back(Cell::of_image(hash, (int32_t)i));
                    b.seq.push_back(seq);
                    b.pos.push_back(past + i);
                    b.logits.push_back(all_logits || i + 1 == n);
                }
            });
        }, py::arg("seq"), py::arg("embeddings"), py::arg("all_logits") = false,
           "Appends rows of input embeddings (n, n_embd) to one sequence; logits as eval_tokens.")
        .def("n_past", [](Context& c, int seq) {
            return without_gil_locked(c, [&] { return c.n_past(seq); });
        }, py::arg("seq"))
        .def("tokens", [](Context& c, int seq) {
            return without_gil_locked(c, [&] {
                std::vector<int32_t> out;
                for (const Cell& cl : c.kv().cells(seq)) out.push_back(cl.token);
                return out;
            });
        }, py::arg("seq"), "what the sequence's cache holds: token ids, -1 for image rows")
        .def("truncate", [](Context& c, int seq, int64_t p0) {
            without_gil_locked(c, [&] { c.seq_truncate(seq, p0); });
        }, py::arg("seq"), py::arg("p0"), "forget positions [p0, n_past) of a sequence")
        .def("copy", [](Context& c, int src, int dst, int64_t n) {
            py::gil_scoped_release nogil;
            std::lock_guard<std::mutex> lk(c.mutex());
            c.seq_copy(src, dst, n);
        }, py::arg("src"), py::arg("dst"), py::arg("n"), "sequence dst becomes the first n positions of src")
        .def("clear", [](Context& c, int seq) {
            without_gil_locked(c, [&] { c.seq_clear(seq); });
        }, py::arg("seq"))
        .def("longest_prefix", [](Context& c, std::vector<int32_t> ids) {
            std::vector<Cell> cells;
            for (int32_t t : ids) cells.push_back(Cell::of_token(t));
            return without_gil_locked(c, [&] { return c.longest_prefix(cells.data(), (int64_t)cells.size(), nullptr); });
        }, py::arg("ids"), "(sequence, length): the sequence holding the longest prefix of the token ids")
        .def("encode_image", &encode_pixels, py::arg("pixels"),
             "The ImageEmbedding of a normalised float32 image (3, S, S), from the cache when the same pixels were "
             "encoded before. The KV cache is not touched.")
        .def("image_cache_info", [](Context& c) {
            const auto info = without_gil_locked(c, [&] {
                const ImageCache& ic = c.image_cache();
                return std::array<int64_t, 5>{(int64_t)ic.size(), (int64_t)ic.bytes(), (int64_t)ic.max_bytes(),
                                              (int64_t)ic.hits(), (int64_t)ic.misses()};
            });
            py::dict d;
            d["entries"] = info[0]; d["bytes"] = info[1]; d["max_bytes"] = info[2];
            d["hits"] = info[3]; d["misses"] = info[4];
            return d;
        })
        .def("clear_image_cache", [](Context& c) {
            without_gil_locked(c, [&] { c.image_cache().clear(); });
        })
        .def("set_image_cache_mb", [](Context& c, double mb) {
            if (!(mb >= 0) || mb > 1e6) throw ModelError(fmt("image_cache_mb %g must be in [0, 1e6]", mb));
            without_gil_locked(c, [&] { c.image_cache().set_max_bytes((size_t)(mb * (1 << 20))); });
        }, py::arg("mb"));
}

}  // namespace tg
