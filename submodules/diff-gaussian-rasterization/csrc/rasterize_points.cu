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

// ---- Buffer layouts -------------------------------------------------------------------------------------------
// Several arrays share one allocation. Each layout struct below names its arrays and has one carve() that lays
// them out in order, every array starting at the next multiple of its alignment (the element's natural alignment
// unless stated). The same carve() both sizes the allocation (required_bytes, on a null base) and hands out the
// pointers into it (from_base), so the size and the offsets cannot disagree and no call site spells an offset.

// Bump allocator over one byte buffer. With a null base it only measures: every pointer it returns is null.
class Chunk {
 public:
  explicit Chunk(void* base) : base_(static_cast<uint8_t*>(base)) {}

  template <typename T>
  T* take(int64_t count, size_t align = alignof(T)) {
    offset_ = (offset_ + align - 1) / align * align;
    T* p = base_ != nullptr ? reinterpret_cast<T*>(base_ + offset_) : nullptr;
    offset_ += (size_t)count * sizeof(T);
    return p;
  }
  size_t bytes() const { return offset_; }

 private:
  uint8_t* base_;
  size_t offset_ = 0;
};

// Bytes a Layout needs for the given counts.
template <typename Layout, typename... Counts>
size_t required_bytes(Counts... counts) {
  Chunk c(nullptr);
  Layout::carve(c, counts...);
  return c.bytes();
}

// The Layout's pointers into an allocation of at least required_bytes<Layout>(counts...).
template <typename Layout, typename... Counts>
Layout from_base(void* base, Counts... counts) {
  Chunk c(base);
  return Layout::carve(c, counts...);
}

// Elements of a buffer tensor needed to hold a Layout (the tensor's element size must divide the byte size).
template <typename Layout, typename... Counts>
int64_t required_numel(const torch::TensorOptions& opt, Counts... counts) {
  const size_t bytes = required_bytes<Layout>(counts...);
  const size_t elem = opt.dtype().itemsize();
  TORCH_INTERNAL_ASSERT(bytes % elem == 0, "buffer layout of ", bytes, " bytes is not a whole number of elements");
  return (int64_t)(bytes / elem);
}

// A field of a layout carved from `buf`, as a tensor view of `buf` with the given shape.
torch::Tensor field_view(const torch::Tensor& buf, const void* field, torch::IntArrayRef shape) {
  const ptrdiff_t byte_off = static_cast<const uint8_t*>(field) - static_cast<const uint8_t*>(buf.data_ptr());
  const int64_t elem = (int64_t)buf.element_size();
  TORCH_INTERNAL_ASSERT(byte_off >= 0 && byte_off % elem == 0, "field is not an element of its buffer");
  int64_t numel = 1;
  for (const int64_t d : shape) numel *= d;
  return buf.narrow(0, byte_off / elem, numel).view(shape);
}

// Forward per-Gaussian float state ("fbuf", a float tensor of 16 P values kept for the backward pass):
// conic_opacity 4 | means2D 2 | depths 1 | rgb 3 | cov3D 6 floats per Gaussian, each a block over all P.
// Float offsets 0, 4P, 6P, 7P, 10P; every block is naturally aligned without padding (4P floats = 16P bytes).
struct GeometryState {
  float4* conic_opacity;  // (P,) float4: conic (a, b, c) and opacity
  float2* means2D;        // (P,) float2: pixel-space centre
  float* depths;          // (P,) float: view-space z
  float* rgb;             // (P, 3) float: colour
  float* cov3D;           // (P, 6) float: 3D covariance upper triangle (unused when it is precomputed)

  static GeometryState carve(Chunk& c, int64_t P) {
    GeometryState g;
    g.conic_opacity = c.take<float4>(P);
    g.means2D = c.take<float2>(P);
    g.depths = c.take<float>(P);
    g.rgb = c.take<float>(3 * P);
    g.cov3D = c.take<float>(6 * P);
    return g;
  }
};

