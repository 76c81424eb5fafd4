// Forward kernels: per-Gaussian preprocessing, key duplication, tile ranges and per-tile blending
// (docs/maths.md section 7). Written from the specification; structure follows the tile-based splatting design.
#include <cooperative_groups.h>

#include "config.h"
#include "rasterizer.h"
#include "tile_batch.h"
#include "vec_math.h"

namespace cg = cooperative_groups;

namespace dgr {

// Colour of one Gaussian from its SH coefficients (sh: M x 3, DC first) in direction dir (unit), + 0.5,
// clamped at 0; clamped[c] records which channels were clamped (they get no gradient).
__device__ float3 eval_sh_color(int deg, const float* sh, float3 dir, uint8_t* clamped) {
  float3 r = make_float3(SH_C0 * sh[0], SH_C0 * sh[1], SH_C0 * sh[2]);
  if (deg > 0) {
    const float x = dir.x, y = dir.y, z = dir.z;
#define SH(k) make_float3(sh[3 * (k)], sh[3 * (k) + 1], sh[3 * (k) + 2])
    r = f3_sub(f3_add(f3_sub(r, f3_scale(SH(1), SH_C1 * y)), f3_scale(SH(2), SH_C1 * z)), f3_scale(SH(3), SH_C1 * x));
    if (deg > 1) {
      const float xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
      r = f3_add(r, f3_scale(SH(4), SH_C2[0] * xy));
      r = f3_add(r, f3_scale(SH(5), SH_C2[1] * yz));
      r = f3_add(r, f3_scale(SH(6), SH_C2[2] * (2.f * zz - xx - yy)));
      r = f3_add(r, f3_scale(SH(7), SH_C2[3] * xz));
      r = f3_add(r, f3_scale(SH(8), SH_C2[4] * (xx - yy)));
      if (deg > 2) {
        r = f3_add(r, f3_scale(SH(9), SH_C3[0] * y * (3.f * xx - yy)));
        r = f3_add(r, f3_scale(SH(10), SH_C3[1] * xy * z));
        r = f3_add(r, f3_scale(SH(11), SH_C3[2] * y * (4.f * zz - xx - yy)));
        r = f3_add(r, f3_scale(SH(12), SH_C3[3] * z * (2.f * zz - 3.f * xx - 3.f * yy)));
        r = f3_add(r, f3_scale(SH(13), SH_C3[4] * x * (4.f * zz - xx - yy)));
        r = f3_add(r, f3_scale(SH(14), SH_C3[5] * z * (xx - yy)));
        r = f3_add(r, f3_scale(SH(15), SH_C3[6] * x * (xx - 3.f * yy)));
      }
    }
#undef SH
  }
  r.x += 0.5f;
  r.y += 0.5f;
  r.z += 0.5f;
  clamped[0] = r.x < 0.f;
  clamped[1] = r.y < 0.f;
  clamped[2] = r.z < 0.f;
  return make_float3(fmaxf(r.x, 0.f), fmaxf(r.y, 0.f), fmaxf(r.z, 0.f));
}

// Sigma = R S S^T R^T with S = diag(scale * modifier); upper triangle (00, 01, 02, 11, 12, 22).
__device__ void cov3d_from_scale_rot(float3 s, float mod, float4 q, float* cov) {
  float R[9];
  quat_to_rotmat(q, R);
  const float sx = mod * s.x, sy = mod * s.y, sz = mod * s.z;
  // M = R S: column j scaled by s_j. Sigma_ij = sum_k M_ik M_jk.
  float M[9] = {R[0] * sx, R[1] * sy, R[2] * sz, R[3] * sx, R[4] * sy, R[5] * sz, R[6] * sx, R[7] * sy, R[8] * sz};
  cov[0] = M[0] * M[0] + M[1] * M[1] + M[2] * M[2];
  cov[1] = M[0] * M[3] + M[1] * M[4] + M[2] * M[5];
  cov[2] = M[0] * M[6] + M[1] * M[7] + M[2] * M[8];
  cov[3] = M[3] * M[3] + M[4] * M[4] + M[5] * M[5];
  cov[4] = M[3] * M[6] + M[4] * M[7] + M[5] * M[8];
  cov[5] = M[6] * M[6] + M[7] * M[7] + M[8] * M[8];
}

// 2D covariance (a, b, c) by the EWA Jacobian at the view-space mean t, with the guard-band clamp and the
// +0.3 low-pass. cov2D = T Sigma T^T, T = J W (rows T0, T1).
__device__ float3 cov2d_ewa(float3 t, float fx, float fy, float tanfovx, float tanfovy, const float* cov,
                            const float* view) {
  const float limx = FRUSTUM_GUARD * tanfovx, limy = FRUSTUM_GUARD * tanfovy;
  const float txtz = t.x / t.z, tytz = t.y / t.z;
  const float tx = fminf(limx, fmaxf(-limx, txtz)) * t.z;
  const float ty = fminf(limy, fmaxf(-limy, tytz)) * t.z;
  const float tz2 = t.z * t.z;
  const float J00 = fx / t.z, J02 = -(fx * tx) / tz2;
  const float J11 = fy / t.z, J12 = -(fy * ty) / tz2;
  // W[i][j] = view rotation row i, column j = view[4 * j + i].
  const float T0[3] = {J00 * view[0] + J02 * view[2], J00 * view[4] + J02 * view[6], J00 * view[8] + J02 * view[10]};
  const float T1[3] = {J11 * view[1] + J12 * view[2], J11 * view[5] + J12 * view[6], J11 * view[9] + J12 * view[10]};
  const float S[9] = {cov[0], cov[1], cov[2], cov[1], cov[3], cov[4], cov[2], cov[4], cov[5]};
  float u0[3], u1[3];
#pragma unroll
  for (int j = 0; j < 3; j++) {
    u0[j] = T0[0] * S[j] + T0[1] * S[3 + j] + T0[2] * S[6 + j];
    u1[j] = T1[0] * S[j] + T1[1] * S[3 + j] + T1[2] * S[6 + j];
  }
  const float a = u0[0] * T0[0] + u0[1] * T0[1] + u0[2] * T0[2];
  const float b = u1[0] * T0[0] + u1[1] * T0[1] + u1[2] * T0[2];  // element (1, 0), the original's
  const float c = u1[0] * T1[0] + u1[1] * T1[1] + u1[2] * T1[2];
  return make_float3(a + LOWPASS, b, c + LOWPASS);
}

// Tiles where a Gaussian is listed: the original's rectangle (tile_rect) cut to the tiles where it can reach
// alpha >= 1/255 (docs/maths.md section 7, "reach"). With the conic (a, b, c), alpha = o exp(-q/2) >= 1/255
// needs q = a dx^2 + 2 b dx dy + c dy^2 <= k = 2 ln(255 o); a tile is kept when the minimum of q over its
// pixel centres is within k (plus a 2 % + 0.02 margin for float rounding). Every pixel of a dropped tile skips
// the Gaussian under the 1/255 rule anyway, so image, depth, alpha and gradients are unchanged; fewer pairs
// are sorted and blended (on the raster oracle's head scene 164k -> about 68k).
//
// preprocess (which counts the tiles) and duplicate (which lists them) call reach_rect and tile_in_reach on
// the same stored values; __noinline__ makes each one compiled function, so count and list cannot disagree
// through a different floating-point contraction at two inlining sites.

// Minimum over x in [x0, x1] of a x^2 + 2 b x y + c y^2 (a > 0): at the vertex -b y / a clamped to the edge.
static __device__ __forceinline__ float edge_min_q(float a, float b, float c, float x0, float x1, float y) {
  const float x = fminf(x1, fmaxf(x0, -b * y / a));
  return a * x * x + 2.f * b * x * y + c * y * y;
}

// Whether tile (tx, ty) has a pixel centre where the Gaussian centred at p with conic co.xyz and reach k can
// pass the 1/255 test.
static __device__ __noinline__ bool tile_in_reach(float2 p, float4 co, float k, int tx, int ty) {
  const float a = co.x, b = co.y, c = co.z;
  if (!(a > 0.f) || !(c > 0.f)) return true;  // not positive definite in float: keep (conservative)
  const float x0 = (float)(tx * TILE_X) - p.x, x1 = x0 + (float)(TILE_X - 1);
  const float y0 = (float)(ty * TILE_Y) - p.y, y1 = y0 + (float)(TILE_Y - 1);
  if (x0 <= 0.f && 0.f <= x1 && y0 <= 0.f && 0.f <= y1) return true;  // the centre lies in the tile
  const float q = fminf(fminf(edge_min_q(a, b, c, x0, x1, y0), edge_min_q(a, b, c, x0, x1, y1)),
                        fminf(edge_min_q(c, b, a, y0, y1, x0), edge_min_q(c, b, a, y0, y1, x1)));
  return !(q > k * 1.02f + 0.02f);  // NaN keeps the tile
}

// The tile rectangle [rmin, rmax) to scan for a Gaussian with pixel centre p, integer radius r and
// conic/opacity co: tile_rect cut to the bounding box of the ellipse q <= k. Returns the reach
// k = 2 (ln(255 o) + 0.01); k <= 0 (opacity below 1/255) means no pixel ever blends it.
static __device__ __noinline__ float reach_rect(float2 p, float r, float4 co, dim3 grid, int2& rmin, int2& rmax) {
  tile_rect(p, r, grid, rmin, rmax);
  const float k = 2.f * (logf(255.f * co.w) + 0.01f);
  const float det = co.x * co.z - co.y * co.y;  // of the conic, 1 / det(Sigma')
  const float hx = sqrtf(k * co.z / det) * 1.01f + 0.01f;  // half-extents of the ellipse
  const float hy = sqrtf(k * co.x / det) * 1.01f + 0.01f;
  if (k > 0.f && det > 0.f && isfinite(hx) && isfinite(hy)) {
    // tiles holding a pixel centre within [p - h, p + h]: ceil((p - h - 15) / 16) <= t <= floor((p + h) / 16)
    const float gx = (float)grid.x, gy = (float)grid.y;
    rmin.x = max(rmin.x, (int)fminf(gx, fmaxf(0.f, ceilf((p.x - hx - (float)(TILE_X - 1)) / (float)TILE_X))));
    rmin.y = max(rmin.y, (int)fminf(gy, fmaxf(0.f, ceilf((p.y - hy - (float)(TILE_Y - 1)) / (float)TILE_Y))));
    rmax.x = min(rmax.x, (int)fminf(gx, fmaxf(0.f, floorf((p.x + hx) / (float)TILE_X) + 1.f)));
    rmax.y = min(rmax.y, (int)fminf(gy, fmaxf(0.f, floorf((p.y + hy) / (float)TILE_Y) + 1.f)));
  }
  return k;
}

constexpr unsigned FULL_MASK = 0xffffffffu;

// Lane src's Gaussian (centre, conic/opacity, reach k, tile rectangle) in every lane of the warp.
struct WarpRect {
  float2 p;
  float4 co;
  float k;
  int x0, y0, w, tiles;  // rectangle origin, width and tile count (0 when empty)
};

__device__ __forceinline__ WarpRect broadcast_rect(int src, float2 p, float4 co, float k, int2 rmin, int2 rmax) {
  WarpRect r;
  r.p = make_float2(__shfl_sync(FULL_MASK, p.x, src), __shfl_sync(FULL_MASK, p.y, src));
  r.co = make_float4(__shfl_sync(FULL_MASK, co.x, src), __shfl_sync(FULL_MASK, co.y, src),
                     __shfl_sync(FULL_MASK, co.z, src), __shfl_sync(FULL_MASK, co.w, src));
  r.k = __shfl_sync(FULL_MASK, k, src);
  r.x0 = __shfl_sync(FULL_MASK, rmin.x, src);
  r.y0 = __shfl_sync(FULL_MASK, rmin.y, src);
  r.w = __shfl_sync(FULL_MASK, rmax.x, src) - r.x0;
  const int h = __shfl_sync(FULL_MASK, rmax.y, src) - r.y0;
  r.tiles = r.w > 0 && h > 0 ? r.w * h : 0;
  return r;
}

// One Gaussian's preprocessing (cull, covariances, conic, radius, colour, depth); true when it is kept, with
// its pixel centre, conic/opacity and radius for the tile count.
__device__ __forceinline__ bool preprocess_gaussian(
    int idx, int D, int M, const float* __restrict__ means, const float* __restrict__ scales, float scale_modifier,
    const float4* __restrict__ rotations, const float* __restrict__ opacities, const float* __restrict__ shs,
    const float* __restrict__ colors_precomp, const float* __restrict__ cov3D_precomp, const Camera& cam,
    dim3 grid, int* __restrict__ radii, float2* __restrict__ means2D, float* __restrict__ depths,
    float* __restrict__ cov3Ds, float* __restrict__ rgb, uint8_t* __restrict__ clamped,
    float4* __restrict__ conic_opacity, float2& pix_out, float4& co_out, float& radius_out) {
  const float3 m = load_f3(means, idx);
  if (!finite3(m)) return false;
  const float3 pv = xform_point_4x3(cam.view, m);
  if (!(pv.z > NEAR_CULL) || !finite3(pv)) return false;  // also rejects NaN depth

  const float opacity = opacities[idx];
  if (!finite_f(opacity)) return false;

  float cov[6];
  if (cov3D_precomp != nullptr) {
#pragma unroll
    for (int k = 0; k < 6; k++) cov[k] = cov3D_precomp[6 * idx + k];
  } else {
    cov3d_from_scale_rot(load_f3(scales, idx), scale_modifier, rotations[idx], cov);
#pragma unroll
    for (int k = 0; k < 6; k++) cov3Ds[6 * idx + k] = cov[k];
  }
  const float3 c2 = cov2d_ewa(pv, cam.focal_x, cam.focal_y, cam.tanfovx, cam.tanfovy, cov, cam.view);
  const float det = c2.x * c2.z - c2.y * c2.y;
  if (!(det > 0.f) || !isfinite(det) || !finite3(c2)) return false;
  const float det_inv = 1.f / det;
  const float3 conic = make_float3(c2.z * det_inv, -c2.y * det_inv, c2.x * det_inv);

  const float mid = 0.5f * (c2.x + c2.z);
  const float root = sqrtf(fmaxf(0.1f, mid * mid - det));
  const float lambda1 = mid + root, lambda2 = mid - root;
  const float radius = ceilf(3.f * sqrtf(fmaxf(lambda1, lambda2)));
  if (!isfinite(radius) || radius > 1.0e9f) return false;

  const float4 ph = xform_point_4x4(cam.proj, m);
  const float pw = 1.0f / (ph.w + W_EPS);
  const float2 pix = make_float2(ndc_to_pixel(ph.x * pw, cam.width), ndc_to_pixel(ph.y * pw, cam.height));
  if (!isfinite(pix.x) || !isfinite(pix.y)) return false;
  int2 rmin, rmax;
  tile_rect(pix, radius, grid, rmin, rmax);
  if ((rmax.x - rmin.x) * (rmax.y - rmin.y) <= 0) return false;  // off screen: culled, radius 0

  float3 color;
  uint8_t clamp_flags[3] = {0, 0, 0};
  if (colors_precomp != nullptr) {
    color = load_f3(colors_precomp, idx);
  } else {
    const float3 cp = make_float3(cam.campos[0], cam.campos[1], cam.campos[2]);
    float3 dir = f3_sub(m, cp);
    const float len = sqrtf(f3_dot(dir, dir));
    dir = len > 0.f ? make_float3(dir.x / len, dir.y / len, dir.z / len) : make_float3(0.f, 0.f, 0.f);
    color = eval_sh_color(D, shs + (size_t)idx * M * 3, dir, clamp_flags);
  }
  if (!finite3(color)) return false;

  clamped[3 * idx + 0] = clamp_flags[0];
  clamped[3 * idx + 1] = clamp_flags[1];
  clamped[3 * idx + 2] = clamp_flags[2];
  rgb[3 * idx + 0] = color.x;
  rgb[3 * idx + 1] = color.y;
  rgb[3 * idx + 2] = color.z;
  depths[idx] = pv.z;
  radii[idx] = (int)radius;
  means2D[idx] = pix;
  const float4 co = make_float4(conic.x, conic.y, conic.z, opacity);
  conic_opacity[idx] = co;
  pix_out = pix;
  co_out = co;
  radius_out = (float)(int)radius;  // as stored in radii (duplicate_kernel reads it back from there)
  return true;
}


// The reach tiles (tile_in_reach) of each active lane's Gaussian, counted by the whole warp: the lanes sweep one
// Gaussian's tile rectangle 32 tiles at a time. A thread per Gaussian walking its own rectangle left the
// kernel waiting on the warps holding the largest Gaussians (hundreds of tiles in a row); here a warp's time
// is the sum of its Gaussians' rectangles over 32. Every lane of the warp must call it (shuffles).
__device__ __forceinline__ uint32_t warp_count_reach(bool active, float2 p, float4 co, float k, int2 rmin,
                                                     int2 rmax) {
  const int lane = threadIdx.x % 32;
  uint32_t mine = 0;
  for (unsigned pending = __ballot_sync(FULL_MASK, active); pending != 0u; pending &= pending - 1u) {
    const int src = __ffs(pending) - 1;
    const WarpRect r = broadcast_rect(src, p, co, k, rmin, rmax);
    uint32_t count = 0;
    for (int t0 = 0; t0 < r.tiles; t0 += 32) {
      const int t = t0 + lane;
      const bool in = t < r.tiles && tile_in_reach(r.p, r.co, r.k, r.x0 + t % r.w, r.y0 + t / r.w);
      count += __popc(__ballot_sync(FULL_MASK, in));
    }
    if (lane == src) mine = count;
  }
  return mine;
}

__global__ void __launch_bounds__(PREPROCESS_THREADS)
preprocess_kernel(int P, int D, int M, const float* __restrict__ means, const float* __restrict__ scales,
                  float scale_modifier, const float4* __restrict__ rotations, const float* __restrict__ opacities,
                  const float* __restrict__ shs, const float* __restrict__ colors_precomp,
                  const float* __restrict__ cov3D_precomp, Camera cam, dim3 grid, int* __restrict__ radii,
                  float2* __restrict__ means2D, float* __restrict__ depths, float* __restrict__ cov3Ds,
                  float* __restrict__ rgb, uint8_t* __restrict__ clamped, float4* __restrict__ conic_opacity,
                  uint32_t* __restrict__ tiles_touched) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx - (int)(threadIdx.x % 32) >= P) return;  // the whole warp is past the last Gaussian
  const bool in_range = idx < P;
  if (in_range) {
    radii[idx] = 0;
    tiles_touched[idx] = 0;
  }
  float2 pix = make_float2(0.f, 0.f);
  float4 co = make_float4(0.f, 0.f, 0.f, 0.f);
  float radius = 0.f;
  const bool kept = in_range && preprocess_gaussian(idx, D, M, means, scales, scale_modifier, rotations, opacities,
                                                    shs, colors_precomp, cov3D_precomp, cam, grid, radii, means2D,
                                                    depths, cov3Ds, rgb, clamped, conic_opacity, pix, co, radius);
  // listed only in the tiles it can reach (the same calls on the same stored values as duplicate_kernel)
  int2 rmin = make_int2(0, 0), rmax = make_int2(0, 0);
  const float k = kept ? reach_rect(pix, radius, co, grid, rmin, rmax) : 0.f;
  const uint32_t n = warp_count_reach(kept && k > 0.f, pix, co, k, rmin, rmax);
  if (kept) tiles_touched[idx] = n;
}

