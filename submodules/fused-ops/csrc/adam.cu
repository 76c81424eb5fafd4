// Adam over all of an optimiser's tensors in one launch, spread over the whole GPU.
//
// torch's fused Adam gives each 65536-element chunk of each tensor one thread block: the avatar's ~1-5 M
// parameters become ~20-80 blocks on a 132-SM GPU, ~30 us a launch and six launches a step (0.19 ms of a
// 1.8 ms training step on an H200, session 16). Here a grid that fills the GPU strides over 4-element units
// (float4 loads where a tensor's arrays are 16-byte aligned, scalar ones for its tail); the tensors'
// addresses, sizes and learning rates travel as kernel arguments (so a CUDA-graph capture bakes in those of
// its own gradient buffers). The update is torch's Adam without weight decay, amsgrad or maximize:
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps),  t = the tensor's step count (on the device,
// incremented by the caller before the launch).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <algorithm>
#include <vector>

namespace {

constexpr int MAX_TENSORS = 32;  // per launch; more are split over several launches
constexpr int THREADS = 256;

struct AdamTensors {
  float* param[MAX_TENSORS];
  const float* grad[MAX_TENSORS];
  float* exp_avg[MAX_TENSORS];
  float* exp_avg_sq[MAX_TENSORS];
  const float* step[MAX_TENSORS];
  float lr[MAX_TENSORS];
  int64_t numel[MAX_TENSORS];
  int64_t end[MAX_TENSORS];  // inclusive prefix sums of the tensors' counts of 4-element units
  bool aligned[MAX_TENSORS];  // all four arrays 16-byte aligned: whole units move as float4
  int count;
};

__device__ __forceinline__ void adam_element(float& p, const float g, float& m, float& v, const float beta1,
                                             const float beta2, const float eps, const float step_size,
                                             const float bc2_sqrt) {
  m = beta1 * m + (1.f - beta1) * g;
  v = beta2 * v + (1.f - beta2) * g * g;
  p -= step_size * m / (sqrtf(v) / bc2_sqrt + eps);
}

__global__ void adam_kernel(const AdamTensors t, int64_t total_units, float beta1, float beta2, float eps) {
  // A grid-stride loop over 4-element units of all tensors (float4 loads: four times the bytes in flight per
  // thread of one-element units, which left the update at ~1.8 TB/s). A thread's units only increase, so it
  // finds each one's tensor by walking forward from the last, and computes that tensor's bias corrections once.
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  int k = -1;
  int64_t begin = 0, end = 0;
  float step_size = 0.f, bc2_sqrt = 1.f;
  for (int64_t u = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; u < total_units; u += stride) {
    if (u >= end) {
      do {
        k++;
        begin = end;
        end = t.end[k];
      } while (u >= end);
      const double step = *t.step[k];
      // the powers in double, rounded once: --use_fast_math's powf is an approximation whose error, after
      // the cancellation in 1 - beta2^t (0.006 at t = 6), moved the update by ~1e-5 relative from torch's
      const float bc1 = 1.f - (float)pow((double)beta1, step);
      bc2_sqrt = sqrtf(1.f - (float)pow((double)beta2, step));
      step_size = t.lr[k] / bc1;
    }
    const int64_t i = (u - begin) * 4;
    const int64_t n = t.numel[k];
    if (t.aligned[k] && i + 4 <= n) {
      float4 p = *reinterpret_cast<const float4*>(t.param[k] + i);
      const float4 g = __ldcs(reinterpret_cast<const float4*>(t.grad[k] + i));
      float4 m = *reinterpret_cast<const float4*>(t.exp_avg[k] + i);
      float4 v = *reinterpret_cast<const float4*>(t.exp_avg_sq[k] + i);
      adam_element(p.x, g.x, m.x, v.x, beta1, beta2, eps, step_size, bc2_sqrt);
      adam_element(p.y, g.y, m.y, v.y, beta1, beta2, eps, step_size, bc2_sqrt);
      adam_element(p.z, g.z, m.z, v.z, beta1, beta2, eps, step_size, bc2_sqrt);
      adam_element(p.w, g.w, m.w, v.w, beta1, beta2, eps, step_size, bc2_sqrt);
      *reinterpret_cast<float4*>(t.param[k] + i) = p;
      *reinterpret_cast<float4*>(t.exp_avg[k] + i) = m;
      *reinterpret_cast<float4*>(t.exp_avg_sq[k] + i) = v;
    } else {
      for (int64_t j = i; j < i + 4 && j < n; j++) {
        float p = t.param[k][j], m = t.exp_avg[k][j], v = t.exp_avg_sq[k][j];
        adam_element(p, t.grad[k][j], m, v, beta1, beta2, eps, step_size, bc2_sqrt);
        t.param[k][j] = p;
        t.exp_avg[k][j] = m;
        t.exp_avg_sq[k][j] = v;
      }
    }
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

void check(const torch::Tensor& t, const char* name, const torch::Tensor& like) {
  TORCH_CHECK(t.is_cuda() && t.device() == like.device(), "fused_ops.adam: ", name, " must be on ",
              like.device());
  TORCH_CHECK(t.scalar_type() == torch::kFloat32 && t.is_contiguous(), "fused_ops.adam: ", name,
              " must be contiguous float32");
  TORCH_CHECK(t.numel() == like.numel(), "fused_ops.adam: ", name, " has ", t.numel(), " elements, the parameter ",
              like.numel());
}

}  // namespace

void adam_step(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& grads,
               const std::vector<torch::Tensor>& exp_avgs, const std::vector<torch::Tensor>& exp_avg_sqs,
               const std::vector<torch::Tensor>& steps, const std::vector<double>& lrs, double beta1, double beta2,
               double eps) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n && steps.size() == n &&
                  lrs.size() == n,
              "fused_ops.adam: the tensor lists and learning rates must have one entry per parameter");
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  for (size_t first = 0; first < n; first += MAX_TENSORS) {
    AdamTensors t{};
    int64_t total = 0;
    t.count = (int)std::min(n - first, (size_t)MAX_TENSORS);
    for (int k = 0; k < t.count; k++) {
      const torch::Tensor& p = params[first + k];
      TORCH_CHECK(p.is_cuda() && p.scalar_type() == torch::kFloat32 && p.is_contiguous(),
                  "fused_ops.adam: parameters must be contiguous float32 CUDA tensors");
      check(grads[first + k], "a gradient", p);
      check(exp_avgs[first + k], "exp_avg", p);
      check(exp_avg_sqs[first + k], "exp_avg_sq", p);
      const torch::Tensor& s = steps[first + k];
      TORCH_CHECK(s.is_cuda() && s.device() == p.device() && s.scalar_type() == torch::kFloat32 && s.numel() == 1,
                  "fused_ops.adam: step counts must be one float32 element on the parameters' device");
      t.param[k] = p.data_ptr<float>();
      t.grad[k] = grads[first + k].data_ptr<float>();
      t.exp_avg[k] = exp_avgs[first + k].data_ptr<float>();
      t.exp_avg_sq[k] = exp_avg_sqs[first + k].data_ptr<float>();
      t.step[k] = s.data_ptr<float>();
      t.lr[k] = (float)lrs[first + k];
      t.numel[k] = p.numel();
      t.aligned[k] = aligned16(t.param[k]) && aligned16(t.grad[k]) && aligned16(t.exp_avg[k]) &&
                     aligned16(t.exp_avg_sq[k]);
      total += (p.numel() + 3) / 4;
      t.end[k] = total;
    }
    if (total == 0) continue;
    // enough threads to fill the GPU, each over a few units (bias corrections once per tensor and thread)
    int sms = 0;
    TORCH_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, params[0].get_device()) == cudaSuccess,
                "fused_ops.adam: cannot read the GPU's multiprocessor count");
    const int64_t fill = (int64_t)sms * 8;
    const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>((total + THREADS - 1) / THREADS, fill));
    adam_kernel<<<(unsigned)blocks, THREADS, 0, stream>>>(t, total, (float)beta1, (float)beta2, (float)eps);
    const cudaError_t err = cudaGetLastError();
    TORCH_CHECK(err == cudaSuccess, "fused_ops.adam: launch failed: ", cudaGetErrorString(err));
  }
}
