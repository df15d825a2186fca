// Python binding of the tokenizers, the stream decoder and the sampler.
//   Tokenizer(model=..., tokens=[...], ...)   keyword arguments mirror tg::VocabData
//   StreamDecoder(tok), Sampler(tok, temperature=..., ...)
// Text arguments are str (encoded as UTF-8; lone surrogates raise UnicodeEncodeError, a ValueError) or,
// through encode_bytes, any bytes. decode and token_bytes return bytes; StreamDecoder returns str.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <stdexcept>

#include "errors.h"
#include "python/bind.h"
#include "sampler.h"
#include "tokenizer/tokenizer.h"

namespace py = pybind11;

namespace tg {

namespace {

std::string utf8_of(const py::str& s) {
    Py_ssize_t n = 0;
    const char* p = PyUnicode_AsUTF8AndSize(s.ptr(), &n);
    if (!p) throw py::error_already_set();
    return std::string(p, (size_t)n);
}

// A sampler and the tokenizer it reads from (kept alive by py::keep_alive).
std::unique_ptr<Sampler> make_sampler(const Tokenizer& tok, float temperature, int top_k, float top_p, float min_p,
                                      float repetition_penalty, int penalty_last_n, uint64_t seed) {
    return std::make_unique<Sampler>(
        sampler_params(temperature, top_k, top_p, min_p, repetition_penalty, penalty_last_n, seed), tok);
}

}  // namespace

void bind_tokenizer(py::module_& m) {
    py::class_<Tokenizer>(m, "Tokenizer", "A tokenizer built from the tokenizer.ggml.* data of a GGUF file.")
        .def(py::init([](const std::string& model, std::vector<std::string> tokens, std::vector<float> scores,
                         std::vector<int32_t> token_types, std::vector<std::string> merges, const std::string& pre,
                         int32_t bos, int32_t eos, int32_t unk, int32_t pad, bool add_bos,
                         const std::string& spm_algorithm, bool add_space_prefix) {
                 VocabData v;
                 v.model = model;
                 v.pre = pre;
                 v.tokens = std::move(tokens);
                 v.scores = std::move(scores);
                 v.token_types = std::move(token_types);
                 v.merges = std::move(merges);
                 v.bos = bos;
                 v.eos = eos;
                 v.unk = unk;
                 v.pad = pad;
                 v.add_bos = add_bos;
                 v.spm_algorithm = spm_algorithm;
                 v.add_space_prefix = add_space_prefix;
                 return Tokenizer::create(v);
             }),
             py::kw_only(), py::arg("model"), py::arg("tokens"), py::arg("scores") = std::vector<float>(),
             py::arg("token_types") = std::vector<int32_t>(), py::arg("merges") = std::vector<std::string>(),
             py::arg("pre") = "", py::arg("bos") = -1, py::arg("eos") = -1, py::arg("unk") = -1,
             py::arg("pad") = -1, py::arg("add_bos") = false, py::arg("spm_algorithm") = "",
             py::arg("add_space_prefix") = true)
        .def(
            "encode",
            [](const Tokenizer& t, const py::str& text, bool parse_special) {
                std::string s = utf8_of(text);
                py::gil_scoped_release nogil;
                return t.encode(s, parse_special);
            },
            py::arg("text"), py::arg("parse_special") = false,
            "Token ids of text (no BOS added). parse_special: also match control tokens such as <|endoftext|>.")
        .def(
            "encode_bytes",
            [](const Tokenizer& t, const py::bytes& b, bool parse_special) {
                std::string s = b;
                py::gil_scoped_release nogil;
                return t.encode(s, parse_special);
            },
            py::arg("data"), py::arg("parse_special") = false,
            "Token ids of raw bytes; invalid UTF-8 is kept byte for byte (see the tokenizer docs).")
        .def(
            "decode",
            [](const Tokenizer& t, const std::vector<int32_t>& ids) { return py::bytes(t.decode(ids)); },
            py::arg("ids"), "Concatenated bytes of the tokens (may end inside a UTF-8 character).")
        .def(
            "token_bytes", [](const Tokenizer& t, int32_t id) { return py::bytes(t.token_bytes(id)); },
            py::arg("id"))
        .def("token_type", &Tokenizer::token_type, py::arg("id"))
        .def("is_sampleable", &Tokenizer::is_sampleable, py::arg("id"))
        .def_property_readonly("n_vocab", &Tokenizer::n_vocab)
        .def_property_readonly("bos", &Tokenizer::bos)
        .def_property_readonly("eos", &Tokenizer::eos)
        .def_property_readonly("add_bos", &Tokenizer::add_bos)
        .def_property_readonly("model", &Tokenizer::model);

    py::class_<StreamDecoder>(m, "StreamDecoder",
                              "Incremental detokenizer: never returns half a UTF-8 character.")
        .def(py::init<const Tokenizer&>(), py::arg("tokenizer"), py::keep_alive<1, 2>())
        .def(
            "push", [](StreamDecoder& d, int32_t id) { return py::str(d.push(id)); }, py::arg("id"))
        .def("flush", [](StreamDecoder& d) { return py::str(d.flush()); });

    py::class_<Sampler>(m, "Sampler", "Token sampler (HF order: penalty, temperature, top-k, top-p, min-p).")
        .def(py::init(&make_sampler), py::arg("tokenizer"), py::kw_only(), py::arg("temperature") = 0.8f,
             py::arg("top_k") = 40, py::arg("top_p") = 0.95f, py::arg("min_p") = 0.05f,
             py::arg("repetition_penalty") = 1.0f, py::arg("penalty_last_n") = 64, py::arg("seed") = 0,
             py::keep_alive<1, 2>())
        .def(
            "sample",
            [](Sampler& s, py::array_t<float, py::array::c_style | py::array::forcecast> logits,
               const std::vector<int32_t>& history) {
                if (logits.ndim() != 1)
                    throw std::invalid_argument(fmt("sample: logits must be 1-D, got %d dimensions", (int)logits.ndim()));
                if (logits.shape(0) > INT32_MAX)
                    throw std::invalid_argument(fmt("sample: %lld logits is too many", (long long)logits.shape(0)));
                return s.sample(logits.data(), (int32_t)logits.shape(0), history);
            },
            py::arg("logits"), py::arg("history") = std::vector<int32_t>())
        .def("reseed", &Sampler::reseed, py::arg("seed"));
}

}  // namespace tg
