// LPIPS in float16 as the training step runs it (utils/lpips_trunk.fused_half_lpips): everything around
// cuDNN's convolutions, fused. Maps are channels-last float16 batches of both images (the render's n first,
// the ground truth's n after), so a pixel's channels are contiguous and the ground truth's pixel p sits
// n*H*W pixels after the render's.
//   prep:      [0, 1] images (float32, NCHW) -> lpips' scaled input ((2v - 1) - shift) / scale, float16
//              channels-last, CP channels (zero beyond 3) -- one pass instead of ~12 small ones;
//   distance:  per pixel sum_c w_c (a_c/(|a|+eps) - b_c/(|b|+eps))^2 / (H W) read straight from the float16
//              batch (no float32 copies of the features) into the caller's row of per-pixel terms, and the
//              largest per-element feature gradient (for a unit output gradient, where the ReLU passes it)
//              into `amax`: the backward's float16 scale, known before its first kernel;
//   backward:  per layer, one pass: the distance's feature gradient (scaled), plus the next slice's pooled
//              gradient routed through the pool's one-byte choices, times the ReLU's mask -- what was a
//              float32 gradient map, a scaling pass, an add, a pool backward and a threshold pass;
//   relu_mask: the ReLU masks between two convolutions, in place, 16 bytes a thread;
//   prep_backward: the image gradient back to float32, unscaled, through the scaling layer.
// Gradient: dd_p/da_k = 2 w_k e_k / na - a_k (sum_c 2 w_c e_c a_c / na) / (r na^2), e = a/na - b/nb,
// r = |a|, na = r + eps (as lpips_distance.cu). The scale is the power of two bringing the largest feature
// gradient (amax times the largest |output gradient|) to GRAD_TARGET, computed the same way in every kernel.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_fp16.h>
#include <torch/extension.h>

