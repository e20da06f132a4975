// Host-side helpers of the Hopper (sm_90a) kernels: whether they can run here, and TMA
// tensor maps for their operand tiles.
#pragma once

#include <cuda.h>  // CUtensorMap (the type only; the encoder is found through the runtime)

#include <cstdint>

namespace frspec {

// wgmma kernels need an sm_90a build (FRSPEC_HAS_SM90A in that translation unit) and a
// compute-capability 9.0 device: true when the current device is one.
bool sm90a_device();

// A tensor map over a row-major [rows, cols] 16-bit matrix whose boxes are box_rows (<= 256)
// rows x 64 columns (128 bytes: the swizzle span), 128B-swizzled, rows past `rows` zero-filled.
// False when the driver has no encoder or rejects the layout.
bool encode_rows_map(CUtensorMap* map, const void* base, int64_t rows, int64_t cols, bool bf16, int box_rows = 128);

// A tensor map over a [B, N, Hq, head_dim] 16-bit tensor (q, or out; head_dim 64 or 128)
// whose boxes are one tile of packed (node, query head) rows of one KV head: 64 columns x G
// heads x tile_rows / G nodes, 128B-swizzled, so box row i is packed row i (node i / G, head
// i % G); nodes past N are zero-filled on loads and dropped on stores. False unless G divides
// tile_rows (<= 256), i.e. a tile is whole nodes.
bool encode_heads_map(CUtensorMap* map, const void* base, int64_t B, int64_t N, int64_t Hq, int G, int tile_rows,
                      bool bf16, int head_dim = 128);

}  // namespace frspec
