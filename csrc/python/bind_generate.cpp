// Binding of the token loop and of a Model's tokenizer.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "errors.h"
#include "generate.h"
#include "model/vocab.h"
#include "python/bind.h"

namespace py = pybind11;

namespace tg {

void bind_generate(py::module_& m) {
    m.def("tokenizer_from_model", [](const Model& mo) { return Tokenizer::create(read_vocab(mo.file())); },
          py::arg("model"), "the tokenizer described by the model file's tokenizer.ggml.* metadata");
    m.def("tokenizer_from_gguf", [](const GGUFFile& f) { return Tokenizer::create(read_vocab(f)); },
          py::arg("reader"), "the tokenizer described by a GGUF file's tokenizer.ggml.* metadata");

    py::class_<Generator>(m, "Generator",
        "Samples one token per step() from the session's last logits and feeds it back (GIL released).")
        .def(py::init([](Session& s, const Tokenizer& tok, std::vector<int32_t> history,
                         py::array_t<float, py::array::c_style | py::array::forcecast> logits, float temperature,
                         int top_k, float top_p, float min_p, float repetition_penalty, int penalty_last_n,
                         uint64_t seed) {
                 SamplerParams p =
                     sampler_params(temperature, top_k, top_p, min_p, repetition_penalty, penalty_last_n, seed);
                 std::vector<float> l(logits.data(), logits.data() + logits.size());
                 return new Generator(s, tok, p, std::move(history), std::move(l));
             }),
             py::arg("session"), py::arg("tokenizer"), py::arg("history"), py::arg("last_logits"),
             py::arg("temperature") = 0.8f, py::arg("top_k") = 40, py::arg("top_p") = 0.95f, py::arg("min_p") = 0.05f,
             py::arg("repetition_penalty") = 1.0f, py::arg("penalty_last_n") = 64, py::arg("seed") = 0,
             py::keep_alive<1, 2>(), py::keep_alive<1, 3>())
        .def("step", [](Generator& g) {
            py::gil_scoped_release nogil;
            std::lock_guard<std::mutex> lk(g.session().mutex());
            return g.step();
        })
        .def("commit", [](Generator& g) {
            py::gil_scoped_release nogil;
            std::lock_guard<std::mutex> lk(g.session().mutex());
            g.commit();
        })
        .def_property_readonly("pending", &Generator::pending);
}

}  // namespace tg
