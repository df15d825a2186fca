#include "python/bind.h"

namespace py = pybind11;

namespace tg {

void bind_model(py::module_& m) {}

}  // namespace tg