namespace {

constexpr int THREADS = 256;
constexpr int GROUP = 8;               // lanes per pixel in the distance kernels
constexpr float GRAD_TARGET = 4096.f;  // float16's largest finite value is 65504: 16x headroom

union Half8 {
  uint4 raw;
  __half2 h2[4];
};

__device__ __forceinline__ void unpack(const uint4 raw, float f[8]) {
  Half8 v;
  v.raw = raw;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __half22float2(v.h2[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

__device__ __forceinline__ uint4 pack(const float f[8]) {
  Half8 v;
#pragma unroll
  for (int i = 0; i < 4; ++i) v.h2[i] = __floats2half2_rn(f[2 * i], f[2 * i + 1]);
  return v.raw;
}

__device__ __forceinline__ void weights8(const float4* w, int c, float f[8]) {
  const float4 x = w[2 * c], y = w[2 * c + 1];
  f[0] = x.x; f[1] = x.y; f[2] = x.z; f[3] = x.w; f[4] = y.x; f[5] = y.y; f[6] = y.z; f[7] = y.w;
}

__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int o = GROUP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float group_max(float v) {
#pragma unroll
  for (int o = GROUP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The backward's scale: 2^floor(log2(GRAD_TARGET / (amax * max_i |gout_i|))), exactly (frexp, no log2f).
__device__ __forceinline__ float grad_scale(const float* amax, const float* gout, int n) {
  float g = 0.f;
  for (int i = 0; i < n; ++i) g = fmaxf(g, fabsf(gout[i]));
  int e;
  frexpf(GRAD_TARGET / fmaxf(amax[0] * g, 1e-30f), &e);  // = f 2^e, f in [0.5, 1)
  return ldexpf(1.f, e - 1);
}

// Channels 8c..8c+7 of a pixel's two feature vectors and of the head's weights, as floats.
__device__ __forceinline__ void load_chunk(const uint4* ap, const uint4* bp, const float4* w, int c, float a[8],
                                           float b[8], float wc[8]) {
  unpack(ap[c], a);
  unpack(bp[c], b);
  weights8(w, c, wc);
}

// The distance's gradient for one channel: g2 w_k e_k / na - a_k radial, e_k = a_k ia - b_k ib.
__device__ __forceinline__ float feature_grad(float a, float b, float w, float ia, float ib, float g2, float radial) {
  return g2 * w * (a * ia - b * ib) * ia - a * radial;
}

// One pixel's channel-vector norms |a| and |b| (the group's lanes each hold both totals).
struct PixelNorms {
  float r, rb;
};

__device__ __forceinline__ PixelNorms pixel_norms(const uint4* ap, const uint4* bp, int C8, int q) {
  float sa = 0.f, sb = 0.f;
  for (int c = q; c < C8; c += GROUP) {
    float a[8], b[8];
    unpack(ap[c], a);
    unpack(bp[c], b);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      sa = fmaf(a[k], a[k], sa);
      sb = fmaf(b[k], b[k], sb);
    }
  }
  PixelNorms out;
  out.r = sqrtf(group_sum(sa));
  out.rb = sqrtf(group_sum(sb));
  return out;
}

__global__ void prep_kernel(int64_t total, int64_t n, int64_t HW, int CP, const float* __restrict__ x,
                            const float* __restrict__ y, const float* __restrict__ shift,
                            const float* __restrict__ scale, __half* __restrict__ out) {
  const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;  // (image of 2n, pixel)
  if (t >= total) return;
  const int64_t i = t / HW, p = t % HW;
  const float* src = i < n ? x + i * 3 * HW + p : y + (i - n) * 3 * HW + p;
  __half* dst = out + t * CP;
  for (int c = 0; c < CP; ++c) {
    const float v = c < 3 ? ((src[c * HW] * 2.f - 1.f) - shift[c]) / scale[c] : 0.f;
    dst[c] = __float2half_rn(v);
  }
}

__global__ void prep_backward_kernel(int64_t total, int64_t HW, int CP, const __half* __restrict__ g,
                                     const float* __restrict__ scale, const float* __restrict__ amax,
                                     const float* __restrict__ gout, int n, float* __restrict__ grad_x) {
  const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;  // (image of n, pixel)
  if (t >= total) return;
  const int64_t i = t / HW, p = t % HW;
  const float s = grad_scale(amax, gout, n);
  for (int c = 0; c < 3; ++c) grad_x[(i * 3 + c) * HW + p] = ((__half2float(g[t * CP + c]) / s) / scale[c]) * 2.f;
}

__global__ void distance_kernel(int64_t P, int64_t HW, int64_t row, int64_t offset, int C8,
                                const uint4* __restrict__ feat, int64_t other, const float4* __restrict__ w,
                                float eps, float inv_hw, float* __restrict__ d, float* __restrict__ amax) {
  __shared__ float block_max[THREADS / 32];
  const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t p = t / GROUP;
  const int q = (int)(t % GROUP);
  const bool valid = p < P;  // no early exit: shuffles and the block's reduction need every thread
  const uint4* ap = feat + (valid ? p : 0) * C8;
  const uint4* bp = ap + other;
  PixelNorms s = pixel_norms(ap, bp, C8, q);
  const float na = s.r + eps, ia = 1.f / na, ib = 1.f / (s.rb + eps);
  float acc = 0.f, dot = 0.f;
  for (int c = q; c < C8; c += GROUP) {
    float a[8], b[8], wc[8];
    load_chunk(ap, bp, w, c, a, b, wc);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const float e = a[k] * ia - b[k] * ib;
      acc = fmaf(wc[k] * e, e, acc);
      dot = fmaf(a[k] * wc[k], e, dot);
    }
  }
  acc = group_sum(acc);
  const float g2 = 2.f * inv_hw;
  dot = group_sum(dot) * g2;
  const float radial = s.r > 0.f ? dot / (s.r * na * na) : 0.f;
  float m = 0.f;
  for (int c = q; c < C8; c += GROUP) {
    float a[8], b[8], wc[8];
    load_chunk(ap, bp, w, c, a, b, wc);
#pragma unroll
    for (int k = 0; k < 8; ++k)  // only where the ReLU lets the gradient through (a > 0): a vanishing feature
      if (a[k] > 0.f)            // vector's 1/eps gradient is masked away, and must not set the scale
        m = fmaxf(m, fabsf(feature_grad(a[k], b[k], wc[k], ia, ib, g2, radial)));
  }
  m = group_max(m);  // every lane shuffles; invalid ones then drop out
  m = valid ? m : 0.f;
  if (valid && q == 0) d[(p / HW) * row + offset + p % HW] = acc * inv_hw;
  m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 8));
  m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 16));
  if ((threadIdx.x & 31) == 0) block_max[threadIdx.x >> 5] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    float b = 0.f;
    for (int k = 0; k < THREADS / 32; ++k) b = fmaxf(b, block_max[k]);
    // non-negative floats order as their bit patterns: an integer max is a float max (and deterministic)
    if (b > 0.f) atomicMax(reinterpret_cast<unsigned int*>(amax), __float_as_uint(b));
  }
}

