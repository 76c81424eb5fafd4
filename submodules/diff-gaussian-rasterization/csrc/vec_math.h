// Small vector and matrix helpers (our own, instead of glm) shared by the forward and backward kernels.
// Matrices passed from Python are the transposed (column-major) 4x4 view and full-projection matrices:
// element k sits at row k % 4, column k / 4 of the row-major matrix.
#pragma once

#include <cuda_runtime.h>
#include <math.h>

#include "config.h"

__device__ __forceinline__ float3 f3_add(float3 a, float3 b) { return make_float3(a.x + b.x, a.y + b.y, a.z + b.z); }
__device__ __forceinline__ float3 f3_sub(float3 a, float3 b) { return make_float3(a.x - b.x, a.y - b.y, a.z - b.z); }
__device__ __forceinline__ float3 f3_scale(float3 a, float s) { return make_float3(a.x * s, a.y * s, a.z * s); }
__device__ __forceinline__ float f3_dot(float3 a, float3 b) { return a.x * b.x + a.y * b.y + a.z * b.z; }

__device__ __forceinline__ bool finite_f(float v) { return isfinite(v); }
__device__ __forceinline__ bool finite3(float3 v) { return isfinite(v.x) && isfinite(v.y) && isfinite(v.z); }

__device__ __forceinline__ float3 load_f3(const float* p, int idx) {
  return make_float3(p[3 * idx + 0], p[3 * idx + 1], p[3 * idx + 2]);
}

// Row r of the (row-major) matrix stored column-major in m, applied to (p, 1).
__device__ __forceinline__ float3 xform_point_4x3(const float* m, float3 p) {
  return make_float3(m[0] * p.x + m[4] * p.y + m[8] * p.z + m[12],
                     m[1] * p.x + m[5] * p.y + m[9] * p.z + m[13],
                     m[2] * p.x + m[6] * p.y + m[10] * p.z + m[14]);
}

__device__ __forceinline__ float4 xform_point_4x4(const float* m, float3 p) {
  return make_float4(m[0] * p.x + m[4] * p.y + m[8] * p.z + m[12],
                     m[1] * p.x + m[5] * p.y + m[9] * p.z + m[13],
                     m[2] * p.x + m[6] * p.y + m[10] * p.z + m[14],
                     m[3] * p.x + m[7] * p.y + m[11] * p.z + m[15]);
}

// NDC -> internal pixel coordinate (pixel i centred at i). Evaluated in double and rounded once, as the
// original does (its literals are doubles), so the centre is the correctly rounded value.
__device__ __forceinline__ float ndc_to_pixel(float v, int size) {
  return (float)((((double)v + 1.0) * (double)size - 1.0) * 0.5);
}

// Tile rectangle of docs/maths.md section 7: rect_min = clamp(floor((p - r) / 16), 0, G),
// rect_max = clamp(floor((p + r + 15) / 16), 0, G). Evaluated in float with the original's operation order
// (((p + r) + 16) - 1) and clamped before the integer conversion, so any finite p and r are safe.
__device__ __forceinline__ void tile_rect(float2 p, float r, dim3 grid, int2& rmin, int2& rmax) {
  const float gx = (float)grid.x, gy = (float)grid.y;
  rmin.x = (int)fminf(gx, fmaxf(0.0f, floorf((p.x - r) / (float)TILE_X)));
  rmin.y = (int)fminf(gy, fmaxf(0.0f, floorf((p.y - r) / (float)TILE_Y)));
  rmax.x = (int)fminf(gx, fmaxf(0.0f, floorf((((p.x + r) + (float)TILE_X) - 1.0f) / (float)TILE_X)));
  rmax.y = (int)fminf(gy, fmaxf(0.0f, floorf((((p.y + r) + (float)TILE_Y) - 1.0f) / (float)TILE_Y)));
}

// Rotation matrix (row-major, R[3*i + j]) of the quaternion (w, x, y, z), used as passed (not normalised).
__device__ __forceinline__ void quat_to_rotmat(float4 q, float R[9]) {
  const float w = q.x, x = q.y, y = q.z, z = q.w;
  R[0] = 1.f - 2.f * (y * y + z * z);
  R[1] = 2.f * (x * y - w * z);
  R[2] = 2.f * (x * z + w * y);
  R[3] = 2.f * (x * y + w * z);
  R[4] = 1.f - 2.f * (x * x + z * z);
  R[5] = 2.f * (y * z - w * x);
  R[6] = 2.f * (x * z - w * y);
  R[7] = 2.f * (y * z + w * x);
  R[8] = 1.f - 2.f * (x * x + y * y);
}

// SH constants of docs/maths.md section 7.
__device__ const float SH_C0 = 0.28209479177387814f;
__device__ const float SH_C1 = 0.4886025119029199f;
__device__ const float SH_C2[5] = {1.0925484305920792f, -1.0925484305920792f, 0.31539156525252005f,
                                   -1.0925484305920792f, 0.5462742152960396f};
__device__ const float SH_C3[7] = {-0.5900435899266435f, 2.890611442640554f, -0.4570457994644658f,
                                   0.3731763325901154f, -0.4570457994644658f, 1.445305721320277f,
                                   -0.5900435899266435f};
