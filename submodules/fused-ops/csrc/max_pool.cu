// 2x2, stride-2 max-pool over channels-last maps (VGG's pools in LPIPS' half trunk), with the choice of
// each output element kept in one byte (0..3: which of the window's four inputs won) instead of torch's
// int64 flat index: at 512 x 512 the first pool's indices alone are 67 MB written and read again a step.
// One thread per output pixel and 16 bytes of channels (8 float16); the window's four inputs are read as
// 16-byte vectors. Ties and NaN as torch: scanning (0,0), (0,1), (1,0), (1,1), an input wins if it is
// greater than the best so far or NaN. The backward writes every input element (each belongs to exactly
// one window), so it needs no zero-fill pass.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <vector>

namespace {

constexpr int THREADS = 256;

template <int V>
struct ChoiceWord;  // V one-byte choices stored as one word
template <>
struct ChoiceWord<8> {
  using type = uint2;
};
template <>
struct ChoiceWord<4> {
  using type = uint32_t;
};

template <typename T>
constexpr int kLanes = 16 / sizeof(T);  // channels in 16 bytes

template <typename T>
union Vec16 {
  uint4 raw;
  T v[kLanes<T>];
};

template <typename T>
union Choices {
  typename ChoiceWord<kLanes<T>>::type raw;
  uint8_t b[kLanes<T>];
};

// Thread t's output pixel and channel group: its element offset in the output (and choices), the offsets of
// its window's four inputs (row-major in the window), and its image.
struct Window {
  int64_t n, out, in[4];
};

template <int V>
__device__ __forceinline__ Window window_of(int64_t t, int C, int Ho, int Wo) {
  const int groups = C / V;
  const int g = (int)(t % groups);
  int64_t r = t / groups;
  const int ox = (int)(r % Wo);
  r /= Wo;
  const int oy = (int)(r % Ho);
  const int64_t n = r / Ho;
  const int64_t W = 2 * (int64_t)Wo;
  const int64_t first = ((n * 2 * Ho + 2 * oy) * W + 2 * ox) * C + (int64_t)g * V;
  return {n, ((n * Ho + oy) * Wo + ox) * C + (int64_t)g * V, {first, first + C, first + W * C, first + W * C + C}};
}

template <typename T>
__global__ void max_pool2x2_forward_kernel(int64_t total, int64_t keep, int C, int Ho, int Wo,
                                           const T* __restrict__ x, T* __restrict__ y,
                                           uint8_t* __restrict__ choice) {
  constexpr int V = kLanes<T>;
  const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= total) return;
  const Window w = window_of<V>(t, C, Ho, Wo);
  Vec16<T> best;
  best.raw = *reinterpret_cast<const uint4*>(x + w.in[0]);
  Choices<T> won;
  float value[V];
#pragma unroll
  for (int i = 0; i < V; ++i) {
    won.b[i] = 0;
    value[i] = static_cast<float>(best.v[i]);
  }
#pragma unroll
  for (int k = 1; k < 4; ++k) {
    Vec16<T> cur;
    cur.raw = *reinterpret_cast<const uint4*>(x + w.in[k]);
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const float v = static_cast<float>(cur.v[i]);
      if (v > value[i] || isnan(v)) {
        value[i] = v;
        best.v[i] = cur.v[i];
        won.b[i] = (uint8_t)k;
      }
    }
  }
  *reinterpret_cast<uint4*>(y + w.out) = best.raw;
  if (w.n < keep) *reinterpret_cast<decltype(won.raw)*>(choice + w.out) = won.raw;
}

template <typename T>
__global__ void max_pool2x2_backward_kernel(int64_t total, int C, int Ho, int Wo, const T* __restrict__ grad_y,
                                            const uint8_t* __restrict__ choice, T* __restrict__ grad_x) {
  constexpr int V = kLanes<T>;
  const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= total) return;
  const Window w = window_of<V>(t, C, Ho, Wo);
  Vec16<T> grad;
  grad.raw = *reinterpret_cast<const uint4*>(grad_y + w.out);
  Choices<T> won;
  won.raw = *reinterpret_cast<const decltype(won.raw)*>(choice + w.out);
  Vec16<T> zeros;  // all-zero bits: +0 in every supported dtype, no float conversion in device code
  zeros.raw = make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    Vec16<T> part;
