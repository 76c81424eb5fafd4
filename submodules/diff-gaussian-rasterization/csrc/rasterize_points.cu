// Torch glue: input checks, buffer allocation, the prefix sum and the radix sort (CUB), kernel launches.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cub/cub.cuh>
#include <torch/extension.h>

#include <string>
#include <tuple>
#include <vector>

#include "config.h"
#include "rasterize_points.h"
#include "rasterizer.h"

namespace {

void check_tensor(const torch::Tensor& t, const char* name, const torch::Device& device) {
  TORCH_CHECK(t.device() == device, "diff_gaussian_rasterization: ", name, " is on ", t.device(),
              " but means3D is on ", device, "; move every input to the same CUDA device");
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, "diff_gaussian_rasterization: ", name,
              " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), "diff_gaussian_rasterization: ", name, " must be contiguous");
}

void check_shape(const torch::Tensor& t, const char* name, int64_t P, int64_t cols) {
  TORCH_CHECK(t.dim() >= 1 && t.size(0) == P && t.numel() == P * cols, "diff_gaussian_rasterization: ", name,
              " must have shape (", P, ", ", cols, "), got ", t.sizes());
}

void debug_check(bool debug, const char* stage) {
  if (!debug) return;
  cudaError_t err = cudaDeviceSynchronize();
  if (err == cudaSuccess) err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "diff_gaussian_rasterization: CUDA error after ", stage, ": ",
              cudaGetErrorString(err));
}

void check_launch(const char* stage) {
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "diff_gaussian_rasterization: launch of ", stage, " failed: ",
              cudaGetErrorString(err));
}

dgr::Camera make_camera(const torch::Tensor& viewmatrix, const torch::Tensor& projmatrix, const torch::Tensor& campos,
                        int W, int H, float tanfovx, float tanfovy) {
  dgr::Camera cam;
  cam.view = viewmatrix.data_ptr<float>();
  cam.proj = projmatrix.data_ptr<float>();
  cam.campos = campos.data_ptr<float>();
  cam.width = W;
  cam.height = H;
  cam.tanfovx = tanfovx;
  cam.tanfovy = tanfovy;
  cam.focal_x = W / (2.0f * tanfovx);
  cam.focal_y = H / (2.0f * tanfovy);
  return cam;
}

// A pinned host word for the one device-to-host read (the pair count), allocated once per thread.
uint32_t* pinned_count() {
  static thread_local uint32_t* p = nullptr;
  if (p == nullptr) C10_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&p), sizeof(uint32_t), cudaHostAllocPortable));
  return p;
}

int highest_bit(uint32_t n) {
  int b = 0;
  while ((n >> b) != 0 && b < 32) b++;
  return b;
}

}  // namespace

