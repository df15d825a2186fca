// Binding of the token loop (Generator) and of a Model's tokenizer.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "errors.h"
#include "generate.h"
#include "model/vocab.h"
#include "python/bind.h"

namespace py = pybind11;

namespace tg {

// A Generator with the context it steps kept alive (the tokenizer by py::keep_alive).
struct PyGenerator {
    std::shared_ptr<Context> ctx;
    Generator gen;
    PyGenerator(std::shared_ptr<Context> c, const Tokenizer& t, int64_t n_batch)
        : ctx(std::move(c)), gen(*ctx, t, n_batch) {}
};

static py::tuple event_tuple(const GenEvent& e) {
    PyObject* s = PyUnicode_DecodeUTF8(e.text.data(), (Py_ssize_t)e.text.size(), "replace");
    if (!s) throw py::error_already_set();
    py::object top = py::none();
    if (!e.top.empty()) {
        py::list l;
        for (auto& p : e.top) l.append(py::make_tuple(p.first, p.second));
        top = l;
    }
    return py::make_tuple(e.seq, e.token, py::reinterpret_steal<py::str>(s), e.finished, std::string(e.finish_reason),
                          e.logprob, top, e.ticket);
}

void bind_generate(py::module_& m) {
    m.def("tokenizer_from_model", [](const Model& mo) { return Tokenizer::create(read_vocab(mo.file())); },
          py::arg("model"), "the tokenizer described by the model file's tokenizer.ggml.* metadata");
    m.def("tokenizer_from_gguf", [](const GGUFFile& f) { return Tokenizer::create(read_vocab(f)); },
          py::arg("reader"), "the tokenizer described by a GGUF file's tokenizer.ggml.* metadata");

    m.def("sampling_defaults", [] {
        SamplerParams p;
        py::dict d;
        d["temperature"] = p.temperature; d["top_k"] = p.top_k; d["top_p"] = p.top_p; d["min_p"] = p.min_p;
        d["repetition_penalty"] = p.repetition_penalty; d["penalty_last_n"] = p.penalty_last_n;
        return d;
    }, "the sampler's default settings");
    m.def("check_sampling", [](float temperature, int top_k, float top_p, float min_p, float repetition_penalty,
                               int penalty_last_n) {
        sampler_params(temperature, top_k, top_p, min_p, repetition_penalty, penalty_last_n, 0).validate();
    }, py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("min_p"), py::arg("repetition_penalty"),
       py::arg("penalty_last_n"), "raises ValueError naming the first bad setting");

    py::class_<PyGenerator>(m, "Generator",
        "The token loop of every sequence of a context: submit() requests, step() all of them at once.")
        .def(py::init([](std::shared_ptr<Context> ctx, const Tokenizer& tok, int64_t n_batch) {
                 return new PyGenerator(std::move(ctx), tok, n_batch);
             }), py::arg("context"), py::arg("tokenizer"), py::arg("n_batch") = 512, py::keep_alive<1, 3>())
        .def("submit", [](PyGenerator& g, py::list prompt, int64_t max_new_tokens, float temperature, int top_k,
                          float top_p, float min_p, float repetition_penalty, int penalty_last_n, uint64_t seed,
                          std::vector<int32_t> stop_ids, std::vector<std::string> stop_strings, bool use_eos,
                          std::vector<int32_t> penalty_history, int32_t n_probs) {
            GenRequest req;
            for (py::handle h : prompt) {
                PromptPiece p;
                if (py::isinstance<ImageEmbd>(h)) p.image = h.cast<std::shared_ptr<ImageEmbd>>();
                else p.tokens = h.cast<std::vector<int32_t>>();
                req.prompt.push_back(std::move(p));
            }
            req.sampling = sampler_params(temperature, top_k, top_p, min_p, repetition_penalty, penalty_last_n, seed);
            req.max_new_tokens = max_new_tokens;
            req.stop_ids = std::move(stop_ids);
            req.stop_strings = std::move(stop_strings);
            req.use_eos = use_eos;
            req.penalty_history = std::move(penalty_history);
            req.n_probs = n_probs;
            int64_t cached = 0;
            uint64_t ticket = 0;
            int seq;
            {
                py::gil_scoped_release nogil;
                std::lock_guard<std::mutex> lk(g.ctx->mutex());
                seq = g.gen.submit(std::move(req), &cached, &ticket);
            }
            return py::make_tuple(seq, cached, ticket);
        }, py::arg("prompt"), py::arg("max_new_tokens"), py::arg("temperature"), py::arg("top_k"), py::arg("top_p"),
           py::arg("min_p"), py::arg("repetition_penalty"), py::arg("penalty_last_n"), py::arg("seed"),
           py::arg("stop_ids") = std::vector<int32_t>(), py::arg("stop_strings") = std::vector<std::string>(),
           py::arg("use_eos") = true, py::arg("penalty_history") = std::vector<int32_t>(), py::arg("n_probs") = 0,
           "prompt: a list of token-id lists and ImageEmbeddings. Returns (sequence, cached positions, ticket): the "
           "ticket names the request in step()'s events (its sequence is reused once it ends).")
        .def("step", [](PyGenerator& g) {
            std::vector<GenEvent> evs;
            {
                py::gil_scoped_release nogil;
                std::lock_guard<std::mutex> lk(g.ctx->mutex());
                evs = g.gen.step();
            }
            py::list out;
            for (const GenEvent& e : evs) out.append(event_tuple(e));
            return out;
        }, "one decode call for every active sequence: a list of (seq, token or -1, text, finished, reason, logprob, "
           "top, ticket) where top is [(id, logprob)] with n_probs, else None")
        .def("cancel", [](PyGenerator& g, int seq) {
            const GenEvent e = without_gil_locked(*g.ctx, [&] { return g.gen.cancel(seq); });
            return event_tuple(e);
        }, py::arg("seq"))
        .def("prompt_logits", [](PyGenerator& g, int seq) {
            const std::vector<float> l = without_gil_locked(*g.ctx, [&] { return g.gen.prompt_logits(seq); });
            py::array_t<float> out((py::ssize_t)l.size());
            std::memcpy(out.mutable_data(), l.data(), sizeof(float) * l.size());
            return out;
        }, py::arg("seq"), "the logits at the end of the sequence's last prompt")
        .def("reserve", [](PyGenerator& g) {
            return without_gil_locked(*g.ctx, [&] { return g.gen.reserve(); });
        }, "a free sequence taken out of the generator's use until release(seq)")
        .def("release", [](PyGenerator& g, int seq) {
            without_gil_locked(*g.ctx, [&] { g.gen.release(seq); });
        }, py::arg("seq"))
        .def_property_readonly("n_active", [](PyGenerator& g) {
            return without_gil_locked(*g.ctx, [&] { return g.gen.n_active(); });
        })
        .def_property_readonly("has_free_slot", [](PyGenerator& g) {
            return without_gil_locked(*g.ctx, [&] { return g.gen.has_free_slot(); });
        });
}

}  // namespace tg
