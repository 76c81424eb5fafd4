// Python bindings of fused_ops._C: HyperGaussians' conditional mean, Adam in one launch, LPIPS' distance,
// a 2x2 max-pool with one-byte choices.
#include <torch/extension.h>

#include <vector>

torch::Tensor conditional_mean_forward(const torch::Tensor& mean, const torch::Tensor& log_diag,
                                       const torch::Tensor& lower, const torch::Tensor& l21, const torch::Tensor& z);
std::vector<torch::Tensor> conditional_mean_backward(const torch::Tensor& grad_out, const torch::Tensor& mean,
                                                     const torch::Tensor& log_diag, const torch::Tensor& lower,
                                                     const torch::Tensor& l21, const torch::Tensor& z);

void adam_step(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& grads,
               const std::vector<torch::Tensor>& exp_avgs, const std::vector<torch::Tensor>& exp_avg_sqs,
               const std::vector<torch::Tensor>& steps, const std::vector<double>& lrs, double beta1, double beta2,
               double eps);

torch::Tensor lpips_distance_forward(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& w,
                                     double eps);
torch::Tensor lpips_distance_backward(const torch::Tensor& grad_d, const torch::Tensor& a, const torch::Tensor& b,
                                      const torch::Tensor& w, double eps);

std::vector<torch::Tensor> max_pool2x2_forward(const torch::Tensor& x, int64_t keep);
torch::Tensor max_pool2x2_backward(const torch::Tensor& grad_y, const torch::Tensor& choice);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lpips_distance_forward", &lpips_distance_forward, "LPIPS' per-pixel layer distance, fused");
  m.def("lpips_distance_backward", &lpips_distance_backward, "its gradient with respect to the first map");
  m.def("max_pool2x2_forward", &max_pool2x2_forward,
        "2x2 stride-2 max-pool of a channels-last map, each output's choice in one byte (first `keep` images)");
  m.def("max_pool2x2_backward", &max_pool2x2_backward, "its gradient from the kept choices");
  m.def("adam_step", &adam_step, "Adam over all given tensors in one launch (step counts already incremented)");
  m.def("conditional_mean_forward", &conditional_mean_forward,
        "HyperGaussians' conditional mean mu_o - L11^-T L21^T (z - mu_i), fused (docs/maths.md section 5)");
  m.def("conditional_mean_backward", &conditional_mean_backward,
        "its gradients: (mean, log_diag, lower, l21); dL/dz = -sum over blocks of dL/dmu_i");
}
