// Kernel launchers of the rasterizer (raw device pointers; the torch glue lives in rasterize_points.cu).
//
// Shape notation: P Gaussians, M SH coefficients per Gaussian (D = active SH degree, (D + 1)^2 <= M),
// R = number of (tile, Gaussian) pairs = sum of tiles_touched, H x W image, grid = (ceil(W / 16), ceil(H / 16))
// tiles. "(P, 3) float" is a contiguous row-major block of P * 3 floats; "(P,) float4" is P packed float4s.
// Per-pixel arrays are indexed by pix_id = y * W + x; colour images are channel-major (3, H, W).
// All pointers are device pointers unless noted.
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
// A culled Gaussian gets radii = 0 and tiles_touched = 0; its other outputs may be left unwritten.
void preprocess(int P, int D, int M,
                const float* means,           // (P, 3) float: world-space means
                const float* scales,          // (P, 3) float: per-axis scales; nullptr when cov3D_precomp is set
                float scale_modifier,
                const float* rotations,       // (P, 4) float: quaternions (w, x, y, z), used as given (not
                                              //   normalised); nullptr when cov3D_precomp is set
                const float* opacities,       // (P,) float: opacities (the (P, 1) tensor)
                const float* shs,             // (P, M, 3) float: SH coefficients, DC first; nullptr when
                                              //   colors_precomp is set
                const float* colors_precomp,  // (P, 3) float: RGB colours, or nullptr to evaluate the SH
                const float* cov3D_precomp,   // (P, 6) float: 3D covariance upper triangle (xx, xy, xz, yy, yz,
                                              //   zz), or nullptr to build it from scales and rotations
                const Camera& cam, dim3 grid,
                int* radii,                   // out (P,) int: screen-space radius in pixels, 0 when culled
                float2* means2D,              // out (P,) float2: pixel-space centre (pixel i centred at i)
                float* depths,                // out (P,) float: view-space z
                float* cov3Ds,                // out (P, 6) float: 3D covariance upper triangle; written only when
                                              //   cov3D_precomp is nullptr
                float* rgb,                   // out (P, 3) float: colour (SH result + 0.5, clamped at 0)
                uint8_t* clamped,             // out (P, 3) uint8: 1 where an SH colour channel was clamped at 0
                float4* conic_opacity,        // out (P,) float4: inverse 2D covariance (a, b, c) and opacity
                uint32_t* tiles_touched,      // out (P,) uint32: number of tiles the Gaussian is listed in (those
                                              //   of its rectangle it can reach alpha >= 1/255 in), 0 if culled
                cudaStream_t stream);

// One (tile << DEPTH_KEY_BITS | depth key, index) pair per tile a Gaussian is listed in (its reach tiles,
// forward.cu; the key in config.h). With mark_unused (a fixed-capacity list) the same launch gives slots
// [total, capacity) key ~0 (after every real pair in the sort, skipped by tile_ranges) and value 0.
void duplicate_with_keys(int P,
                         const float2* means2D,    // (P,) float2: pixel-space centres (from preprocess)
                         const float* depths,      // (P,) float: view-space z (from preprocess)
                         const float4* conic_opacity,  // (P,) float4: conic and opacity (from preprocess)
                         const uint32_t* offsets,  // (P,) uint32: inclusive prefix sum of tiles_touched
                         const int* radii,         // (P,) int: radii, 0 when culled (skipped)
                         dim3 grid,
                         uint32_t capacity,        // pairs at positions >= capacity are not written (dropped)
                         bool mark_unused,         // also mark the slots [total, capacity) unused
                         uint64_t* keys,           // out (R,) uint64: tile index << DEPTH_KEY_BITS | depth key
                         uint32_t* values,         // out (R,) uint32: Gaussian index
                         uint32_t* pair_count,     // out (1,) uint32 or nullptr: the pairs needed (total)
                         cudaStream_t stream);

// All R slots of a fixed-capacity pair list unused (when there are no Gaussians): key ~0, value 0.
void mark_unused_pairs(int R, uint64_t* keys, uint32_t* values, cudaStream_t stream);

// [start, end) of every tile in the sorted key list (ranges zero-initialised by the caller); keys whose tile
// is >= n_tiles (unused slots) belong to no tile.
void tile_ranges(int R,
                 uint32_t n_tiles,
                 const uint64_t* sorted_keys,  // (R,) uint64: keys sorted ascending (by tile, then depth key)
                 uint2* ranges,                // in/out (grid.x * grid.y,) uint2: [start, end) into the sorted
                                               //   list per tile; must be zeroed (empty tiles stay [0, 0))
                 cudaStream_t stream);

