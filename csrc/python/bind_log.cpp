// Binding of the core's log: lines go to one Python callable (the package passes logging's handler).
#include "log.h"
#include "python/bind.h"

namespace py = pybind11;

namespace tg {

// The Python callable; leaked on purpose so that it is never destroyed after the interpreter is gone.
static py::object* g_handler = nullptr;

static void forward(int level, const std::string& message) {
    if (!Py_IsInitialized()) return;
    py::gil_scoped_acquire gil;
    if (g_handler == nullptr || g_handler->is_none()) return;
    try {
        (*g_handler)(level, py::bytes(message).attr("decode")("utf-8", "replace"));
    } catch (py::error_already_set& e) {
        e.discard_as_unraisable("tinygptv_native log handler");
    }
}

void bind_log(py::module_& m) {
    m.def("set_log_handler", [](py::object handler) {
        if (g_handler == nullptr) g_handler = new py::object();
        *g_handler = handler;
        set_log_callback(handler.is_none() ? nullptr : &forward);
    }, py::arg("handler"), "Send the core's log lines to handler(level: int, message: str), or nowhere (None). "
       "It may be called from any thread.");
    m.def("set_log_level", &set_log_threshold, py::arg("level"),
          "Drop log lines below this level (Python logging values: 10 debug, 20 info, 30 warning, 40 error).");
    m.def("log_level", &log_threshold, "The current threshold of the core's log.");
    m.def("log", [](int level, const std::string& message) {
        py::gil_scoped_release nogil;
        log_message((LogLevel)level, message);
    }, py::arg("level"), py::arg("message"), "Emit a line through the core's log (as C++ code does).");
}

}  // namespace tg