void preprocess(int P, int D, int M, const float* means, const float* scales, float scale_modifier,
                const float* rotations, const float* opacities, const float* shs, const float* colors_precomp,
                const float* cov3D_precomp, const Camera& cam, dim3 grid, int* radii, float2* means2D,
                float* depths, float* cov3Ds, float* rgb, uint8_t* clamped, float4* conic_opacity,
                uint32_t* tiles_touched, cudaStream_t stream) {
  if (P == 0) return;
  preprocess_kernel<<<(P + PREPROCESS_THREADS - 1) / PREPROCESS_THREADS, PREPROCESS_THREADS, 0, stream>>>(
      P, D, M, means, scales, scale_modifier, reinterpret_cast<const float4*>(rotations), opacities, shs,
      colors_precomp, cov3D_precomp, cam, grid, radii, means2D, depths, cov3Ds, rgb, clamped, conic_opacity,
      tiles_touched);
}

// The sort key's depth part (config.h, DEPTH_KEY_BITS): depth > NEAR_CULL, so its bits exceed NEAR_CULL's.
static __device__ __forceinline__ uint64_t depth_key(float depth) {
  const uint32_t d = __float_as_uint(depth) - __float_as_uint(NEAR_CULL);
  return (uint64_t)min(d, (1u << DEPTH_KEY_BITS) - 1u);
}

