// Backward kernels (docs/maths.md section 7): reverse-order per-tile blending backward, then one fused per-Gaussian
// kernel through the 2D covariance (clamped guard-band coordinates held constant), the 3D covariance,
// scales and rotations, the projection of the means, the view depth and the SH colour.
#include <cooperative_groups.h>

#include "config.h"
#include "rasterizer.h"
#include "tile_batch.h"
#include "vec_math.h"

namespace cg = cooperative_groups;

namespace dgr {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Gradients per Gaussian, accumulated into (P,3) means2D [NDC units], (P,3) conic (a, b, c as used in the
// exponent), (P) opacity, (P,3) colour and (P) view depth. Every lane of a warp walks the same Gaussian at
// the same time, so the per-pixel contributions are summed across the warp first and lane 0 issues one
// atomic per value: 32x fewer global atomics than one per pixel.
template <bool DEPTH, bool ALPHA>
__global__ void __launch_bounds__(TILE_PIXELS)
render_backward_kernel(const uint2* __restrict__ ranges, const uint32_t* __restrict__ point_list, int W, int H,
                       const float* __restrict__ bg, const float2* __restrict__ means2D,
                       const float4* __restrict__ conic_opacity, const float* __restrict__ rgb,
                       const float* __restrict__ depths, const float* __restrict__ final_T,
                       const uint32_t* __restrict__ n_contrib, const float* __restrict__ dL_dpixels,
                       const float* __restrict__ dL_ddepth_pix, const float* __restrict__ dL_dalpha_pix,
                       float* __restrict__ dL_dmean2D, float* __restrict__ dL_dconic,
                       float* __restrict__ dL_dopacity, float* __restrict__ dL_dcolor,
                       float* __restrict__ dL_ddepth) {
  auto block = cg::this_thread_block();
  const uint32_t tiles_x = (W + TILE_X - 1) / TILE_X;
  const uint2 pix = make_uint2(blockIdx.x * TILE_X + threadIdx.x, blockIdx.y * TILE_Y + threadIdx.y);
  const bool inside = pix.x < (uint32_t)W && pix.y < (uint32_t)H;
  const uint32_t pix_id = inside ? W * pix.y + pix.x : 0;
  const float2 pixf = make_float2((float)pix.x, (float)pix.y);
  const int rank = block.thread_rank();
  const int lane = rank & 31;

  const uint2 range = ranges[blockIdx.y * tiles_x + blockIdx.x];

  __shared__ int s_id[TILE_PIXELS];
  __shared__ TileBatch<DEPTH> batch;  // colours beside positions: no global load per blend
  __shared__ uint32_t s_max_contrib;

  const float T_final = inside ? final_T[pix_id] : 1.f;
  float T = T_final;
  const uint32_t last_contrib = inside ? n_contrib[pix_id] : 0;

  // Only the first max(last_contrib) Gaussians of the tile can matter to any pixel of the block.
  if (rank == 0) s_max_contrib = 0;
  block.sync();
  const uint32_t wmax = __reduce_max_sync(0xffffffffu, last_contrib);
  if (lane == 0) atomicMax(&s_max_contrib, wmax);
  block.sync();
  const int n = (int)s_max_contrib;

  const int HW = H * W;
  float dL_dpix[NUM_CHANNELS] = {0.f, 0.f, 0.f};
  float dL_dD = 0.f, dL_dA = 0.f;
  if (inside) {
#pragma unroll
    for (int ch = 0; ch < NUM_CHANNELS; ch++) dL_dpix[ch] = dL_dpixels[ch * HW + pix_id];
    if (DEPTH) dL_dD = dL_ddepth_pix[pix_id];
    if (ALPHA) dL_dA = dL_dalpha_pix[pix_id];
  }
  const float bg_dot = bg[0] * dL_dpix[0] + bg[1] * dL_dpix[1] + bg[2] * dL_dpix[2];
  // d(final colour)/d(alpha_i) through T_final * bg, and d(1 - T_final)/d(alpha_i): both T_final / (1 - alpha_i).
  const float final_term = dL_dA - bg_dot;

  float accum[NUM_CHANNELS] = {0.f, 0.f, 0.f};
  float last_color[NUM_CHANNELS] = {0.f, 0.f, 0.f};
  float accum_depth = 0.f, last_depth = 0.f, last_alpha = 0.f;
  const float ddelx_dx = 0.5f * W, ddely_dy = 0.5f * H;

  const int rounds = (n + TILE_PIXELS - 1) / TILE_PIXELS;
  for (int i = 0; i < rounds; i++) {
    block.sync();
    const int base = n - 1 - i * TILE_PIXELS;  // tile-list position of this batch's first (back-most) entry
    const int k_load = base - rank;
    if (k_load >= 0) {
      const int gid = point_list[range.x + k_load];
      s_id[rank] = gid;
      batch.stage(rank, gid, means2D, conic_opacity, rgb, depths);
    }
    block.sync();
    const int cnt = min(TILE_PIXELS, base + 1);
    for (int j = 0; j < cnt; j++) {
      const int k = base - j;
      bool valid = inside && k < (int)last_contrib;
      float g_mx = 0.f, g_my = 0.f, g_ca = 0.f, g_cb = 0.f, g_cc = 0.f, g_op = 0.f;
      float g_r = 0.f, g_g = 0.f, g_b = 0.f, g_z = 0.f;
      if (valid) {
        const float2 xy = batch.xy[j];
        const float2 d = make_float2(xy.x - pixf.x, xy.y - pixf.y);
        const float4 co = batch.co[j];
        const float power = -0.5f * (co.x * d.x * d.x + co.z * d.y * d.y) - co.y * d.x * d.y;
        const float G = expf(power);
        const float alpha = fminf(ALPHA_CAP, co.w * G);
        valid = power <= 0.f && alpha >= ALPHA_MIN;
        if (valid) {
          T = T / (1.f - alpha);
          const float w = alpha * T;
          float dL_dalpha = 0.f;
          const float c[3] = {batch.rgb[j], batch.rgb[TILE_PIXELS + j], batch.rgb[2 * TILE_PIXELS + j]};
#pragma unroll
          for (int ch = 0; ch < NUM_CHANNELS; ch++) {
            accum[ch] = last_alpha * last_color[ch] + (1.f - last_alpha) * accum[ch];
            last_color[ch] = c[ch];
            dL_dalpha += (c[ch] - accum[ch]) * dL_dpix[ch];
          }
          g_r = w * dL_dpix[0];
          g_g = w * dL_dpix[1];
          g_b = w * dL_dpix[2];
          if (DEPTH) {
            const float z = batch.depth[j];
            accum_depth = last_alpha * last_depth + (1.f - last_alpha) * accum_depth;
            last_depth = z;
            dL_dalpha += (z - accum_depth) * dL_dD;
            g_z = w * dL_dD;
          }
          dL_dalpha *= T;
          last_alpha = alpha;
          dL_dalpha += T_final / (1.f - alpha) * final_term;

          const float dL_dG = co.w * dL_dalpha;  // the 0.99 cap passes the gradient
          const float gdx = G * d.x, gdy = G * d.y;
          const float dG_ddelx = -gdx * co.x - gdy * co.y;
          const float dG_ddely = -gdy * co.z - gdx * co.y;
          g_mx = dL_dG * dG_ddelx * ddelx_dx;
          g_my = dL_dG * dG_ddely * ddely_dy;
          g_ca = -0.5f * gdx * d.x * dL_dG;
          g_cb = -gdx * d.y * dL_dG;
          g_cc = -0.5f * gdy * d.y * dL_dG;
          g_op = G * dL_dalpha;
        }
      }
      if (__any_sync(0xffffffffu, valid)) {
        g_mx = warp_sum(g_mx);
        g_my = warp_sum(g_my);
        g_ca = warp_sum(g_ca);
        g_cb = warp_sum(g_cb);
        g_cc = warp_sum(g_cc);
        g_op = warp_sum(g_op);
        g_r = warp_sum(g_r);
        g_g = warp_sum(g_g);
        g_b = warp_sum(g_b);
        if (DEPTH) g_z = warp_sum(g_z);
        if (lane == 0) {
          const int gid = s_id[j];
          atomicAdd(&dL_dmean2D[3 * gid + 0], g_mx);
          atomicAdd(&dL_dmean2D[3 * gid + 1], g_my);
          atomicAdd(&dL_dconic[3 * gid + 0], g_ca);
          atomicAdd(&dL_dconic[3 * gid + 1], g_cb);
          atomicAdd(&dL_dconic[3 * gid + 2], g_cc);
          atomicAdd(&dL_dopacity[gid], g_op);
          atomicAdd(&dL_dcolor[3 * gid + 0], g_r);
          atomicAdd(&dL_dcolor[3 * gid + 1], g_g);
          atomicAdd(&dL_dcolor[3 * gid + 2], g_b);
          if (DEPTH) atomicAdd(&dL_ddepth[gid], g_z);
        }
      }
    }
  }
}

void render_backward(dim3 grid, const uint2* ranges, const uint32_t* point_list, int W, int H,
                     const float* bg, const float2* means2D, const float4* conic_opacity, const float* rgb,
                     const float* depths, const float* final_T, const uint32_t* n_contrib,
                     const float* dL_dpixels, const float* dL_ddepth_pix, const float* dL_dalpha_pix,
                     float* dL_dmean2D, float* dL_dconic, float* dL_dopacity, float* dL_dcolor,
                     float* dL_ddepth, cudaStream_t stream) {
  const dim3 block(TILE_X, TILE_Y, 1);
#define LAUNCH(DD, AA)                                                                                     \
  render_backward_kernel<DD, AA><<<grid, block, 0, stream>>>(                                              \
      ranges, point_list, W, H, bg, means2D, conic_opacity, rgb, depths, final_T, n_contrib, dL_dpixels,  \
      dL_ddepth_pix, dL_dalpha_pix, dL_dmean2D, dL_dconic, dL_dopacity, dL_dcolor, dL_ddepth)
  const bool dd = dL_ddepth_pix != nullptr, aa = dL_dalpha_pix != nullptr;
  if (dd && aa) LAUNCH(true, true);
  else if (dd) LAUNCH(true, false);
  else if (aa) LAUNCH(false, true);
  else LAUNCH(false, false);
#undef LAUNCH
}

// SH backward for one Gaussian: writes dL/dsh (M x 3) and returns dL/d(unit direction).
__device__ float3 sh_backward(int deg, int M, const float* sh, float3 dir, float3 g, float* dsh) {
#define SH(k) make_float3(sh[3 * (k)], sh[3 * (k) + 1], sh[3 * (k) + 2])
#define SETG(k, s) do { dsh[3 * (k)] = (s) * g.x; dsh[3 * (k) + 1] = (s) * g.y; dsh[3 * (k) + 2] = (s) * g.z; } while (0)
  SETG(0, SH_C0);
  float3 dx = make_float3(0.f, 0.f, 0.f), dy = dx, dz = dx;
  int k_done = 1;
  if (deg > 0) {
    const float x = dir.x, y = dir.y, z = dir.z;
    SETG(1, -SH_C1 * y);
    SETG(2, SH_C1 * z);
    SETG(3, -SH_C1 * x);
    dx = f3_scale(SH(3), -SH_C1);
    dy = f3_scale(SH(1), -SH_C1);
    dz = f3_scale(SH(2), SH_C1);
    k_done = 4;
    if (deg > 1) {
      const float xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
      SETG(4, SH_C2[0] * xy);
      SETG(5, SH_C2[1] * yz);
      SETG(6, SH_C2[2] * (2.f * zz - xx - yy));
      SETG(7, SH_C2[3] * xz);
      SETG(8, SH_C2[4] * (xx - yy));
      dx = f3_add(dx, f3_add(f3_add(f3_scale(SH(4), SH_C2[0] * y), f3_scale(SH(6), SH_C2[2] * -2.f * x)),
                             f3_add(f3_scale(SH(7), SH_C2[3] * z), f3_scale(SH(8), SH_C2[4] * 2.f * x))));
      dy = f3_add(dy, f3_add(f3_add(f3_scale(SH(4), SH_C2[0] * x), f3_scale(SH(5), SH_C2[1] * z)),
                             f3_add(f3_scale(SH(6), SH_C2[2] * -2.f * y), f3_scale(SH(8), SH_C2[4] * -2.f * y))));
      dz = f3_add(dz, f3_add(f3_add(f3_scale(SH(5), SH_C2[1] * y), f3_scale(SH(6), SH_C2[2] * 4.f * z)),
                             f3_scale(SH(7), SH_C2[3] * x)));
      k_done = 9;
      if (deg > 2) {
        SETG(9, SH_C3[0] * y * (3.f * xx - yy));
        SETG(10, SH_C3[1] * xy * z);
        SETG(11, SH_C3[2] * y * (4.f * zz - xx - yy));
        SETG(12, SH_C3[3] * z * (2.f * zz - 3.f * xx - 3.f * yy));
        SETG(13, SH_C3[4] * x * (4.f * zz - xx - yy));
        SETG(14, SH_C3[5] * z * (xx - yy));
        SETG(15, SH_C3[6] * x * (xx - 3.f * yy));
        dx = f3_add(dx, f3_scale(SH(9), SH_C3[0] * 6.f * xy));
        dx = f3_add(dx, f3_scale(SH(10), SH_C3[1] * yz));
        dx = f3_add(dx, f3_scale(SH(11), SH_C3[2] * -2.f * xy));
        dx = f3_add(dx, f3_scale(SH(12), SH_C3[3] * -6.f * xz));
        dx = f3_add(dx, f3_scale(SH(13), SH_C3[4] * (4.f * zz - 3.f * xx - yy)));
        dx = f3_add(dx, f3_scale(SH(14), SH_C3[5] * 2.f * xz));
        dx = f3_add(dx, f3_scale(SH(15), SH_C3[6] * 3.f * (xx - yy)));
        dy = f3_add(dy, f3_scale(SH(9), SH_C3[0] * 3.f * (xx - yy)));
        dy = f3_add(dy, f3_scale(SH(10), SH_C3[1] * xz));
        dy = f3_add(dy, f3_scale(SH(11), SH_C3[2] * (4.f * zz - xx - 3.f * yy)));
        dy = f3_add(dy, f3_scale(SH(12), SH_C3[3] * -6.f * yz));
        dy = f3_add(dy, f3_scale(SH(13), SH_C3[4] * -2.f * xy));
        dy = f3_add(dy, f3_scale(SH(14), SH_C3[5] * -2.f * yz));
        dy = f3_add(dy, f3_scale(SH(15), SH_C3[6] * -6.f * xy));
        dz = f3_add(dz, f3_scale(SH(10), SH_C3[1] * xy));
        dz = f3_add(dz, f3_scale(SH(11), SH_C3[2] * 8.f * yz));
        dz = f3_add(dz, f3_scale(SH(12), SH_C3[3] * 3.f * (2.f * zz - xx - yy)));
        dz = f3_add(dz, f3_scale(SH(13), SH_C3[4] * 8.f * xz));
        dz = f3_add(dz, f3_scale(SH(14), SH_C3[5] * (xx - yy)));
        k_done = 16;
      }
    }
  }
  for (int k = k_done; k < M; k++) SETG(k, 0.f);
#undef SETG
#undef SH
  return make_float3(f3_dot(dx, g), f3_dot(dy, g), f3_dot(dz, g));
}

__global__ void __launch_bounds__(PREPROCESS_THREADS)
preprocess_backward_kernel(int P, int D, int M, const float* __restrict__ means, const int* __restrict__ radii,
                           const float* __restrict__ shs, const uint8_t* __restrict__ clamped,
                           const float* __restrict__ scales, const float4* __restrict__ rotations,
                           float scale_modifier, const float* __restrict__ cov3Ds, bool cov3D_is_precomp,
                           Camera cam, const float* __restrict__ dL_dmean2D, const float* __restrict__ dL_dconic,
                           const float* __restrict__ dL_dcolor, const float* __restrict__ dL_ddepth,
                           bool colors_precomp, float* __restrict__ dL_dmeans, float* __restrict__ dL_dsh,
                           float* __restrict__ dL_dscales, float* __restrict__ dL_drots,
                           float* __restrict__ dL_dcov3D) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= P) return;
  if (radii[idx] <= 0) {  // not drawn: no gradient
    dL_dmeans[3 * idx + 0] = 0.f;
    dL_dmeans[3 * idx + 1] = 0.f;
    dL_dmeans[3 * idx + 2] = 0.f;
    if (!colors_precomp && dL_dsh != nullptr)
      for (int k = 0; k < 3 * M; k++) dL_dsh[(size_t)idx * M * 3 + k] = 0.f;
    if (cov3D_is_precomp) {
#pragma unroll
      for (int k = 0; k < 6; k++) dL_dcov3D[6 * idx + k] = 0.f;
    } else {
#pragma unroll
      for (int k = 0; k < 3; k++) dL_dscales[3 * idx + k] = 0.f;
#pragma unroll
      for (int k = 0; k < 4; k++) dL_drots[4 * idx + k] = 0.f;
    }
    return;
  }
  const float* view = cam.view;
  const float* proj = cam.proj;
  const float3 m = load_f3(means, idx);
  float3 dm = make_float3(0.f, 0.f, 0.f);