__global__ void backward_kernel(int64_t P, int64_t HW, int W, int C8, const uint4* __restrict__ feat,
                                int64_t other, const float4* __restrict__ w, float eps, float inv_hw,
                                const float* __restrict__ gout, const float* __restrict__ amax, int n,
                                const uint4* __restrict__ g_next, const uint2* __restrict__ choice,
                                uint4* __restrict__ g) {
  const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t p = t / GROUP;
  const int q = (int)(t % GROUP);
  const bool valid = p < P;
  const int64_t pp = valid ? p : 0;
  const uint4* ap = feat + pp * C8;
  const uint4* bp = ap + other;
  PixelNorms s = pixel_norms(ap, bp, C8, q);
  const float na = s.r + eps, ia = 1.f / na, ib = 1.f / (s.rb + eps);
  float dot = 0.f;
  for (int c = q; c < C8; c += GROUP) {
    float a[8], b[8], wc[8];
    load_chunk(ap, bp, w, c, a, b, wc);
#pragma unroll
    for (int k = 0; k < 8; ++k) dot = fmaf(a[k] * wc[k], a[k] * ia - b[k] * ib, dot);
  }
  const int64_t image = pp / HW, pix = pp % HW;
  const float g2 = 2.f * inv_hw * gout[image] * grad_scale(amax, gout, n);
  dot = group_sum(dot) * g2;
  const float radial = s.r > 0.f ? dot / (s.r * na * na) : 0.f;
  if (!valid) return;  // past the last shuffle
  const int yy = (int)(pix / W), xx = (int)(pix % W);
  const int64_t pooled = (image * (HW / W / 2) + yy / 2) * (W / 2) + xx / 2;  // the next slice's pool output
  const int sel = (yy & 1) * 2 + (xx & 1);
  for (int c = q; c < C8; c += GROUP) {
    float a[8], b[8], wc[8], out[8];
    load_chunk(ap, bp, w, c, a, b, wc);
#pragma unroll
    for (int k = 0; k < 8; ++k) out[k] = feature_grad(a[k], b[k], wc[k], ia, ib, g2, radial);
    if (g_next != nullptr) {
      float gn[8];
      unpack(g_next[pooled * C8 + c], gn);
      union {
        uint2 raw;
        uint8_t b[8];
      } ch;
      ch.raw = choice[pooled * C8 + c];
#pragma unroll
      for (int k = 0; k < 8; ++k) out[k] += ch.b[k] == sel ? gn[k] : 0.f;
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) out[k] = a[k] <= 0.f ? 0.f : out[k];  // the ReLU (threshold_backward's rule)
    g[pp * C8 + c] = pack(out);
  }
}

__global__ void relu_mask_kernel(int64_t total, uint4* __restrict__ g, const uint4* __restrict__ y) {
  const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= total) return;
  Half8 gv, yv;
  gv.raw = g[t];
  yv.raw = y[t];
  const __half zero = __float2half_rn(0.f);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    gv.h2[i].x = __hle(yv.h2[i].x, zero) ? zero : gv.h2[i].x;
    gv.h2[i].y = __hle(yv.h2[i].y, zero) ? zero : gv.h2[i].y;
  }
  g[t] = gv.raw;
}

unsigned blocks(int64_t threads) { return (unsigned)((threads + THREADS - 1) / THREADS); }

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "fused_ops.", what, ": launch failed: ", cudaGetErrorString(err));
}

void check_half_map(const torch::Tensor& t, const char* what, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.dim() == 4 && t.scalar_type() == at::kHalf &&
                  t.is_contiguous(at::MemoryFormat::ChannelsLast) && t.size(1) % 8 == 0 &&
                  reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0,
              "fused_ops.", what, ": ", name, " must be a 16-byte aligned channels-last float16 (N, C, H, W) CUDA ",
              "map with C a multiple of 8, got ", t.sizes(), " ", t.scalar_type());
}

void check_float(const torch::Tensor& t, const char* what, const char* name, int64_t numel) {
  TORCH_CHECK(t.is_cuda() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == numel,
              "fused_ops.", what, ": ", name, " must be a contiguous float32 CUDA tensor of ", numel, " elements");
}

}  // namespace

