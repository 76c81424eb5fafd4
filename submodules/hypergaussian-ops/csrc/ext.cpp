// Python bindings of hypergaussian_ops._C.
#include <torch/extension.h>

#include <vector>

torch::Tensor conditional_mean_forward(const torch::Tensor& mean, const torch::Tensor& log_diag,
                                       const torch::Tensor& lower, const torch::Tensor& l21, const torch::Tensor& z);
std::vector<torch::Tensor> conditional_mean_backward(const torch::Tensor& grad_out, const torch::Tensor& mean,
                                                     const torch::Tensor& log_diag, const torch::Tensor& lower,
                                                     const torch::Tensor& l21, const torch::Tensor& z);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("conditional_mean_forward", &conditional_mean_forward,
        "HyperGaussians' conditional mean mu_o - L11^-T L21^T (z - mu_i), fused (docs/maths.md section 5)");
  m.def("conditional_mean_backward", &conditional_mean_backward,
        "its gradients: (mean, log_diag, lower, l21); dL/dz = -sum over blocks of dL/dmu_i");
}