std::tuple<int64_t, std::vector<torch::Tensor>> rasterize_forward(
    const torch::Tensor& background, const torch::Tensor& means3D, const torch::Tensor& colors,
    const torch::Tensor& opacity, const torch::Tensor& scales, const torch::Tensor& rotations, double scale_modifier,
    const torch::Tensor& cov3D_precomp, const torch::Tensor& viewmatrix, const torch::Tensor& projmatrix,
    double tan_fovx, double tan_fovy, int64_t image_height, int64_t image_width, const torch::Tensor& sh,
    int64_t degree, const torch::Tensor& campos, bool prefiltered, bool return_depth, bool return_alpha,
    bool debug) {
  (void)prefiltered;  // culling is always done (the original's prefiltered=True only skips a sanity check)
  TORCH_CHECK(means3D.is_cuda(), "diff_gaussian_rasterization: means3D must be a CUDA tensor");
  TORCH_CHECK(means3D.dim() == 2 && means3D.size(1) == 3,
              "diff_gaussian_rasterization: means3D must have shape (P, 3), got ", means3D.sizes());
  TORCH_CHECK(image_height > 0 && image_width > 0, "diff_gaussian_rasterization: image size must be positive");
  TORCH_CHECK(tan_fovx > 0 && tan_fovy > 0, "diff_gaussian_rasterization: tanfovx/tanfovy must be positive");
  const auto device = means3D.device();
  const c10::cuda::CUDAGuard guard(device);
  const int64_t P = means3D.size(0);
  const int H = (int)image_height, W = (int)image_width;
  check_tensor(means3D, "means3D", device);
  check_tensor(background, "bg", device);
  TORCH_CHECK(background.numel() == 3, "diff_gaussian_rasterization: bg must have 3 values");
  check_tensor(opacity, "opacities", device);
  check_shape(opacity, "opacities", P, 1);
  check_tensor(viewmatrix, "viewmatrix", device);
  check_tensor(projmatrix, "projmatrix", device);
  check_tensor(campos, "campos", device);
  TORCH_CHECK(viewmatrix.numel() == 16 && projmatrix.numel() == 16 && campos.numel() == 3,
              "diff_gaussian_rasterization: viewmatrix/projmatrix must be 4x4 and campos 3 values");
  const bool has_cov = cov3D_precomp.numel() > 0;
  if (has_cov) {
    check_tensor(cov3D_precomp, "cov3D_precomp", device);
    check_shape(cov3D_precomp, "cov3D_precomp", P, 6);
  } else {
    check_tensor(scales, "scales", device);
    check_shape(scales, "scales", P, 3);
    check_tensor(rotations, "rotations", device);
    check_shape(rotations, "rotations", P, 4);
  }
  const bool has_colors = colors.numel() > 0;
  int M = 0;
  if (has_colors) {
    check_tensor(colors, "colors_precomp", device);
    check_shape(colors, "colors_precomp", P, 3);
  } else {
    check_tensor(sh, "shs", device);
    TORCH_CHECK(sh.dim() == 3 && sh.size(0) == P && sh.size(2) == 3,
                "diff_gaussian_rasterization: shs must have shape (P, K, 3), got ", sh.sizes());
    M = (int)sh.size(1);
    TORCH_CHECK(degree >= 0 && degree <= 3 && (degree + 1) * (degree + 1) <= M,
                "diff_gaussian_rasterization: sh_degree ", degree, " needs ", (degree + 1) * (degree + 1),
                " coefficients per Gaussian, shs has ", M);
  }

  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto fopt = means3D.options();
  const auto iopt = fopt.dtype(torch::kInt32);
  const dim3 grid((W + TILE_X - 1) / TILE_X, (H + TILE_Y - 1) / TILE_Y, 1);
  const int n_tiles = grid.x * grid.y;
  const dgr::Camera cam = make_camera(viewmatrix, projmatrix, campos, W, H, (float)tan_fovx, (float)tan_fovy);

  // Per-Gaussian state (one allocation for the float parts).
  torch::Tensor radii = torch::empty({P}, iopt);
  torch::Tensor fbuf = torch::empty({P * 16}, fopt);  // conic_opacity 4 | xy 2 | depth 1 | rgb 3 | cov 6
  torch::Tensor conic_op = fbuf.narrow(0, 0, 4 * P).view({P, 4});
  torch::Tensor xy = fbuf.narrow(0, 4 * P, 2 * P).view({P, 2});
  torch::Tensor depths = fbuf.narrow(0, 6 * P, P);
  torch::Tensor rgb = fbuf.narrow(0, 7 * P, 3 * P).view({P, 3});
  torch::Tensor cov3D = fbuf.narrow(0, 10 * P, 6 * P).view({P, 6});
  torch::Tensor clamped = torch::empty({P, 3}, fopt.dtype(torch::kUInt8));
  torch::Tensor tiles = torch::empty({2 * P}, iopt);  // tiles touched | inclusive prefix sum
  uint32_t* touched = reinterpret_cast<uint32_t*>(tiles.data_ptr<int>());
  uint32_t* offsets = touched + P;

  uint32_t* count_host = pinned_count();
  if (P > 0) {
    size_t scan_bytes = 0;
    cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, touched, offsets, (int)P, stream);
    torch::Tensor scan_tmp = torch::empty({(int64_t)scan_bytes}, fopt.dtype(torch::kUInt8));
    dgr::preprocess((int)P, (int)degree, M, means3D.data_ptr<float>(), has_cov ? nullptr : scales.data_ptr<float>(),
                    (float)scale_modifier, has_cov ? nullptr : rotations.data_ptr<float>(), opacity.data_ptr<float>(),
                    has_colors ? nullptr : sh.data_ptr<float>(), has_colors ? colors.data_ptr<float>() : nullptr,
                    has_cov ? cov3D_precomp.data_ptr<float>() : nullptr, cam, grid, radii.data_ptr<int>(),
                    reinterpret_cast<float2*>(xy.data_ptr<float>()), depths.data_ptr<float>(),
                    cov3D.data_ptr<float>(), rgb.data_ptr<float>(), clamped.data_ptr<uint8_t>(),
                    reinterpret_cast<float4*>(conic_op.data_ptr<float>()), touched, stream);
    check_launch("preprocess");
    debug_check(debug, "preprocess");
    cub::DeviceScan::InclusiveSum(scan_tmp.data_ptr(), scan_bytes, touched, offsets, (int)P, stream);
    check_launch("prefix sum");
    C10_CUDA_CHECK(cudaMemcpyAsync(count_host, offsets + P - 1, sizeof(uint32_t), cudaMemcpyDeviceToHost, stream));
  }

  // Per-pixel outputs and state, allocated while the GPU preprocesses (before the one host sync).
  torch::Tensor out_color = torch::empty({3, H, W}, fopt);
  torch::Tensor out_depth = return_depth ? torch::empty({1, H, W}, fopt) : torch::empty({0}, fopt);
  torch::Tensor out_alpha = return_alpha ? torch::empty({1, H, W}, fopt) : torch::empty({0}, fopt);
  torch::Tensor final_T = torch::empty({H, W}, fopt);
  torch::Tensor n_contrib = torch::empty({H, W}, iopt);
  torch::Tensor ranges = torch::zeros({n_tiles, 2}, iopt);

  int64_t num_rendered = 0;
  if (P > 0) {
    C10_CUDA_CHECK(cudaStreamSynchronize(stream));  // the number of (tile, Gaussian) pairs sizes the sort
    num_rendered = *count_host;
    TORCH_CHECK(num_rendered < (int64_t)1 << 31, "diff_gaussian_rasterization: ", num_rendered,
                " Gaussian-tile pairs overflow the 32-bit index; render fewer or smaller Gaussians");
  }

  torch::Tensor point_list;
  const int R = (int)num_rendered;
  if (R > 0) {
    const int end_bit = 32 + highest_bit((uint32_t)n_tiles);
    size_t sort_bytes = 0;
    {
      cub::DoubleBuffer<uint64_t> qk(nullptr, nullptr);
      cub::DoubleBuffer<uint32_t> qv(nullptr, nullptr);
      cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, qk, qv, R, 0, end_bit, stream);
    }
    // Keys (double buffer) and the sort's scratch in one allocation; the values stay their own tensor
    // because the sorted ones are kept for the backward pass.
    const int64_t key_bytes = 16 * (int64_t)R;
    const int64_t tmp_off = (key_bytes + 255) / 256 * 256;
    torch::Tensor kbuf = torch::empty({tmp_off + (int64_t)sort_bytes}, fopt.dtype(torch::kUInt8));
    torch::Tensor vbuf = torch::empty({2 * (int64_t)R}, iopt);
    uint64_t* keys_in = reinterpret_cast<uint64_t*>(kbuf.data_ptr<uint8_t>());
    uint64_t* keys_alt = keys_in + R;
    void* sort_tmp = kbuf.data_ptr<uint8_t>() + tmp_off;
    uint32_t* vals_in = reinterpret_cast<uint32_t*>(vbuf.data_ptr<int>());
    uint32_t* vals_alt = vals_in + R;
    dgr::duplicate_with_keys((int)P, reinterpret_cast<const float2*>(xy.data_ptr<float>()), depths.data_ptr<float>(),
                             offsets, radii.data_ptr<int>(), grid, keys_in, vals_in, stream);
    check_launch("duplicate_with_keys");
    debug_check(debug, "duplicate_with_keys");
    cub::DoubleBuffer<uint64_t> dkeys(keys_in, keys_alt);
    cub::DoubleBuffer<uint32_t> dvals(vals_in, vals_alt);
    cub::DeviceRadixSort::SortPairs(sort_tmp, sort_bytes, dkeys, dvals, R, 0, end_bit, stream);
    check_launch("radix sort");
    debug_check(debug, "radix sort");
    dgr::tile_ranges(R, dkeys.Current(), reinterpret_cast<uint2*>(ranges.data_ptr<int>()), stream);
    check_launch("tile_ranges");
    point_list = dvals.Current() == vals_in ? vbuf.narrow(0, 0, R) : vbuf.narrow(0, R, R);
  } else {
    point_list = torch::empty({0}, iopt);
  }

  dgr::render(grid, reinterpret_cast<const uint2*>(ranges.data_ptr<int>()),
              reinterpret_cast<const uint32_t*>(point_list.numel() ? point_list.data_ptr<int>() : nullptr), W, H,
              reinterpret_cast<const float2*>(xy.data_ptr<float>()), rgb.data_ptr<float>(),
              reinterpret_cast<const float4*>(conic_op.data_ptr<float>()), depths.data_ptr<float>(),
              background.data_ptr<float>(), final_T.data_ptr<float>(),
              reinterpret_cast<uint32_t*>(n_contrib.data_ptr<int>()), out_color.data_ptr<float>(),
              return_depth ? out_depth.data_ptr<float>() : nullptr,
              return_alpha ? out_alpha.data_ptr<float>() : nullptr, stream);
  check_launch("render");
  debug_check(debug, "render");

  return {num_rendered,
          {out_color, radii, out_depth, out_alpha, fbuf, clamped, point_list, ranges, final_T, n_contrib}};
}

