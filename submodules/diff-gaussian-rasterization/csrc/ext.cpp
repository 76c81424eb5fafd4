// Python bindings of diff_gaussian_rasterization._C.
#include <torch/extension.h>

#include "rasterize_points.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rasterize_gaussians", &rasterize_forward, "Gaussian rasterization forward (SPEC section 7)");
  m.def("rasterize_gaussians_backward", &rasterize_backward, "Gaussian rasterization backward");
  m.def("mark_visible", &mark_visible, "View-space z > 0.2 per Gaussian");
}