  // 1. Pixel centre: ndc = hom.xy / (hom.w + eps), hom = F (m, 1). dL/dndc is dL_dmean2D.
  {
    const float4 h = xform_point_4x4(proj, m);
    const float iw = 1.0f / (h.w + W_EPS);
    const float gx = dL_dmean2D[3 * idx + 0], gy = dL_dmean2D[3 * idx + 1];
    const float ax = h.x * iw * iw, ay = h.y * iw * iw;
    dm.x += (proj[0] * iw - proj[3] * ax) * gx + (proj[1] * iw - proj[3] * ay) * gy;
    dm.y += (proj[4] * iw - proj[7] * ax) * gx + (proj[5] * iw - proj[7] * ay) * gy;
    dm.z += (proj[8] * iw - proj[11] * ax) * gx + (proj[9] * iw - proj[11] * ay) * gy;
  }
  // 2. View depth z = row 2 of the view matrix applied to m.
  if (dL_ddepth != nullptr) {
    const float gz = dL_ddepth[idx];
    dm.x += view[2] * gz;
    dm.y += view[6] * gz;
    dm.z += view[10] * gz;
  }
  // 3. Conic -> 2D covariance -> (Jacobian, 3D covariance).
  const float* cv = cov3Ds + 6 * idx;
  const float S[9] = {cv[0], cv[1], cv[2], cv[1], cv[3], cv[4], cv[2], cv[4], cv[5]};
  const float3 t = xform_point_4x3(view, m);
  const float limx = FRUSTUM_GUARD * cam.tanfovx, limy = FRUSTUM_GUARD * cam.tanfovy;
  const float txtz = t.x / t.z, tytz = t.y / t.z;
  const float tx = fminf(limx, fmaxf(-limx, txtz)) * t.z;
  const float ty = fminf(limy, fmaxf(-limy, tytz)) * t.z;
  const bool in_x = txtz >= -limx && txtz <= limx, in_y = tytz >= -limy && tytz <= limy;
  const float fx = cam.focal_x, fy = cam.focal_y;
  const float iz = 1.f / t.z, iz2 = iz * iz, iz3 = iz2 * iz;
  const float J00 = fx * iz, J02 = -fx * tx * iz2, J11 = fy * iz, J12 = -fy * ty * iz2;
  float Wm[9];  // row-major rotation part of the view matrix
#pragma unroll
  for (int i = 0; i < 3; i++)
#pragma unroll
    for (int j = 0; j < 3; j++) Wm[3 * i + j] = view[4 * j + i];
  float T0[3], T1[3], u0[3], u1[3];
#pragma unroll
  for (int j = 0; j < 3; j++) {
    T0[j] = J00 * Wm[j] + J02 * Wm[6 + j];
    T1[j] = J11 * Wm[3 + j] + J12 * Wm[6 + j];
  }
#pragma unroll
  for (int j = 0; j < 3; j++) {
    u0[j] = T0[0] * S[j] + T0[1] * S[3 + j] + T0[2] * S[6 + j];
    u1[j] = T1[0] * S[j] + T1[1] * S[3 + j] + T1[2] * S[6 + j];
  }
  const float a = u0[0] * T0[0] + u0[1] * T0[1] + u0[2] * T0[2] + LOWPASS;
  const float b = u0[0] * T1[0] + u0[1] * T1[1] + u0[2] * T1[2];
  const float c = u1[0] * T1[0] + u1[1] * T1[1] + u1[2] * T1[2] + LOWPASS;
  const float det = a * c - b * b;
  const float id2 = 1.f / (det * det);
  const float gA = dL_dconic[3 * idx + 0], gB = dL_dconic[3 * idx + 1], gC = dL_dconic[3 * idx + 2];
  // conic = (c, -b, a) / det
  const float dL_da = id2 * (-c * c * gA + b * c * gB - b * b * gC);
  const float dL_dc = id2 * (-b * b * gA + a * b * gB - a * a * gC);
  const float dL_db = id2 * (2.f * b * c * gA - (det + 2.f * b * b) * gB + 2.f * a * b * gC);
  // dL/dSigma = T^T G T with G = [[da, db/2], [db/2, dc]] (symmetric).
  float dS[9];
#pragma unroll
  for (int k = 0; k < 3; k++)
#pragma unroll
    for (int l = 0; l < 3; l++)
      dS[3 * k + l] = dL_da * T0[k] * T0[l] + dL_dc * T1[k] * T1[l] + 0.5f * dL_db * (T0[k] * T1[l] + T1[k] * T0[l]);
  // dL/dT = 2 G T Sigma.
  float dT0[3], dT1[3];
#pragma unroll
  for (int j = 0; j < 3; j++) {
    dT0[j] = 2.f * dL_da * u0[j] + dL_db * u1[j];
    dT1[j] = dL_db * u0[j] + 2.f * dL_dc * u1[j];
  }
  const float gJ00 = dT0[0] * Wm[0] + dT0[1] * Wm[1] + dT0[2] * Wm[2];
  const float gJ02 = dT0[0] * Wm[6] + dT0[1] * Wm[7] + dT0[2] * Wm[8];
  const float gJ11 = dT1[0] * Wm[3] + dT1[1] * Wm[4] + dT1[2] * Wm[5];
  const float gJ12 = dT1[0] * Wm[6] + dT1[1] * Wm[7] + dT1[2] * Wm[8];
  // Clamped coordinates are constants: no gradient to x (y), z keeps the explicit 1/z, 1/z^2 terms.
  const float dtx = in_x ? -fx * iz2 * gJ02 : 0.f;
  const float dty = in_y ? -fy * iz2 * gJ12 : 0.f;
  const float dtz = -fx * iz2 * gJ00 - fy * iz2 * gJ11 + 2.f * fx * tx * iz3 * gJ02 + 2.f * fy * ty * iz3 * gJ12;
  dm.x += Wm[0] * dtx + Wm[3] * dty + Wm[6] * dtz;
  dm.y += Wm[1] * dtx + Wm[4] * dty + Wm[7] * dtz;
  dm.z += Wm[2] * dtx + Wm[5] * dty + Wm[8] * dtz;

