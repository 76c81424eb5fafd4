// Compile-time constants of the rasterizer (docs/maths.md section 7).
#pragma once

#define TILE_X 16
#define TILE_Y 16
#define TILE_PIXELS (TILE_X * TILE_Y)
#define NUM_CHANNELS 3
#define PREPROCESS_THREADS 256

// Blending thresholds of the original rasterizer.
#define ALPHA_CAP 0.99f
#define ALPHA_MIN (1.0f / 255.0f)
#define T_MIN 0.0001f
#define NEAR_CULL 0.2f
#define LOWPASS 0.3f
#define FRUSTUM_GUARD 1.3f
#define W_EPS 0.0000001f
