// Letterbox pre-processing, one canvas pixel at a time (host and device).
//
// Meaning (DESIGN.md, "Engine I/O contract"): the BGR uint8 frame is resized with bilinear
// interpolation (torch F.interpolate, align_corners=False, no antialias) to out_h x out_w =
// floor(h*scale) x floor(w*scale), scale = min(H/h, W/w), placed top-left on the H x W canvas,
// converted to RGB and normalised as (x/255 - mean)/std = x*mul + add. Canvas pixels outside the
// resized image are 0 in the normalised tensor (the padding is applied after normalisation).
#pragma once
#include "common.cuh"

namespace mre {

struct LetterboxParams {
    int src_h, src_w;      // frame size
    int src_pitch;         // bytes between frame rows (>= 3*src_w)
    int dst_h, dst_w;      // canvas size (model input H, W)
    int out_h, out_w;      // resized image size, top-left in the canvas
    float scale_y, scale_x;  // src/out per axis, float32 (torch's recomputed scale)
    float mul[3];          // per RGB channel: 1 / (255 * std)
    float add[3];          // per RGB channel: -mean / std
};

// rgb[c] = normalised value of canvas pixel (x, y), channel c in RGB order.
MRE_HD void letterbox_pixel(const unsigned char* src, const LetterboxParams& p, int x, int y,
                            float rgb[3]) {
    if (x >= p.out_w || y >= p.out_h) {
        rgb[0] = rgb[1] = rgb[2] = 0.0f;
        return;
    }
    Tap ty = bilinear_tap(p.scale_y, y, p.src_h);
    Tap tx = bilinear_tap(p.scale_x, x, p.src_w);
    const unsigned char* r0 = src + (long long)ty.i0 * p.src_pitch;
    const unsigned char* r1 = src + (long long)ty.i1 * p.src_pitch;
    for (int c = 0; c < 3; ++c) {
        int bgr = 2 - c;
        // rows first, then columns: the order the numpy reference uses
        float left = lerp((float)r0[3 * tx.i0 + bgr], (float)r1[3 * tx.i0 + bgr], ty.w1);
        float right = lerp((float)r0[3 * tx.i1 + bgr], (float)r1[3 * tx.i1 + bgr], ty.w1);
        float v = lerp(left, right, tx.w1);
        rgb[c] = v * p.mul[c] + p.add[c];
    }
}

}  // namespace mre
