#include "python/bind.h"

namespace py = pybind11;

namespace tg {

void bind_tokenizer(py::module_& m) {}

}  // namespace tg