// x, y: (n, 3, H, W) float32 contiguous; shift, scale: 3 floats -> (2n, CP, H, W) float16 channels-last.
torch::Tensor lpips_half_prep(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& shift,
                              const torch::Tensor& scale, int64_t channels) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 4 && x.size(1) == 3 && x.scalar_type() == at::kFloat && x.is_contiguous() &&
                  y.sizes() == x.sizes() && y.scalar_type() == at::kFloat && y.is_contiguous() && y.is_cuda(),
              "fused_ops.lpips_half_prep: x and y must be contiguous float32 (n, 3, H, W) CUDA tensors");
  TORCH_CHECK(channels >= 3 && channels <= 8, "fused_ops.lpips_half_prep: channels must be 3..8");
  check_float(shift, "lpips_half_prep", "shift", 3);
  check_float(scale, "lpips_half_prep", "scale", 3);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.size(0), H = x.size(2), W = x.size(3);
  torch::Tensor out = torch::empty({2 * n, channels, H, W},
                                   x.options().dtype(at::kHalf).memory_format(at::MemoryFormat::ChannelsLast));
  const int64_t total = 2 * n * H * W;
  if (total == 0) return out;
  prep_kernel<<<blocks(total), THREADS, 0, c10::cuda::getCurrentCUDAStream()>>>(
      total, n, H * W, (int)channels, x.data_ptr<float>(), y.data_ptr<float>(), shift.data_ptr<float>(),
      scale.data_ptr<float>(), reinterpret_cast<__half*>(out.data_ptr<at::Half>()));
  check_launch("lpips_half_prep");
  return out;
}

// g: (n, CP, H, W) float16 channels-last (the first convolution's scaled input gradient) -> (n, 3, H, W) float32.
torch::Tensor lpips_half_prep_backward(const torch::Tensor& g, const torch::Tensor& scale, const torch::Tensor& amax,
                                       const torch::Tensor& gout) {
  TORCH_CHECK(g.is_cuda() && g.dim() == 4 && g.scalar_type() == at::kHalf && g.size(1) >= 3 &&
                  g.is_contiguous(at::MemoryFormat::ChannelsLast),
              "fused_ops.lpips_half_prep_backward: g must be a channels-last float16 (n, CP, H, W) CUDA map");
  const int64_t n = g.size(0), H = g.size(2), W = g.size(3);
  check_float(scale, "lpips_half_prep_backward", "scale", 3);
  check_float(amax, "lpips_half_prep_backward", "amax", 1);
  check_float(gout, "lpips_half_prep_backward", "gout", n);
  const c10::cuda::CUDAGuard guard(g.device());
  torch::Tensor grad_x = torch::empty({n, 3, H, W}, g.options().dtype(at::kFloat));
  const int64_t total = n * H * W;
  if (total == 0) return grad_x;
  prep_backward_kernel<<<blocks(total), THREADS, 0, c10::cuda::getCurrentCUDAStream()>>>(
      total, H * W, (int)g.size(1), reinterpret_cast<const __half*>(g.data_ptr<at::Half>()), scale.data_ptr<float>(),
      amax.data_ptr<float>(), gout.data_ptr<float>(), (int)n, grad_x.data_ptr<float>());
  check_launch("lpips_half_prep_backward");
  return grad_x;
}

// feat: (2n, C, H, W) float16 channels-last (render's n, then ground truth's n); w: (C,) float32. Writes
// d[i, offset + pixel] = the pixel's distance / (H W) for each render image i (d: (n, row) float32) and raises
// amax (float32, 1 element, >= 0) to the largest feature gradient element for a unit output gradient.
void lpips_half_distance(const torch::Tensor& feat, const torch::Tensor& w, double eps, torch::Tensor& d,
                         int64_t offset, torch::Tensor& amax) {
  check_half_map(feat, "lpips_half_distance", "feat");
  TORCH_CHECK(feat.size(0) % 2 == 0, "fused_ops.lpips_half_distance: feat must hold both images' batches");
  const int64_t n = feat.size(0) / 2, C = feat.size(1), HW = feat.size(2) * feat.size(3);
  check_float(w, "lpips_half_distance", "w", C);
  check_float(amax, "lpips_half_distance", "amax", 1);
  TORCH_CHECK(d.is_cuda() && d.scalar_type() == at::kFloat && d.dim() == 2 && d.size(0) == n && d.is_contiguous() &&
                  offset >= 0 && offset + HW <= d.size(1),
              "fused_ops.lpips_half_distance: d must be a contiguous float32 (n, row) tensor with room at offset");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(w.data_ptr()) % 16 == 0, "fused_ops.lpips_half_distance: w unaligned");
  const c10::cuda::CUDAGuard guard(feat.device());
  const int64_t P = n * HW;
  if (P == 0) return;
  distance_kernel<<<blocks(P * GROUP), THREADS, 0, c10::cuda::getCurrentCUDAStream()>>>(
      P, HW, d.size(1), offset, (int)(C / 8), reinterpret_cast<const uint4*>(feat.data_ptr<at::Half>()), P * C / 8,
      reinterpret_cast<const float4*>(w.data_ptr<float>()), (float)eps, 1.f / (float)HW, d.data_ptr<float>(),
      amax.data_ptr<float>());
  check_launch("lpips_half_distance");
}