// The pairs of each Gaussian, written by the whole warp as warp_count_reach counts them: lane t of a sweep
// takes the rectangle's tile t0 + t, and the warp's ballot gives each reach tile its slot in row-major order
// (the order of the thread-per-Gaussian loop it replaces). With a fixed capacity (unused != 0) the grid also
// marks the slots [total, R) unused, and thread 0 copies the total to pair_count (when given): one launch for
// what were three.
__global__ void duplicate_kernel(int P, const float2* __restrict__ means2D, const float* __restrict__ depths,
                                 const float4* __restrict__ conic_opacity, const uint32_t* __restrict__ offsets,
                                 const int* __restrict__ radii, dim3 grid, uint32_t capacity, bool unused,
                                 uint64_t* __restrict__ keys, uint32_t* __restrict__ values,
                                 uint32_t* __restrict__ pair_count) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  const int lane = threadIdx.x % 32;
  if (unused) {  // slots past the pairs needed: key ~0 (after every real pair, skipped by tile_ranges)
    const uint32_t total = offsets[P - 1];
    if (idx == 0 && pair_count != nullptr) *pair_count = total;
    for (uint64_t s = (uint64_t)total + idx; s < capacity; s += (uint64_t)gridDim.x * blockDim.x) {
      keys[s] = ~0ull;
      values[s] = 0u;
    }
  } else if (idx == 0 && pair_count != nullptr) {
    *pair_count = offsets[P - 1];
  }
  if (idx - lane >= P) return;  // the whole warp is past the last Gaussian
  bool active = idx < P && radii[idx] > 0;
  uint32_t off = 0, end = 0, dkey = 0;
  float2 p = make_float2(0.f, 0.f);
  float4 co = make_float4(0.f, 0.f, 0.f, 0.f);
  float k = 0.f;
  int2 rmin = make_int2(0, 0), rmax = make_int2(0, 0);
  if (active) {
    off = idx == 0 ? 0 : offsets[idx - 1];
    end = min(offsets[idx], capacity);  // pairs past a fixed capacity are dropped (counted)
    p = means2D[idx];
    co = conic_opacity[idx];
    k = reach_rect(p, (float)radii[idx], co, grid, rmin, rmax);
    dkey = (uint32_t)depth_key(depths[idx]);
    active = off < end && k > 0.f;
  }
  for (unsigned pending = __ballot_sync(FULL_MASK, active); pending != 0u; pending &= pending - 1u) {
    const int src = __ffs(pending) - 1;
    const WarpRect r = broadcast_rect(src, p, co, k, rmin, rmax);
    uint32_t slot = __shfl_sync(FULL_MASK, off, src);
    const uint32_t stop = __shfl_sync(FULL_MASK, end, src);
    const uint64_t key_depth = (uint64_t)__shfl_sync(FULL_MASK, dkey, src);
    const uint32_t gid = (uint32_t)(idx - lane + src);
    for (int t0 = 0; t0 < r.tiles && slot < stop; t0 += 32) {
      const int t = t0 + lane;
      const int x = r.x0 + t % max(r.w, 1), y = r.y0 + t / max(r.w, 1);
      const bool in = t < r.tiles && tile_in_reach(r.p, r.co, r.k, x, y);
      const unsigned hits = __ballot_sync(FULL_MASK, in);
      const uint32_t at = slot + (uint32_t)__popc(hits & ((1u << lane) - 1u));
      if (in && at < stop) {
        keys[at] = ((uint64_t)(y * grid.x + x) << DEPTH_KEY_BITS) | key_depth;
        values[at] = gid;
      }
      slot += (uint32_t)__popc(hits);
    }
  }
}

