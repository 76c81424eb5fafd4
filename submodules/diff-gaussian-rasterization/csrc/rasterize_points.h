// Torch-facing entry points of the extension (bound in ext.cpp).
//
// Shapes as in rasterizer.h: P Gaussians, M SH coefficients per Gaussian, R (tile, Gaussian) pairs, H x W image,
// n_tiles = ceil(W / 16) * ceil(H / 16). Every tensor is a contiguous CUDA tensor on means3D's device, float32
// unless noted; "empty" means numel() == 0 (the argument is unused / the output not produced).
#pragma once

#include <torch/extension.h>

#include <tuple>
#include <vector>

// Returns (num_rendered, [color, radii, depth, alpha, fbuf, clamped, point_list, ranges, final_T, n_contrib]);
// num_rendered is -1 with a fixed pair_capacity (not read back to the host); depth/alpha are empty unless
// asked for; the rest is saved for the backward pass.
//   color (3, H, W) | radii (P,) int32, 0 when culled | depth (1, H, W) or empty | alpha (1, H, W) or empty |
//   fbuf (16 P,) per-Gaussian state, layout GeometryState in rasterize_points.cu | clamped (P, 3) uint8 |
//   point_list (R,) int32 sorted Gaussian indices (R = pair_capacity when fixed: its unused tail is in no
//   tile) | ranges (n_tiles, 2) int32 [start, end) per tile |
//   final_T (H, W) | n_contrib (H, W) int32.
std::tuple<int64_t, std::vector<torch::Tensor>> rasterize_forward(
    const torch::Tensor& background,     // (3,): background colour
    const torch::Tensor& means3D,        // (P, 3): world-space means
    const torch::Tensor& colors,         // (P, 3) precomputed RGB, or empty to evaluate sh
    const torch::Tensor& opacity,        // (P, 1)
    const torch::Tensor& scales,         // (P, 3); unused when cov3D_precomp is given
    const torch::Tensor& rotations,      // (P, 4) quaternions (w, x, y, z); unused when cov3D_precomp is given
    double scale_modifier,
    const torch::Tensor& cov3D_precomp,  // (P, 6) covariance upper triangle, or empty
    const torch::Tensor& viewmatrix,     // (4, 4): transposed (column-major) world-to-view
    const torch::Tensor& projmatrix,     // (4, 4): transposed (column-major) full projection
    double tan_fovx, double tan_fovy, int64_t image_height, int64_t image_width,
    const torch::Tensor& sh,             // (P, M, 3) SH coefficients; unused when colors is given
    int64_t degree,
    const torch::Tensor& campos,         // (3,): camera centre in world space
    bool prefiltered, bool return_depth, bool return_alpha, bool debug,
    int64_t pair_capacity,               // 0: size the (tile, Gaussian) pair list exactly (one host sync);
                                         //   N > 0: N slots, no host sync; pairs past N are dropped
    const torch::Tensor& pair_count);    // (1,) int32 written with the pairs needed on the device, or empty

// Returns [dL_dmeans2D, dL_dcolors, dL_dopacity, dL_dmeans3D, dL_dcov3D, dL_dsh, dL_dscales, dL_drotations]:
//   (P, 3) NDC units, z unused | (P, 3) | (P, 1) | (P, 3) | (P, 6) or empty | (P, M, 3) or empty |
//   (P, 3) or empty | (P, 4) or empty (cov3D when it was precomputed, else scales and rotations).
std::vector<torch::Tensor> rasterize_backward(
    const torch::Tensor& background,     // (3,)
    const torch::Tensor& means3D,        // (P, 3)
    const torch::Tensor& radii,          // (P,) int32: forward's
    const torch::Tensor& colors,         // (P, 3) or empty, as in the forward
    const torch::Tensor& scales,         // (P, 3); unused when cov3D_precomp is given
    const torch::Tensor& rotations,      // (P, 4); unused when cov3D_precomp is given
    double scale_modifier,
    const torch::Tensor& cov3D_precomp,  // (P, 6) or empty, as in the forward
    const torch::Tensor& viewmatrix,     // (4, 4) column-major
    const torch::Tensor& projmatrix,     // (4, 4) column-major
    double tan_fovx, double tan_fovy,
    const torch::Tensor& dL_dout_color,  // (3, H, W): gradient of the image
    const torch::Tensor& dL_dout_depth,  // (1, H, W) or empty
    const torch::Tensor& dL_dout_alpha,  // (1, H, W) or empty
    const torch::Tensor& sh,             // (P, M, 3); unused when colors is given
    int64_t degree,
    const torch::Tensor& campos,         // (3,)
    const torch::Tensor& fbuf,           // (16 P,): forward's per-Gaussian state (GeometryState layout)
    const torch::Tensor& clamped,        // (P, 3) uint8: forward's
    const torch::Tensor& point_list,     // (R,) int32: forward's
    const torch::Tensor& ranges,         // (n_tiles, 2) int32: forward's
    const torch::Tensor& final_T,        // (H, W): forward's
    const torch::Tensor& n_contrib,      // (H, W) int32: forward's
    bool debug);

// Boolean mask of Gaussians in front of the near cull plane (view z > 0.2).
torch::Tensor mark_visible(const torch::Tensor& means3D,      // (P, 3)
                           const torch::Tensor& viewmatrix);  // (4, 4) column-major; returns (P,) bool
