// Torch-facing entry points of the extension (bound in ext.cpp).
#pragma once

#include <torch/extension.h>

#include <tuple>
#include <vector>

// Returns (num_rendered, [color, radii, depth, alpha, fbuf, clamped, point_list, ranges, final_T, n_contrib]);
// depth/alpha are empty unless asked for; the rest is saved for the backward pass.
std::tuple<int64_t, std::vector<torch::Tensor>> rasterize_forward(
    const torch::Tensor& background, const torch::Tensor& means3D, const torch::Tensor& colors,
    const torch::Tensor& opacity, const torch::Tensor& scales, const torch::Tensor& rotations, double scale_modifier,
    const torch::Tensor& cov3D_precomp, const torch::Tensor& viewmatrix, const torch::Tensor& projmatrix,
    double tan_fovx, double tan_fovy, int64_t image_height, int64_t image_width, const torch::Tensor& sh,
    int64_t degree, const torch::Tensor& campos, bool prefiltered, bool return_depth, bool return_alpha, bool debug);

// Returns [dL_dmeans2D, dL_dcolors, dL_dopacity, dL_dmeans3D, dL_dcov3D, dL_dsh, dL_dscales, dL_drotations].
std::vector<torch::Tensor> rasterize_backward(
    const torch::Tensor& background, const torch::Tensor& means3D, const torch::Tensor& radii,
    const torch::Tensor& colors, const torch::Tensor& scales, const torch::Tensor& rotations, double scale_modifier,
    const torch::Tensor& cov3D_precomp, const torch::Tensor& viewmatrix, const torch::Tensor& projmatrix,
    double tan_fovx, double tan_fovy, const torch::Tensor& dL_dout_color, const torch::Tensor& dL_dout_depth,
    const torch::Tensor& dL_dout_alpha, const torch::Tensor& sh, int64_t degree, const torch::Tensor& campos,
    const torch::Tensor& fbuf, const torch::Tensor& clamped, const torch::Tensor& point_list,
    const torch::Tensor& ranges, const torch::Tensor& final_T, const torch::Tensor& n_contrib, bool debug);

// Boolean mask of Gaussians in front of the near cull plane (view z > 0.2).
torch::Tensor mark_visible(const torch::Tensor& means3D, const torch::Tensor& viewmatrix);
