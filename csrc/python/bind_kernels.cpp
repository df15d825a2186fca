#include "python/bind.h"

namespace py = pybind11;

namespace tg {

void bind_kernels(py::module_& m) {}

}  // namespace tg