  if (cov3D_is_precomp) {
    float* o = dL_dcov3D + 6 * idx;
    o[0] = dS[0];
    o[1] = dS[1] + dS[3];
    o[2] = dS[2] + dS[6];
    o[3] = dS[4];
    o[4] = dS[5] + dS[7];
    o[5] = dS[8];
  } else {
    // Sigma = M M^T with M = R diag(s): dL/dM = 2 dS M.
    const float4 q = rotations[idx];
    float R[9];
    quat_to_rotmat(q, R);
    const float3 s3 = load_f3(scales, idx);
    const float s[3] = {scale_modifier * s3.x, scale_modifier * s3.y, scale_modifier * s3.z};
    float Mm[9], dM[9];
#pragma unroll
    for (int i = 0; i < 3; i++)
#pragma unroll
      for (int j = 0; j < 3; j++) Mm[3 * i + j] = R[3 * i + j] * s[j];
#pragma unroll
    for (int i = 0; i < 3; i++)
#pragma unroll
      for (int j = 0; j < 3; j++)
        dM[3 * i + j] = 2.f * (dS[3 * i + 0] * Mm[j] + dS[3 * i + 1] * Mm[3 + j] + dS[3 * i + 2] * Mm[6 + j]);
    float dR[9];
#pragma unroll
    for (int j = 0; j < 3; j++) {
      dL_dscales[3 * idx + j] = scale_modifier * (dM[j] * R[j] + dM[3 + j] * R[3 + j] + dM[6 + j] * R[6 + j]);
#pragma unroll
      for (int i = 0; i < 3; i++) dR[3 * i + j] = dM[3 * i + j] * s[j];
    }
    const float w = q.x, x = q.y, y = q.z, z = q.w;
    float* o = dL_drots + 4 * idx;
    o[0] = 2.f * (-z * dR[1] + y * dR[2] + z * dR[3] - x * dR[5] - y * dR[6] + x * dR[7]);
    o[1] = 2.f * (y * dR[1] + z * dR[2] + y * dR[3] - 2.f * x * dR[4] - w * dR[5] + z * dR[6] + w * dR[7] -
                  2.f * x * dR[8]);
    o[2] = 2.f * (-2.f * y * dR[0] + x * dR[1] + w * dR[2] + x * dR[3] + z * dR[5] - w * dR[6] + z * dR[7] -
                  2.f * y * dR[8]);
    o[3] = 2.f * (-2.f * z * dR[0] - w * dR[1] + x * dR[2] + w * dR[3] - 2.f * z * dR[4] + y * dR[5] + x * dR[6] +
                  y * dR[7]);
  }