void duplicate_with_keys(int P, const float2* means2D, const float* depths, const float4* conic_opacity,
                         const uint32_t* offsets, const int* radii, dim3 grid, uint32_t capacity, bool mark_unused,
                         uint64_t* keys, uint32_t* values, uint32_t* pair_count, cudaStream_t stream) {
  if (P == 0) return;
  duplicate_kernel<<<(P + DUPLICATE_THREADS - 1) / DUPLICATE_THREADS, DUPLICATE_THREADS, 0, stream>>>(
      P, means2D, depths, conic_opacity, offsets, radii, grid, capacity, mark_unused, keys, values, pair_count);
}

__global__ void unused_pairs_kernel(int R, uint64_t* __restrict__ keys, uint32_t* __restrict__ values) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= R) return;
  keys[idx] = ~0ull;  // tile bits all ones: sorts after every real pair, and tile_ranges skips it
  values[idx] = 0u;
}

void mark_unused_pairs(int R, uint64_t* keys, uint32_t* values, cudaStream_t stream) {
  if (R == 0) return;
  unused_pairs_kernel<<<(R + 255) / 256, 256, 0, stream>>>(R, keys, values);
}

__global__ void ranges_kernel(int R, uint32_t n_tiles, const uint64_t* __restrict__ keys,
                              uint2* __restrict__ ranges) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= R) return;
  const uint64_t tile = keys[idx] >> DEPTH_KEY_BITS;
  const bool real = tile < n_tiles;  // else an unused slot of a fixed-capacity list (mark_unused_pairs)
  if (idx == 0) {
    if (real) ranges[tile].x = 0;
  } else {
    const uint64_t prev = keys[idx - 1] >> DEPTH_KEY_BITS;
    if (tile != prev) {
      if (prev < n_tiles) ranges[prev].y = idx;
      if (real) ranges[tile].x = idx;
    }
  }
  if (idx == R - 1 && real) ranges[tile].y = R;
}