// Per-Gaussian tile counts (an int32 tensor of 2 P values): tiles_touched | its inclusive prefix sum.
struct TileCountState {
  uint32_t* tiles_touched;  // (P,) uint32: tiles each Gaussian overlaps
  uint32_t* offsets;        // (P,) uint32: inclusive prefix sum of tiles_touched (end of each Gaussian's pairs)

  static TileCountState carve(Chunk& c, int64_t P) {
    TileCountState t;
    t.tiles_touched = c.take<uint32_t>(P);
    t.offsets = c.take<uint32_t>(P);
    return t;
  }
};

// Sort keys and the radix sort's scratch (a byte tensor): keys | keys_alt | pad to 256 | sort_scratch.
struct BinningKeys {
  uint64_t* keys;      // (R,) uint64: tile << DEPTH_KEY_BITS | depth key, as duplicated
  uint64_t* keys_alt;  // (R,) uint64: the radix sort's second key buffer
  void* sort_scratch;  // (sort_bytes,) bytes: CUB radix sort temporary storage, 256-byte aligned

  static BinningKeys carve(Chunk& c, int64_t R, size_t sort_bytes) {
    BinningKeys k;
    k.keys = c.take<uint64_t>(R);
    k.keys_alt = c.take<uint64_t>(R);
    k.sort_scratch = c.take<uint8_t>((int64_t)sort_bytes, 256);
    return k;
  }
};

// Sort values (an int32 tensor of 2 R values): values | values_alt. A separate tensor because the sorted half is
// returned (as point_list) and kept for the backward pass.
struct BinningValues {
  uint32_t* values;      // (R,) uint32: Gaussian index of each key, as duplicated
  uint32_t* values_alt;  // (R,) uint32: the radix sort's second value buffer

  static BinningValues carve(Chunk& c, int64_t R) {
    BinningValues v;
    v.values = c.take<uint32_t>(R);
    v.values_alt = c.take<uint32_t>(R);
    return v;
  }
};

// Gradient accumulators of the blending backward (one zeroed float tensor of 11 P values):
// dL_dmean2D 3 | dL_dconic 3 | dL_dcolor 3 | dL_dopacity 1 | dL_ddepth 1 floats per Gaussian, each a block over
// all P (float offsets 0, 3P, 6P, 9P, 10P).
struct GradAccumulators {
  float* dL_dmean2D;   // (P, 3) float: NDC units, z unused (stays 0)
  float* dL_dconic;    // (P, 3) float
  float* dL_dcolor;    // (P, 3) float
  float* dL_dopacity;  // (P,) float
  float* dL_ddepth;    // (P,) float

  static GradAccumulators carve(Chunk& c, int64_t P) {
    GradAccumulators a;
    a.dL_dmean2D = c.take<float>(3 * P);
    a.dL_dconic = c.take<float>(3 * P);
    a.dL_dcolor = c.take<float>(3 * P);
    a.dL_dopacity = c.take<float>(P);
    a.dL_ddepth = c.take<float>(P);
    return a;
  }
};

}  // namespace

