// Kernel launchers of the rasterizer (raw device pointers; the torch glue lives in rasterize_points.cu).
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace dgr {

struct Camera {
  const float* view;  // 16 floats, column-major world-to-view
  const float* proj;  // 16 floats, column-major full projection F = P V
  const float* campos;  // 3 floats
  int width, height;
  float tanfovx, tanfovy, focal_x, focal_y;
};

// Per-Gaussian preprocessing: culling, covariances, conic, radius, pixel centre, tile count, colour, depth.
void preprocess(int P, int D, int M, const float* means, const float* scales, float scale_modifier,
                const float* rotations, const float* opacities, const float* shs, const float* colors_precomp,
                const float* cov3D_precomp, const Camera& cam, dim3 grid, int* radii, float2* means2D,
                float* depths, float* cov3Ds, float* rgb, uint8_t* clamped, float4* conic_opacity,
                uint32_t* tiles_touched, cudaStream_t stream);

// One (tile << 32 | depth bits, index) pair per tile a Gaussian touches.
void duplicate_with_keys(int P, const float2* means2D, const float* depths, const uint32_t* offsets,
                         const int* radii, dim3 grid, uint64_t* keys, uint32_t* values, cudaStream_t stream);

// [start, end) of every tile in the sorted key list (ranges zero-initialised by the caller).
void tile_ranges(int R, const uint64_t* sorted_keys, uint2* ranges, cudaStream_t stream);

// Per-tile front-to-back blending.
void render(dim3 grid, const uint2* ranges, const uint32_t* point_list, int W, int H, const float2* means2D,
            const float* rgb, const float4* conic_opacity, const float* depths, const float* bg,
            float* final_T, uint32_t* n_contrib, float* out_color, float* out_depth, float* out_alpha,
            cudaStream_t stream);

// Reverse-order blending backward: gradients to 2D means (NDC units), conics, opacities, colours, depths.
void render_backward(dim3 grid, const uint2* ranges, const uint32_t* point_list, int W, int H,
                     const float* bg, const float2* means2D, const float4* conic_opacity, const float* rgb,
                     const float* depths, const float* final_T, const uint32_t* n_contrib,
                     const float* dL_dpixels, const float* dL_ddepth_pix, const float* dL_dalpha_pix,
                     float* dL_dmean2D, float* dL_dconic, float* dL_dopacity, float* dL_dcolor,
                     float* dL_ddepth, cudaStream_t stream);

// Per-Gaussian backward through the 2D/3D covariance, the projection, the depth and the SH colour.
void preprocess_backward(int P, int D, int M, const float* means, const int* radii, const float* shs,
                         const uint8_t* clamped, const float* scales, const float* rotations,
                         float scale_modifier, const float* cov3Ds, bool cov3D_is_precomp,
                         const Camera& cam, const float* dL_dmean2D, const float* dL_dconic,
                         const float* dL_dcolor, const float* dL_ddepth, bool colors_precomp,
                         float* dL_dmeans, float* dL_dsh, float* dL_dscales, float* dL_drots,
                         float* dL_dcov3D, cudaStream_t stream);

}  // namespace dgr