void tile_ranges(int R, uint32_t n_tiles, const uint64_t* sorted_keys, uint2* ranges, cudaStream_t stream) {
  if (R == 0) return;
  ranges_kernel<<<(R + 255) / 256, 256, 0, stream>>>(R, n_tiles, sorted_keys, ranges);
}

// One block per 16x16 tile, one thread per pixel. Gaussians of the tile are fetched into shared memory in
// batches of 256 and blended front to back; the block stops once every pixel is saturated.
template <bool DEPTH>
__global__ void __launch_bounds__(TILE_PIXELS)
render_kernel(const uint2* __restrict__ ranges, const uint32_t* __restrict__ point_list, int W, int H,
              const float2* __restrict__ means2D, const float* __restrict__ rgb,
              const float4* __restrict__ conic_opacity, const float* __restrict__ depths,
              const float* __restrict__ bg, float* __restrict__ final_T, uint32_t* __restrict__ n_contrib,
              float* __restrict__ out_color, float* __restrict__ out_depth, float* __restrict__ out_alpha) {
  auto block = cg::this_thread_block();
  const uint32_t tiles_x = (W + TILE_X - 1) / TILE_X;
  const uint2 pix = make_uint2(blockIdx.x * TILE_X + threadIdx.x, blockIdx.y * TILE_Y + threadIdx.y);
  const uint32_t pix_id = W * pix.y + pix.x;
  const float2 pixf = make_float2((float)pix.x, (float)pix.y);
  const bool inside = pix.x < (uint32_t)W && pix.y < (uint32_t)H;
  bool done = !inside;

  const uint2 range = ranges[blockIdx.y * tiles_x + blockIdx.x];
  const int rounds = ((int)(range.y - range.x) + TILE_PIXELS - 1) / TILE_PIXELS;
  int to_do = (int)(range.y - range.x);

  __shared__ TileBatch<DEPTH> batch;  // colours beside positions: no global load per blend

  float T = 1.f;
  uint32_t contributor = 0, last_contributor = 0;
  float C[NUM_CHANNELS] = {0.f, 0.f, 0.f};
  float Dacc = 0.f;
  const int rank = block.thread_rank();

  for (int i = 0; i < rounds; i++, to_do -= TILE_PIXELS) {
    if (__syncthreads_count(done) == TILE_PIXELS) break;
    const int progress = i * TILE_PIXELS + rank;
    if ((int)range.x + progress < (int)range.y) {
      const int gid = point_list[range.x + progress];
      batch.stage(rank, gid, means2D, conic_opacity, rgb, depths);
    }
    block.sync();
    const int n = min(TILE_PIXELS, to_do);
    for (int j = 0; !done && j < n; j++) {
      contributor++;
      const float2 xy = batch.xy[j];
      const float2 d = make_float2(xy.x - pixf.x, xy.y - pixf.y);
      const float4 co = batch.co[j];
      const float power = -0.5f * (co.x * d.x * d.x + co.z * d.y * d.y) - co.y * d.x * d.y;
      if (power > 0.f) continue;
      const float alpha = fminf(ALPHA_CAP, co.w * expf(power));
      if (alpha < ALPHA_MIN) continue;
      const float test_T = T * (1.f - alpha);
      if (test_T < T_MIN) {
        done = true;
        continue;
      }
      // (c * alpha) * T, the original's evaluation order.
      C[0] += batch.rgb[j] * alpha * T;
      C[1] += batch.rgb[TILE_PIXELS + j] * alpha * T;
      C[2] += batch.rgb[2 * TILE_PIXELS + j] * alpha * T;
      if (DEPTH) Dacc += batch.depth[j] * alpha * T;
      T = test_T;
      last_contributor = contributor;
    }
  }

  if (inside) {
    final_T[pix_id] = T;
    n_contrib[pix_id] = last_contributor;
    const int HW = H * W;
#pragma unroll
    for (int ch = 0; ch < NUM_CHANNELS; ch++) out_color[ch * HW + pix_id] = C[ch] + T * bg[ch];
    if (DEPTH) out_depth[pix_id] = Dacc;
    if (out_alpha != nullptr) out_alpha[pix_id] = 1.f - T;
  }
}

void render(dim3 grid, const uint2* ranges, const uint32_t* point_list, int W, int H, const float2* means2D,
            const float* rgb, const float4* conic_opacity, const float* depths, const float* bg,
            float* final_T, uint32_t* n_contrib, float* out_color, float* out_depth, float* out_alpha,
            cudaStream_t stream) {
  const dim3 block(TILE_X, TILE_Y, 1);
  if (out_depth != nullptr) {
    render_kernel<true><<<grid, block, 0, stream>>>(ranges, point_list, W, H, means2D, rgb, conic_opacity, depths,
                                                    bg, final_T, n_contrib, out_color, out_depth, out_alpha);
  } else {
    render_kernel<false><<<grid, block, 0, stream>>>(ranges, point_list, W, H, means2D, rgb, conic_opacity,
                                                     depths, bg, final_T, n_contrib, out_color, out_depth,
                                                     out_alpha);
  }
}

}  // namespace dgr