  // 4. SH colour: clamped channels get no gradient; the direction's gradient goes to the mean.
  if (!colors_precomp && dL_dsh != nullptr) {
    float3 g = load_f3(dL_dcolor, idx);
    const uint8_t* cl = clamped + 3 * idx;
    if (cl[0]) g.x = 0.f;
    if (cl[1]) g.y = 0.f;
    if (cl[2]) g.z = 0.f;
    const float3 v = f3_sub(m, make_float3(cam.campos[0], cam.campos[1], cam.campos[2]));
    const float len = sqrtf(f3_dot(v, v));
    const float3 dir = len > 0.f ? make_float3(v.x / len, v.y / len, v.z / len) : make_float3(0.f, 0.f, 0.f);
    const float3 gdir = sh_backward(D, M, shs + (size_t)idx * M * 3, dir, g, dL_dsh + (size_t)idx * M * 3);
    if (len > 0.f) {
      const float proj_d = f3_dot(dir, gdir);
      dm = f3_add(dm, f3_scale(f3_sub(gdir, f3_scale(dir, proj_d)), 1.f / len));
    }
  }
  dL_dmeans[3 * idx + 0] = dm.x;
  dL_dmeans[3 * idx + 1] = dm.y;
  dL_dmeans[3 * idx + 2] = dm.z;
}

void preprocess_backward(int P, int D, int M, const float* means, const int* radii, const float* shs,
                         const uint8_t* clamped, const float* scales, const float* rotations,
                         float scale_modifier, const float* cov3Ds, bool cov3D_is_precomp,
                         const Camera& cam, const float* dL_dmean2D, const float* dL_dconic,
                         const float* dL_dcolor, const float* dL_ddepth, bool colors_precomp,
                         float* dL_dmeans, float* dL_dsh, float* dL_dscales, float* dL_drots,
                         float* dL_dcov3D, cudaStream_t stream) {
  if (P == 0) return;
  preprocess_backward_kernel<<<(P + PREPROCESS_THREADS - 1) / PREPROCESS_THREADS, PREPROCESS_THREADS, 0, stream>>>(
      P, D, M, means, radii, shs, clamped, scales, reinterpret_cast<const float4*>(rotations), scale_modifier,
      cov3Ds, cov3D_is_precomp, cam, dL_dmean2D, dL_dconic, dL_dcolor, dL_ddepth, colors_precomp, dL_dmeans,
      dL_dsh, dL_dscales, dL_drots, dL_dcov3D);
}

}  // namespace dgr