#pragma unroll
    for (int i = 0; i < V; ++i) part.v[i] = won.b[i] == k ? grad.v[i] : zeros.v[i];
    *reinterpret_cast<uint4*>(grad_x + w.in[k]) = part.raw;
  }
}

void check_map(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast),
              "fused_ops.max_pool2x2: ", name, " must be a channels-last (N, C, H, W) CUDA tensor");
  TORCH_CHECK(t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kFloat,
              "fused_ops.max_pool2x2: ", name, " must be float16, bfloat16 or float32");
  TORCH_CHECK(t.size(1) % (16 / t.element_size()) == 0 && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0,
              "fused_ops.max_pool2x2: ", name, "'s channels must fill 16-byte vectors and start 16-byte aligned");
}

unsigned blocks_for(int64_t total) { return (unsigned)((total + THREADS - 1) / THREADS); }

// f(T{}) for the map's dtype T (float16, bfloat16, float32)
template <typename F>
void dispatch(at::ScalarType type, F&& f) {
  switch (type) {
    case at::kHalf: f(at::Half{}); break;
    case at::kBFloat16: f(at::BFloat16{}); break;
    case at::kFloat: f(float{}); break;
    default: TORCH_CHECK(false, "fused_ops.max_pool2x2: unsupported dtype ", type);
  }
}

}  // namespace

// x: (N, C, H, W) channels-last, H and W even -> {y (N, C, H/2, W/2) channels-last, choice (keep, H/2, W/2, C)
// uint8}: the choices of the first `keep` images only (the others need no backward).
std::vector<torch::Tensor> max_pool2x2_forward(const torch::Tensor& x, int64_t keep) {
  check_map(x, "x");
  TORCH_CHECK(x.size(2) % 2 == 0 && x.size(3) % 2 == 0, "fused_ops.max_pool2x2: H and W must be even, got ",
              x.sizes());
  TORCH_CHECK(keep >= 0 && keep <= x.size(0), "fused_ops.max_pool2x2: keep must be in [0, N]");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(1), Ho = x.size(2) / 2, Wo = x.size(3) / 2;
  torch::Tensor y = torch::empty({N, C, Ho, Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  torch::Tensor choice = torch::empty({keep, Ho, Wo, C}, x.options().dtype(torch::kUInt8));
  const int64_t total = N * Ho * Wo * (C / (16 / x.element_size()));
  if (total == 0) return {y, choice};
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    max_pool2x2_forward_kernel<T><<<blocks_for(total), THREADS, 0, stream>>>(
        total, keep, (int)C, (int)Ho, (int)Wo, x.data_ptr<T>(), y.data_ptr<T>(), choice.data_ptr<uint8_t>());
  });
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "fused_ops.max_pool2x2: launch failed: ", cudaGetErrorString(err));
  return {y, choice};
}

// grad_y: (K, C, Ho, Wo) channels-last, choice: (K, Ho, Wo, C) uint8 -> grad_x (K, C, 2 Ho, 2 Wo) channels-last.
torch::Tensor max_pool2x2_backward(const torch::Tensor& grad_y, const torch::Tensor& choice) {
  check_map(grad_y, "grad_y");
  const int64_t K = grad_y.size(0), C = grad_y.size(1), Ho = grad_y.size(2), Wo = grad_y.size(3);
  TORCH_CHECK(choice.is_cuda() && choice.scalar_type() == torch::kUInt8 && choice.is_contiguous() &&
                  choice.sizes() == torch::IntArrayRef({K, Ho, Wo, C}),
              "fused_ops.max_pool2x2: choice must be the forward's (K, Ho, Wo, C) uint8 tensor");
  const c10::cuda::CUDAGuard guard(grad_y.device());
  torch::Tensor grad_x =
      torch::empty({K, C, 2 * Ho, 2 * Wo}, grad_y.options().memory_format(at::MemoryFormat::ChannelsLast));
  const int64_t total = K * Ho * Wo * (C / (16 / grad_y.element_size()));
  if (total == 0) return grad_x;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch(grad_y.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    max_pool2x2_backward_kernel<T><<<blocks_for(total), THREADS, 0, stream>>>(
        total, (int)C, (int)Ho, (int)Wo, grad_y.data_ptr<T>(), choice.data_ptr<uint8_t>(), grad_x.data_ptr<T>());
  });
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "fused_ops.max_pool2x2: launch failed: ", cudaGetErrorString(err));
  return grad_x;
}