// The render's scaled gradient at feat's first n images, (n, C, H, W) float16 channels-last: the distance's
// gradient for output gradient gout (n,) plus, when g_next (n, C, H/2, W/2) is given, the next slice's
// gradient through its pool (choice: (n, H/2, W/2, C) uint8), masked by the ReLU that produced feat.
torch::Tensor lpips_half_backward(const torch::Tensor& feat, const torch::Tensor& w, double eps,
                                  const torch::Tensor& gout, const torch::Tensor& amax,
                                  const c10::optional<torch::Tensor>& g_next,
                                  const c10::optional<torch::Tensor>& choice) {
  check_half_map(feat, "lpips_half_backward", "feat");
  const int64_t n = feat.size(0) / 2, C = feat.size(1), H = feat.size(2), W = feat.size(3);
  check_float(w, "lpips_half_backward", "w", C);
  check_float(gout, "lpips_half_backward", "gout", n);
  check_float(amax, "lpips_half_backward", "amax", 1);
  TORCH_CHECK(g_next.has_value() == choice.has_value(),
              "fused_ops.lpips_half_backward: g_next and choice come together");
  if (g_next.has_value()) {
    check_half_map(*g_next, "lpips_half_backward", "g_next");
    TORCH_CHECK(H % 2 == 0 && W % 2 == 0 && g_next->sizes() == torch::IntArrayRef({n, C, H / 2, W / 2}),
                "fused_ops.lpips_half_backward: g_next must be (n, C, H/2, W/2), got ", g_next->sizes());
    TORCH_CHECK(choice->is_cuda() && choice->scalar_type() == at::kByte && choice->is_contiguous() &&
                    choice->sizes() == torch::IntArrayRef({n, H / 2, W / 2, C}),
                "fused_ops.lpips_half_backward: choice must be the pool's (n, H/2, W/2, C) uint8 tensor");
  }
  const c10::cuda::CUDAGuard guard(feat.device());
  torch::Tensor g = torch::empty({n, C, H, W}, feat.options().memory_format(at::MemoryFormat::ChannelsLast));
  const int64_t P = n * H * W;
  if (P == 0) return g;
  backward_kernel<<<blocks(P * GROUP), THREADS, 0, c10::cuda::getCurrentCUDAStream()>>>(
      P, H * W, (int)W, (int)(C / 8), reinterpret_cast<const uint4*>(feat.data_ptr<at::Half>()), P * C / 8,
      reinterpret_cast<const float4*>(w.data_ptr<float>()), (float)eps, 1.f / (float)(H * W), gout.data_ptr<float>(),
      amax.data_ptr<float>(), (int)n,
      g_next.has_value() ? reinterpret_cast<const uint4*>(g_next->data_ptr<at::Half>()) : nullptr,
      choice.has_value() ? reinterpret_cast<const uint2*>(choice->data_ptr<uint8_t>()) : nullptr,
      reinterpret_cast<uint4*>(g.data_ptr<at::Half>()));
  check_launch("lpips_half_backward");
  return g;
}

// g *= (y > 0), in place, threshold_backward's rule (0 where y <= 0); g: (n, C, H, W), y: at least n images of
// the same maps (the batch the ReLU produced), both float16 channels-last.
void lpips_half_relu_mask(torch::Tensor& g, const torch::Tensor& y) {
  check_half_map(g, "lpips_half_relu_mask", "g");
  check_half_map(y, "lpips_half_relu_mask", "y");
  TORCH_CHECK(y.size(0) >= g.size(0) && y.size(1) == g.size(1) && y.size(2) == g.size(2) && y.size(3) == g.size(3),
              "fused_ops.lpips_half_relu_mask: y must hold g's images, got ", y.sizes(), " for ", g.sizes());
  const c10::cuda::CUDAGuard guard(g.device());
  const int64_t total = g.numel() / 8;
  if (total == 0) return;
  relu_mask_kernel<<<blocks(total), THREADS, 0, c10::cuda::getCurrentCUDAStream()>>>(
      total, reinterpret_cast<uint4*>(g.data_ptr<at::Half>()), reinterpret_cast<const uint4*>(y.data_ptr<at::Half>()));
  check_launch("lpips_half_relu_mask");
}
