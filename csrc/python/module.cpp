#include "python/bind.h"

#include <cstring>

#include "errors.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
    m.doc() = "tinygptv_native native core";
    tg::bind_errors(m);
    tg::bind_kernels(m);
    tg::bind_tokenizer(m);
    tg::bind_model(m);
    tg::bind_context(m);
    tg::bind_generate(m);
    tg::bind_log(m);
    // Hooks for the tests, benchmarks and tools, kept apart from the product API above; the leading
    // underscore keeps them out of the module's public names (and of its stub, _core.pyi).
    py::module_ testing = m.def_submodule("_testing", "Test and benchmark hooks of the native core (not API).");
    tg::bind_kernel_hooks(testing);
    tg::bind_bench(testing);
    tg::bind_vulkan(m, testing);
}

namespace tg {

// Error text may quote bytes from a hostile file: decode it leniently so the Python exception is
// always the typed one (never a UnicodeDecodeError raised while reporting the problem).
static py::str message(const std::exception& e) {
    const char* w = e.what();
    PyObject* s = PyUnicode_DecodeUTF8(w, (Py_ssize_t)std::strlen(w), "replace");
    if (!s) throw py::error_already_set();
    return py::reinterpret_steal<py::str>(s);
}

void bind_errors(py::module_& m) {
    // Exception classes: the Python package re-exports them. All are ValueErrors except the
    // context overflow, which is a RuntimeError-like condition of the conversation state.
    static py::exception<GGUFError> gguf_error(m, "GGUFError", PyExc_ValueError);
    static py::exception<ModelError> model_error(m, "ModelError", PyExc_ValueError);
    static py::exception<TokenizerError> tok_error(m, "TokenizerError", PyExc_ValueError);
    static py::exception<ContextOverflow> ctx_error(m, "ContextOverflowError", PyExc_ValueError);
    // The GPU backend's failures are the device's or the driver's, not the input's: a RuntimeError.
    static py::exception<VulkanError> vulkan_error(m, "VulkanError", PyExc_RuntimeError);
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const GGUFError& e) {
            py::set_error(gguf_error, message(e));
        } catch (const ModelError& e) {
            py::set_error(model_error, message(e));
        } catch (const TokenizerError& e) {
            py::set_error(tok_error, message(e));
        } catch (const ContextOverflow& e) {
            py::set_error(ctx_error, message(e));
        } catch (const VulkanError& e) {
            py::set_error(vulkan_error, message(e));
        } catch (const std::invalid_argument& e) {
            py::set_error(PyExc_ValueError, message(e));
        } catch (const std::bad_alloc&) {
            PyErr_SetString(PyExc_MemoryError, "out of memory in tinygptv_native core");
        }
    });
}

}  // namespace tg
