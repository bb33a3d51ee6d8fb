// Mask paste, instance map and overlay, one frame pixel at a time (host and device).
//
// Meaning: torchvision's paste_masks_in_image (models/detection/roi_heads.py). The M x M mask is
// padded with one ring of zeros, its box (frame pixels) is expanded about its centre by (M+2)/M
// and truncated to integers (PasteBox, computed on the host by postprocess.expand_boxes), the
// padded mask is resized bilinearly (align_corners=False) to (y1-y0+1) x (x1-x0+1) and placed with
// its top-left at (x0, y0), clipped to the frame.
#pragma once
#include "common.cuh"

namespace mre {

struct PasteBox {
    int x0, y0, x1, y1;  // expanded integer box; the pasted mask covers x0..x1, y0..y1 inclusive
};

// Mask elements as the engine wrote them: float32, or IEEE half bits (fp16 engines), read in place
// and widened exactly, so both give the float32 arithmetic below the same inputs.
MRE_HD float mask_value(const float* mask, int i) { return mask[i]; }
MRE_HD float mask_value(const unsigned short* mask, int i) { return half_bits_to_float(mask[i]); }

// Probability of frame pixel (x, y) for one detection; 0 outside its box. mask is M x M, row-major,
// of float (float32) or unsigned short (half bits).
template <typename T>
MRE_HD float paste_value(const T* mask, int m, PasteBox b, int x, int y) {
    if (x < b.x0 || x > b.x1 || y < b.y0 || y > b.y1) return 0.0f;
    int w = b.x1 - b.x0 + 1;  // >= 1 here
    int h = b.y1 - b.y0 + 1;
    int padded = m + 2;
    Tap ty = bilinear_tap(interp_scale(padded, h), y - b.y0, padded);
    Tap tx = bilinear_tap(interp_scale(padded, w), x - b.x0, padded);
    // padded(i, j) = mask(i-1, j-1) inside, 0 on the ring
    float v[2][2];
    int rows[2] = {ty.i0, ty.i1};
    int cols[2] = {tx.i0, tx.i1};
    for (int r = 0; r < 2; ++r) {
        for (int c = 0; c < 2; ++c) {
            int i = rows[r], j = cols[c];
            bool ring = i == 0 || j == 0 || i == padded - 1 || j == padded - 1;
            v[r][c] = ring ? 0.0f : mask_value(mask, (i - 1) * m + (j - 1));
        }
    }
    // rows first, then columns: the order the numpy reference uses
    float left = lerp(v[0][0], v[1][0], ty.w1);
    float right = lerp(v[0][1], v[1][1], ty.w1);
    return lerp(left, right, tx.w1);
}

// Instance id of pixel (x, y): 1 + index of the first detection in `order` (highest score first)
// whose pasted probability exceeds `threshold`; 0 when none does. Tests every box: the reference
// for the tiled version below, and the host tests' oracle.
template <typename T>
MRE_HD int instance_at(const T* masks, const PasteBox* boxes, const int* order, int n, int m,
                       float threshold, int x, int y) {
    for (int k = 0; k < n; ++k) {
        int i = order[k];
        if (paste_value(masks + (long long)i * m * m, m, boxes[i], x, y) > threshold) return i + 1;
    }
    return 0;
}

// ---- tile culling ------------------------------------------------------------------------------
// The instance-map kernels run one 32 x 8 block per 32 x 8 tile of the frame. Instead of every
// pixel testing every box (N x H x W box tests: 207 M at 1080p with 100 detections), the block's
// threads test the boxes against the tile once (one box per thread per round of TILE_CAP ranks),
// compact the hits into shared memory in rank order, and each pixel then tests only those.
// A round is four phases separated by __syncthreads(); each phase is one function below so that
// the host build (host_build.cpp) runs exactly these, phase by phase over the block's threads.
constexpr int TILE_W = 32, TILE_H = 8, TILE_CAP = TILE_W * TILE_H, TILE_WARPS = TILE_CAP / 32;

struct InstanceParams {
    int n, m;                 // detections, mask side M
    int height, width;        // frame size
    int src_pitch, dst_pitch; // bytes between rows of the BGR frames (render_instances only)
    float threshold, alpha;   // mask threshold, overlay blend weight
};

struct TileShared {
    int flag[TILE_CAP];       // phase 1: 1 when rank base + t touches the tile
    int warp_hits[TILE_WARPS];// phase 2: hits per group of 32 ranks
    int hits[TILE_CAP];       // phase 3: detection indices touching the tile, in rank order
    int count;                // phase 3: how many
};

// Tile of block (bx, by): pixels x0..x1, y0..y1 inclusive, clipped to the frame.
struct TileRect {
    int x0, y0, x1, y1;
};

MRE_HD TileRect tile_rect(int bx, int by, int width, int height) {
    TileRect r;
    r.x0 = bx * TILE_W;
    r.y0 = by * TILE_H;
    r.x1 = r.x0 + TILE_W - 1 < width - 1 ? r.x0 + TILE_W - 1 : width - 1;
    r.y1 = r.y0 + TILE_H - 1 < height - 1 ? r.y0 + TILE_H - 1 : height - 1;
    return r;
}

// Phase 1: thread t flags rank base + t when that detection's paste box overlaps the tile.
MRE_HD void tile_flag(TileShared& s, int t, int base, const int* order, const PasteBox* boxes, int n,
                      TileRect tile) {
    int k = base + t;
    int hit = 0;
    if (k < n) {
        PasteBox b = boxes[order[k]];
        hit = !(b.x1 < tile.x0 || b.x0 > tile.x1 || b.y1 < tile.y0 || b.y0 > tile.y1);
    }
    s.flag[t] = hit;
}

// Phase 2: the first thread of each group of 32 counts its group's flags.
MRE_HD void tile_count(TileShared& s, int t) {
    if (t % 32 != 0) return;
    int c = 0;
    for (int j = 0; j < 32; ++j) c += s.flag[t + j];
    s.warp_hits[t / 32] = c;
}

// Phase 3: each flagged thread writes its detection at its rank among the hits (prefix sum of
// the groups before it plus the flags before it in its group), keeping rank order.
MRE_HD void tile_compact(TileShared& s, int t, int base, const int* order) {
    int before = 0;
    for (int w = 0; w < t / 32; ++w) before += s.warp_hits[w];
    if (t == 0) {
        int total = 0;
        for (int w = 0; w < TILE_WARPS; ++w) total += s.warp_hits[w];
        s.count = total;
    }
    if (!s.flag[t]) return;
    for (int j = t - t % 32; j < t; ++j) before += s.flag[j];
    s.hits[before] = order[base + t];
}

// Phase 4: pixel (x, y) without an id yet tests this round's hits, in rank order.
template <typename T>
MRE_HD int tile_pixel(const TileShared& s, const T* masks, const PasteBox* boxes, int m,
                      float threshold, int x, int y, int id) {
    if (id != 0) return id;
    for (int j = 0; j < s.count; ++j) {
        int i = s.hits[j];
        if (paste_value(masks + (long long)i * m * m, m, boxes[i], x, y) > threshold) return i + 1;
    }
    return 0;
}

// One channel of the overlay: round(pixel*(1-alpha) + colour*alpha), clamped to 0..255.
MRE_HD unsigned char blend_channel(unsigned char pixel, unsigned char colour, float alpha) {
    float v = lerp((float)pixel, (float)colour, alpha) + 0.5f;
    if (v < 0.0f) v = 0.0f;
    if (v > 255.0f) v = 255.0f;
    return (unsigned char)v;
}

// One BGR pixel of the drawn frame: blended with colours[id - 1] when id > 0, copied otherwise.
MRE_HD void render_pixel(const unsigned char* src, unsigned char* dst, const unsigned char* colours, int id,
                         float alpha) {
    for (int k = 0; k < 3; ++k) dst[k] = id > 0 ? blend_channel(src[k], colours[3 * (id - 1) + k], alpha) : src[k];
}

}  // namespace mre