std::tuple<int64_t, std::vector<torch::Tensor>> rasterize_forward(
    const torch::Tensor& background, const torch::Tensor& means3D, const torch::Tensor& colors,
    const torch::Tensor& opacity, const torch::Tensor& scales, const torch::Tensor& rotations, double scale_modifier,
    const torch::Tensor& cov3D_precomp, const torch::Tensor& viewmatrix, const torch::Tensor& projmatrix,
    double tan_fovx, double tan_fovy, int64_t image_height, int64_t image_width, const torch::Tensor& sh,
    int64_t degree, const torch::Tensor& campos, bool prefiltered, bool return_depth, bool return_alpha,
    bool debug, int64_t pair_capacity, const torch::Tensor& pair_count) {
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

  TORCH_CHECK(pair_capacity >= 0 && pair_capacity < (int64_t)1 << 31,
              "diff_gaussian_rasterization: pair_capacity must be in [0, 2^31), got ", pair_capacity);
  const bool fixed = pair_capacity > 0;  // no host sync: sort a list of pair_capacity slots
  if (pair_count.numel() > 0) {
    TORCH_CHECK(pair_count.device() == device && pair_count.scalar_type() == torch::kInt32 &&
                    pair_count.numel() == 1 && pair_count.is_contiguous(),
                "diff_gaussian_rasterization: pair_count must be a contiguous int32 tensor of one element on ",
                device);
  }

  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto fopt = means3D.options();
  const auto iopt = fopt.dtype(torch::kInt32);
  const dim3 grid((W + TILE_X - 1) / TILE_X, (H + TILE_Y - 1) / TILE_Y, 1);
  const int n_tiles = grid.x * grid.y;
  const dgr::Camera cam = make_camera(viewmatrix, projmatrix, campos, W, H, (float)tan_fovx, (float)tan_fovy);

  // Per-Gaussian state: the float parts in one tensor (GeometryState, kept for the backward pass), the tile
  // counts and their prefix sum in another (TileCountState).
  torch::Tensor radii = torch::empty({P}, iopt);
  torch::Tensor fbuf = torch::empty({required_numel<GeometryState>(fopt, P)}, fopt);
  const GeometryState geom = from_base<GeometryState>(fbuf.data_ptr<float>(), P);
  torch::Tensor clamped = torch::empty({P, 3}, fopt.dtype(torch::kUInt8));
  torch::Tensor tiles = torch::empty({required_numel<TileCountState>(iopt, P)}, iopt);
  const TileCountState counts = from_base<TileCountState>(tiles.data_ptr<int>(), P);

  uint32_t* count_host = fixed ? nullptr : pinned_count();
  if (P > 0) {
    size_t scan_bytes = 0;
    cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, counts.tiles_touched, counts.offsets, (int)P, stream);
    torch::Tensor scan_tmp = torch::empty({(int64_t)scan_bytes}, fopt.dtype(torch::kUInt8));
    dgr::preprocess((int)P, (int)degree, M, means3D.data_ptr<float>(), has_cov ? nullptr : scales.data_ptr<float>(),
                    (float)scale_modifier, has_cov ? nullptr : rotations.data_ptr<float>(), opacity.data_ptr<float>(),
                    has_colors ? nullptr : sh.data_ptr<float>(), has_colors ? colors.data_ptr<float>() : nullptr,
                    has_cov ? cov3D_precomp.data_ptr<float>() : nullptr, cam, grid, radii.data_ptr<int>(),
                    geom.means2D, geom.depths, geom.cov3D, geom.rgb, clamped.data_ptr<uint8_t>(),
                    geom.conic_opacity, counts.tiles_touched, stream);
    check_launch("preprocess");
    debug_check(debug, "preprocess");
    cub::DeviceScan::InclusiveSum(scan_tmp.data_ptr(), scan_bytes, counts.tiles_touched, counts.offsets, (int)P,
                                  stream);
    check_launch("prefix sum");
    // the pairs needed, for the caller to compare with pair_capacity later: with a fixed capacity the
    // duplication writes it; here when there is no sort
    if (pair_count.numel() > 0 && !fixed)
      C10_CUDA_CHECK(cudaMemcpyAsync(pair_count.data_ptr<int>(), counts.offsets + P - 1, sizeof(uint32_t),
                                     cudaMemcpyDeviceToDevice, stream));
    if (!fixed)
      C10_CUDA_CHECK(cudaMemcpyAsync(count_host, counts.offsets + P - 1, sizeof(uint32_t), cudaMemcpyDeviceToHost,
                                     stream));
  } else if (pair_count.numel() > 0) {
    C10_CUDA_CHECK(cudaMemsetAsync(pair_count.data_ptr<int>(), 0, sizeof(int), stream));
  }

  // Per-pixel outputs and state, allocated while the GPU preprocesses (before the one host sync).
  torch::Tensor out_color = torch::empty({3, H, W}, fopt);
  torch::Tensor out_depth = return_depth ? torch::empty({1, H, W}, fopt) : torch::empty({0}, fopt);
  torch::Tensor out_alpha = return_alpha ? torch::empty({1, H, W}, fopt) : torch::empty({0}, fopt);
  torch::Tensor final_T = torch::empty({H, W}, fopt);
  torch::Tensor n_contrib = torch::empty({H, W}, iopt);
  torch::Tensor ranges = torch::zeros({n_tiles, 2}, iopt);

  int64_t num_rendered = fixed ? -1 : 0;  // -1: not known on the host (fixed capacity)
  if (P > 0 && !fixed) {
    C10_CUDA_CHECK(cudaStreamSynchronize(stream));  // the number of (tile, Gaussian) pairs sizes the sort
    num_rendered = *count_host;
    TORCH_CHECK(num_rendered < (int64_t)1 << 31, "diff_gaussian_rasterization: ", num_rendered,
                " Gaussian-tile pairs overflow the 32-bit index; render fewer or smaller Gaussians");
  }

  torch::Tensor point_list;
  const int R = fixed ? (int)pair_capacity : (int)num_rendered;
  if (R > 0) {
    const int end_bit = DEPTH_KEY_BITS + highest_bit((uint32_t)n_tiles);  // tiles and the unused sentinel
    size_t sort_bytes = 0;
    {
      cub::DoubleBuffer<uint64_t> qk(nullptr, nullptr);
      cub::DoubleBuffer<uint32_t> qv(nullptr, nullptr);
      cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, qk, qv, R, 0, end_bit, stream);
    }
    // Keys (double buffer) and the sort's scratch in one allocation (BinningKeys); the values stay their own
    // tensor (BinningValues) because the sorted ones are kept for the backward pass.
    const auto bopt = fopt.dtype(torch::kUInt8);
    torch::Tensor kbuf = torch::empty({required_numel<BinningKeys>(bopt, (int64_t)R, sort_bytes)}, bopt);
    torch::Tensor vbuf = torch::empty({required_numel<BinningValues>(iopt, (int64_t)R)}, iopt);
    const BinningKeys bkeys = from_base<BinningKeys>(kbuf.data_ptr<uint8_t>(), (int64_t)R, sort_bytes);
    const BinningValues bvals = from_base<BinningValues>(vbuf.data_ptr<int>(), (int64_t)R);
    if (fixed && P == 0) {
      dgr::mark_unused_pairs(R, bkeys.keys, bvals.values, stream);
      check_launch("mark_unused_pairs");
    }
    dgr::duplicate_with_keys((int)P, geom.means2D, geom.depths, geom.conic_opacity, counts.offsets,
                             radii.data_ptr<int>(), grid, fixed ? (uint32_t)R : UINT32_MAX, fixed, bkeys.keys,
                             bvals.values,
                             fixed && pair_count.numel() > 0 ? reinterpret_cast<uint32_t*>(pair_count.data_ptr<int>())
                                                             : nullptr,
                             stream);
    check_launch("duplicate_with_keys");
    debug_check(debug, "duplicate_with_keys");
    cub::DoubleBuffer<uint64_t> dkeys(bkeys.keys, bkeys.keys_alt);
    cub::DoubleBuffer<uint32_t> dvals(bvals.values, bvals.values_alt);
    cub::DeviceRadixSort::SortPairs(bkeys.sort_scratch, sort_bytes, dkeys, dvals, R, 0, end_bit, stream);
    check_launch("radix sort");
    debug_check(debug, "radix sort");
    dgr::tile_ranges(R, (uint32_t)n_tiles, dkeys.Current(), reinterpret_cast<uint2*>(ranges.data_ptr<int>()),
                     stream);
    check_launch("tile_ranges");
    point_list = field_view(vbuf, dvals.Current(), {R});  // whichever value buffer the sort ended in
  } else {
    point_list = torch::empty({0}, iopt);
  }

  dgr::render(grid, reinterpret_cast<const uint2*>(ranges.data_ptr<int>()),
              reinterpret_cast<const uint32_t*>(point_list.numel() ? point_list.data_ptr<int>() : nullptr), W, H,
              geom.means2D, geom.rgb, geom.conic_opacity, geom.depths, background.data_ptr<float>(),
              final_T.data_ptr<float>(),
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

  const GeometryState geom = from_base<GeometryState>(fbuf.data_ptr<float>(), P);  // the forward's fbuf
  const float* cov3D = has_cov ? cov3D_precomp.data_ptr<float>() : geom.cov3D;

  // Accumulators of the blending backward, one zeroed buffer (GradAccumulators).
  torch::Tensor acc = torch::zeros({required_numel<GradAccumulators>(fopt, P)}, fopt);
  const GradAccumulators grads = from_base<GradAccumulators>(acc.data_ptr<float>(), P);
  torch::Tensor dL_dmeans2D = field_view(acc, grads.dL_dmean2D, {P, 3});
  torch::Tensor dL_dcolors = field_view(acc, grads.dL_dcolor, {P, 3});
  torch::Tensor dL_dopacity = field_view(acc, grads.dL_dopacity, {P, 1});

  torch::Tensor dL_dmeans3D = torch::empty({P, 3}, fopt);
  torch::Tensor dL_dsh = has_colors ? torch::zeros({0}, fopt) : torch::empty({P, M, 3}, fopt);
  torch::Tensor dL_dscales = has_cov ? torch::zeros({0}, fopt) : torch::empty({P, 3}, fopt);
  torch::Tensor dL_drots = has_cov ? torch::zeros({0}, fopt) : torch::empty({P, 4}, fopt);
  torch::Tensor dL_dcov3D = has_cov ? torch::empty({P, 6}, fopt) : torch::zeros({0}, fopt);
  if (P == 0) return {dL_dmeans2D, dL_dcolors, dL_dopacity, dL_dmeans3D, dL_dcov3D, dL_dsh, dL_dscales, dL_drots};

  dgr::render_backward(grid, reinterpret_cast<const uint2*>(ranges.data_ptr<int>()),
                       reinterpret_cast<const uint32_t*>(point_list.numel() ? point_list.data_ptr<int>() : nullptr),
                       W, H, background.data_ptr<float>(), geom.means2D, geom.conic_opacity, geom.rgb, geom.depths,
                       final_T.data_ptr<float>(),
                       reinterpret_cast<const uint32_t*>(n_contrib.data_ptr<int>()), dL_dout_color.data_ptr<float>(),
                       has_depth ? dL_dout_depth.data_ptr<float>() : nullptr,
                       has_alpha ? dL_dout_alpha.data_ptr<float>() : nullptr, grads.dL_dmean2D, grads.dL_dconic,
                       grads.dL_dopacity, grads.dL_dcolor, grads.dL_ddepth, stream);
  check_launch("render_backward");
  debug_check(debug, "render_backward");
  dgr::preprocess_backward((int)P, (int)degree, M, means3D.data_ptr<float>(), radii.data_ptr<int>(),
                           has_colors ? nullptr : sh.data_ptr<float>(), clamped.data_ptr<uint8_t>(),
                           has_cov ? nullptr : scales.data_ptr<float>(), has_cov ? nullptr : rotations.data_ptr<float>(),
                           (float)scale_modifier, cov3D, has_cov, cam, grads.dL_dmean2D, grads.dL_dconic,
                           grads.dL_dcolor, has_depth ? grads.dL_ddepth : nullptr, has_colors,
                           dL_dmeans3D.data_ptr<float>(),
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