// Per-tile front-to-back blending.
void render(dim3 grid,
            const uint2* ranges,          // (grid.x * grid.y,) uint2: [start, end) of each tile in point_list
            const uint32_t* point_list,   // (R,) uint32: Gaussian indices sorted by (tile, depth); may be nullptr
                                          //   when R == 0
            int W, int H,
            const float2* means2D,        // (P,) float2: pixel-space centres
            const float* rgb,             // (P, 3) float: colours
            const float4* conic_opacity,  // (P,) float4: conic (a, b, c) and opacity
            const float* depths,          // (P,) float: view-space z (read only when out_depth is set)
            const float* bg,              // (3,) float: background colour
            float* final_T,               // out (H*W) float: transmittance left after the last Gaussian
            uint32_t* n_contrib,          // out (H*W) uint32: 1-based position in the tile's list of the last
                                          //   Gaussian that contributed (0: none)
            float* out_color,             // out (3*H*W) float: channel-major image (3, H, W), background blended
            float* out_depth,             // out (H*W) float: alpha-blended view depth, or nullptr (not computed)
            float* out_alpha,             // out (H*W) float: 1 - final_T, or nullptr (not written)
            cudaStream_t stream);

// Reverse-order blending backward: gradients to 2D means (NDC units), conics, opacities, colours, depths.
// The five gradient outputs are accumulated with atomics: the caller zeroes them.
void render_backward(dim3 grid,
                     const uint2* ranges,             // (grid.x * grid.y,) uint2: per-tile [start, end) in point_list
                     const uint32_t* point_list,      // (R,) uint32: sorted Gaussian indices (forward's); may be
                                                      //   nullptr when R == 0
                     int W, int H,
                     const float* bg,                 // (3,) float: background colour
                     const float2* means2D,           // (P,) float2: pixel-space centres (forward's)
                     const float4* conic_opacity,     // (P,) float4: conic (a, b, c) and opacity (forward's)
                     const float* rgb,                // (P, 3) float: colours (forward's)
                     const float* depths,             // (P,) float: view-space z (read only with dL_ddepth_pix)
                     const float* final_T,            // (H*W) float: forward's final transmittance
                     const uint32_t* n_contrib,       // (H*W) uint32: forward's last contributor per pixel
                     const float* dL_dpixels,         // (3*H*W) float: channel-major gradient of the image
                     const float* dL_ddepth_pix,      // (H*W) float: gradient of the depth image, or nullptr
                     const float* dL_dalpha_pix,      // (H*W) float: gradient of the alpha image, or nullptr
                     float* dL_dmean2D,               // in/out (P, 3) float: (x, y, unused) in NDC units
                     float* dL_dconic,                // in/out (P, 3) float: w.r.t. conic (a, b, c)
                     float* dL_dopacity,              // in/out (P,) float
                     float* dL_dcolor,                // in/out (P, 3) float
                     float* dL_ddepth,                // in/out (P,) float: touched only with dL_ddepth_pix
                     cudaStream_t stream);

// Per-Gaussian backward through the 2D/3D covariance, the projection, the depth and the SH colour.
// For a Gaussian with radii == 0 every output row it owns is set to zero.
void preprocess_backward(int P, int D, int M,
                         const float* means,       // (P, 3) float: world-space means
                         const int* radii,         // (P,) int: forward's radii, 0 when culled
                         const float* shs,         // (P, M, 3) float: SH coefficients; nullptr if colors_precomp
                         const uint8_t* clamped,   // (P, 3) uint8: forward's clamped-channel flags
                         const float* scales,      // (P, 3) float: scales; nullptr if cov3D_is_precomp
                         const float* rotations,   // (P, 4) float: quaternions (w, x, y, z); nullptr if
                                                   //   cov3D_is_precomp
                         float scale_modifier,
                         const float* cov3Ds,      // (P, 6) float: 3D covariance upper triangle (precomputed or
                                                   //   forward's)
                         bool cov3D_is_precomp,
                         const Camera& cam,
                         const float* dL_dmean2D,  // (P, 3) float: from render_backward, NDC units (x, y used)
                         const float* dL_dconic,   // (P, 3) float: from render_backward
                         const float* dL_dcolor,   // (P, 3) float: from render_backward (read for the SH path)
                         const float* dL_ddepth,   // (P,) float: from render_backward, or nullptr (no depth grad)
                         bool colors_precomp,
                         float* dL_dmeans,         // out (P, 3) float
                         float* dL_dsh,            // out (P, M, 3) float; nullptr if colors_precomp
                         float* dL_dscales,        // out (P, 3) float; written only if !cov3D_is_precomp
                         float* dL_drots,          // out (P, 4) float; written only if !cov3D_is_precomp
                         float* dL_dcov3D,         // out (P, 6) float; written only if cov3D_is_precomp
                         cudaStream_t stream);

}  // namespace dgr
