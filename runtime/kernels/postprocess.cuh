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

// Probability of frame pixel (x, y) for one detection; 0 outside its box. mask is M x M, row-major.
MRE_HD float paste_value(const float* mask, int m, PasteBox b, int x, int y) {
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
            v[r][c] = ring ? 0.0f : mask[(i - 1) * m + (j - 1)];
        }
    }
    // rows first, then columns: the order the numpy reference uses
    float left = lerp(v[0][0], v[1][0], ty.w1);
    float right = lerp(v[0][1], v[1][1], ty.w1);
    return lerp(left, right, tx.w1);
}

// Instance id of pixel (x, y): 1 + index of the first detection in `order` (highest score first)
// whose pasted probability exceeds `threshold`; 0 when none does.
MRE_HD int instance_at(const float* masks, const PasteBox* boxes, const int* order, int n, int m,
                       float threshold, int x, int y) {
    for (int k = 0; k < n; ++k) {
        int i = order[k];
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

}  // namespace mre
