// Machine measurements for the benchmarks (submodule _core._testing):
//   read_bandwidth(bytes, n_threads) -> GB/s
#include "membench.h"
#include "python/bind.h"

namespace py = pybind11;

namespace tg {

void bind_bench(py::module_& t) {
    t.def("read_bandwidth", [](size_t bytes, int n_threads) {
        py::gil_scoped_release nogil;
        return read_bandwidth(bytes, n_threads);
    }, py::arg("bytes"), py::arg("n_threads"), "memory read bandwidth in GB/s (best of 4 passes)");
}

}  // namespace tg
