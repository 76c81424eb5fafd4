// Compile-time constants of the rasterizer (docs/maths.md section 7).
#pragma once

#define TILE_X 16
#define TILE_Y 16
#define TILE_PIXELS (TILE_X * TILE_Y)
#define NUM_CHANNELS 3
#define PREPROCESS_THREADS 128  // 256 -> 128: 0.219 -> 0.215 ms captured forward (oracle scene, H200, session 21)
#define DUPLICATE_THREADS 128

// Sort keys: tile << DEPTH_KEY_BITS | depth key, the depth key being the view depth's float bits less those
// of NEAR_CULL (every listed Gaussian has depth > NEAR_CULL, so positive and in the same order), capped at
// 2^27 - 1, which is depth 13107.2: nearer Gaussians keep their exact float order. 27 + 11 tile bits (a
// 512x512 image's 1024 tiles and the unused-slot sentinel) make 38 key bits, five 8-bit radix passes
// instead of the six of 32 depth bits.
#define DEPTH_KEY_BITS 27

// Blending thresholds of the original rasterizer.
#define ALPHA_CAP 0.99f
#define ALPHA_MIN (1.0f / 255.0f)
#define T_MIN 0.0001f
#define NEAR_CULL 0.2f
#define LOWPASS 0.3f
#define FRUSTUM_GUARD 1.3f
#define W_EPS 0.0000001f
