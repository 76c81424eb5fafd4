// Python bindings of fused_ops._C: HyperGaussians' conditional mean, Adam in one launch, LPIPS' distance,
// a 2x2 max-pool with one-byte choices, LPIPS' float16 pieces around cuDNN's convolutions, one frame's
// Gaussians from FLAME's unskinned mesh (inference).
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

torch::Tensor lpips_half_prep(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& shift,
                              const torch::Tensor& scale, int64_t channels);
torch::Tensor lpips_half_prep_backward(const torch::Tensor& g, const torch::Tensor& scale, const torch::Tensor& amax,
                                       const torch::Tensor& gout);
void lpips_half_distance(const torch::Tensor& feat, const torch::Tensor& w, double eps, torch::Tensor& d,
                         int64_t offset, torch::Tensor& amax);
torch::Tensor lpips_half_backward(const torch::Tensor& feat, const torch::Tensor& w, double eps,
                                  const torch::Tensor& gout, const torch::Tensor& amax,
                                  const c10::optional<torch::Tensor>& g_next,
                                  const c10::optional<torch::Tensor>& choice);
void lpips_half_relu_mask(torch::Tensor& g, const torch::Tensor& y);

std::vector<torch::Tensor> frame_gaussians(const torch::Tensor& v_posed, const torch::Tensor& transforms,
                                           const torch::Tensor& lbs_weights, const torch::Tensor& eyelid_dirs,
                                           const torch::Tensor& eyelids, const torch::Tensor& vertex_ids,
                                           const torch::Tensor& bary, const torch::Tensor& d_xyz,
                                           const torch::Tensor& d_rot, const torch::Tensor& d_scale,
                                           const torch::Tensor& rotation, const torch::Tensor& log_scale);
std::vector<torch::Tensor> flame_joints(const torch::Tensor& pose_head, const torch::Tensor& pose_tail,
                                        const torch::Tensor& expression, const torch::Tensor& J_rest,
                                        const torch::Tensor& J_dirs, const torch::Tensor& parents);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lpips_distance_forward", &lpips_distance_forward, "LPIPS' per-pixel layer distance, fused");
  m.def("lpips_distance_backward", &lpips_distance_backward, "its gradient with respect to the first map");
  m.def("max_pool2x2_forward", &max_pool2x2_forward,
        "2x2 stride-2 max-pool of a channels-last map, each output's choice in one byte (first `keep` images)");
  m.def("max_pool2x2_backward", &max_pool2x2_backward, "its gradient from the kept choices");
  m.def("lpips_half_prep", &lpips_half_prep, "LPIPS' scaled input of both images, float16 channels-last");
  m.def("lpips_half_prep_backward", &lpips_half_prep_backward, "the image gradient from the first conv's input");
  m.def("lpips_half_distance", &lpips_half_distance,
        "a layer's per-pixel distance from the float16 batch, and the largest feature gradient (amax)");
  m.def("lpips_half_backward", &lpips_half_backward,
        "a layer's scaled feature gradient plus the next slice's pooled gradient, ReLU-masked, in one pass");
  m.def("lpips_half_relu_mask", &lpips_half_relu_mask, "g *= (y > 0) in place (float16 channels-last)");
  m.def("frame_gaussians", &frame_gaussians,
        "a frame's Gaussian means, rotations and scales from FLAME's unskinned mesh and the heads' outputs");
  m.def("flame_joints", &flame_joints,
        "FLAME's per-frame joint work: the blendshape GEMV's coefficients and the skinning transforms");
  m.def("adam_step", &adam_step, "Adam over all given tensors in one launch (step counts already incremented)");
  m.def("conditional_mean_forward", &conditional_mean_forward,
        "HyperGaussians' conditional mean mu_o - L11^-T L21^T (z - mu_i), fused (docs/maths.md section 5)");
  m.def("conditional_mean_backward", &conditional_mean_backward,
        "its gradients: (mean, log_diag, lower, l21); dL/dz = -sum over blocks of dL/dmu_i");
}
