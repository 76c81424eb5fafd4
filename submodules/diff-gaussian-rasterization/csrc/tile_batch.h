// The block's shared-memory batch of a tile's Gaussians, one slot per thread, as both blending passes (forward
// front to back, backward back to front) stage them: screen position, conic and opacity, colour (channel-major,
// so a warp's reads of one channel are conflict-free) and view depth.
#pragma once

#include "config.h"

namespace dgr {

template <bool DEPTH>
struct TileBatch {
  float2 xy[TILE_PIXELS];
  float4 co[TILE_PIXELS];
  float rgb[NUM_CHANNELS * TILE_PIXELS];
  float depth[DEPTH ? TILE_PIXELS : 1];

  // Stage Gaussian gid in slot `slot`.
  __device__ __forceinline__ void stage(int slot, uint32_t gid, const float2* __restrict__ means2D,
                                        const float4* __restrict__ conic_opacity, const float* __restrict__ colors,
                                        const float* __restrict__ depths) {
    xy[slot] = means2D[gid];
    co[slot] = conic_opacity[gid];
#pragma unroll
    for (int ch = 0; ch < NUM_CHANNELS; ch++) rgb[ch * TILE_PIXELS + slot] = colors[3 * gid + ch];
    if (DEPTH) depth[slot] = depths[gid];
  }
};

}  // namespace dgr