std::vector<torch::Tensor> rasterize_backward(
    const torch::Tensor& background, const torch::Tensor& means3D, const torch::Tensor& radii,
    const torch::Tensor& colors, const torch::Tensor& scales, const torch::Tensor& rotations, double scale_modifier,
    const torch::Tensor& cov3D_precomp, const torch::Tensor& viewmatrix, const torch::Tensor& projmatrix,
    double tan_fovx, double tan_fovy, const torch::Tensor& dL_dout_color, const torch::Tensor& dL_dout_depth,
    const torch::Tensor& dL_dout_alpha, const torch::Tensor& sh, int64_t degree, const torch::Tensor& campos,
    const torch::Tensor& fbuf, const torch::Tensor& clamped, const torch::Tensor& point_list,
    const torch::Tensor& ranges, const torch::Tensor& final_T, const torch::Tensor& n_contrib, bool debug) {
  const auto device = means3D.device();
  const c10::cuda::CUDAGuard guard(device);
  const int64_t P = means3D.size(0);
  const int H = (int)dL_dout_color.size(1), W = (int)dL_dout_color.size(2);
  check_tensor(dL_dout_color, "grad of the image", device);
  const bool has_depth = dL_dout_depth.numel() > 0, has_alpha = dL_dout_alpha.numel() > 0;
  if (has_depth) check_tensor(dL_dout_depth, "grad of the depth", device);
  if (has_alpha) check_tensor(dL_dout_alpha, "grad of the alpha", device);
  const bool has_cov = cov3D_precomp.numel() > 0;
  const bool has_colors = colors.numel() > 0;
  const int M = has_colors ? 0 : (int)sh.size(1);

  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto fopt = means3D.options();
  const dim3 grid((W + TILE_X - 1) / TILE_X, (H + TILE_Y - 1) / TILE_Y, 1);
  const dgr::Camera cam = make_camera(viewmatrix, projmatrix, campos, W, H, (float)tan_fovx, (float)tan_fovy);

  const float* conic_op = fbuf.data_ptr<float>();
  const float* xy = conic_op + 4 * P;
  const float* depths = conic_op + 6 * P;
  const float* rgb = conic_op + 7 * P;
  const float* cov3D = has_cov ? cov3D_precomp.data_ptr<float>() : conic_op + 10 * P;

  // Accumulators of the blending backward, one zeroed buffer: means2D 3 | conic 3 | colour 3 | opacity | depth.
  torch::Tensor acc = torch::zeros({P * 11}, fopt);
  float* a = acc.data_ptr<float>();
  torch::Tensor dL_dmeans2D = acc.narrow(0, 0, 3 * P).view({P, 3});
  torch::Tensor dL_dcolors = acc.narrow(0, 6 * P, 3 * P).view({P, 3});
  torch::Tensor dL_dopacity = acc.narrow(0, 9 * P, P).view({P, 1});

  torch::Tensor dL_dmeans3D = torch::empty({P, 3}, fopt);
  torch::Tensor dL_dsh = has_colors ? torch::zeros({0}, fopt) : torch::empty({P, M, 3}, fopt);
  torch::Tensor dL_dscales = has_cov ? torch::zeros({0}, fopt) : torch::empty({P, 3}, fopt);
  torch::Tensor dL_drots = has_cov ? torch::zeros({0}, fopt) : torch::empty({P, 4}, fopt);
  torch::Tensor dL_dcov3D = has_cov ? torch::empty({P, 6}, fopt) : torch::zeros({0}, fopt);
  if (P == 0) return {dL_dmeans2D, dL_dcolors, dL_dopacity, dL_dmeans3D, dL_dcov3D, dL_dsh, dL_dscales, dL_drots};

  dgr::render_backward(grid, reinterpret_cast<const uint2*>(ranges.data_ptr<int>()),
                       reinterpret_cast<const uint32_t*>(point_list.numel() ? point_list.data_ptr<int>() : nullptr),
                       W, H, background.data_ptr<float>(), reinterpret_cast<const float2*>(xy),
                       reinterpret_cast<const float4*>(conic_op), rgb, depths, final_T.data_ptr<float>(),
                       reinterpret_cast<const uint32_t*>(n_contrib.data_ptr<int>()), dL_dout_color.data_ptr<float>(),
                       has_depth ? dL_dout_depth.data_ptr<float>() : nullptr,
                       has_alpha ? dL_dout_alpha.data_ptr<float>() : nullptr, a, a + 3 * P, a + 9 * P, a + 6 * P,
                       a + 10 * P, stream);
  check_launch("render_backward");
  debug_check(debug, "render_backward");
  dgr::preprocess_backward((int)P, (int)degree, M, means3D.data_ptr<float>(), radii.data_ptr<int>(),
                           has_colors ? nullptr : sh.data_ptr<float>(), clamped.data_ptr<uint8_t>(),
                           has_cov ? nullptr : scales.data_ptr<float>(), has_cov ? nullptr : rotations.data_ptr<float>(),
                           (float)scale_modifier, cov3D, has_cov, cam, a, a + 3 * P, a + 6 * P,
                           has_depth ? a + 10 * P : nullptr, has_colors, dL_dmeans3D.data_ptr<float>(),
                           has_colors ? nullptr : dL_dsh.data_ptr<float>(),
                           has_cov ? nullptr : dL_dscales.data_ptr<float>(),
                           has_cov ? nullptr : dL_drots.data_ptr<float>(),
                           has_cov ? dL_dcov3D.data_ptr<float>() : nullptr, stream);
  check_launch("preprocess_backward");
  debug_check(debug, "preprocess_backward");
  return {dL_dmeans2D, dL_dcolors, dL_dopacity, dL_dmeans3D, dL_dcov3D, dL_dsh, dL_dscales, dL_drots};
}

torch::Tensor mark_visible(const torch::Tensor& means3D, const torch::Tensor& viewmatrix) {
  TORCH_CHECK(means3D.dim() == 2 && means3D.size(1) == 3, "mark_visible: means3D must be (P, 3)");
  // view-space z = row 2 of the (column-major) view matrix applied to (m, 1)
  const torch::Tensor v = viewmatrix.reshape({4, 4});
  const torch::Tensor z = means3D.matmul(v.index({torch::indexing::Slice(0, 3), 2})) + v.index({3, 2});
  return z > NEAR_CULL;
}
