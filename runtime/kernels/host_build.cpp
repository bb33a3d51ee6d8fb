// Host build of the kernels' per-pixel arithmetic, for the tests (not shipped, not used at run
// time): the same headers the CUDA kernels include, driven by plain loops. Build:
//   g++ -O2 -std=c++17 -ffp-contract=off -shared -fPIC host_build.cpp -o libmre_host.so
#include <cstddef>

#include "preprocess.cuh"
#include "postprocess.cuh"

extern "C" {

// Layout probes: the Python mirrors (cuda_ops.LetterboxParams, int32 [N,4] boxes) must match.
int host_sizeof_letterbox_params() { return (int)sizeof(mre::LetterboxParams); }
int host_offsetof_letterbox_add() { return (int)offsetof(mre::LetterboxParams, add); }
int host_sizeof_paste_box() { return (int)sizeof(mre::PasteBox); }

void host_letterbox_f32(const unsigned char* src, const mre::LetterboxParams* p, float* dst) {
    long long plane = (long long)p->dst_h * p->dst_w;
    for (int y = 0; y < p->dst_h; ++y)
        for (int x = 0; x < p->dst_w; ++x) {
            float rgb[3];
            mre::letterbox_pixel(src, *p, x, y, rgb);
            long long i = (long long)y * p->dst_w + x;
            for (int c = 0; c < 3; ++c) dst[c * plane + i] = rgb[c];
        }
}

void host_float_to_half(const float* src, unsigned short* dst, long long n) {
    for (long long i = 0; i < n; ++i) dst[i] = mre::float_to_half_bits(src[i]);
}

void host_paste_values(const float* masks, const mre::PasteBox* boxes, int n, int m, int height,
                       int width, float* out) {
    for (int i = 0; i < n; ++i)
        for (int y = 0; y < height; ++y)
            for (int x = 0; x < width; ++x)
                out[((long long)i * height + y) * width + x] =
                    mre::paste_value(masks + (long long)i * m * m, m, boxes[i], x, y);
}

void host_instance_map(const float* masks, const mre::PasteBox* boxes, const int* order, int n,
                       int m, int height, int width, float threshold, int* out) {
    for (int y = 0; y < height; ++y)
        for (int x = 0; x < width; ++x)
            out[(long long)y * width + x] =
                mre::instance_at(masks, boxes, order, n, m, threshold, x, y);
}

void host_overlay(unsigned char* frame, int pitch, const int* ids, const unsigned char* colours,
                  int height, int width, float alpha) {
    for (int y = 0; y < height; ++y)
        for (int x = 0; x < width; ++x) {
            int id = ids[(long long)y * width + x];
            if (id <= 0) continue;
            unsigned char* px = frame + (long long)y * pitch + 3 * x;
            const unsigned char* c = colours + 3 * (id - 1);
            for (int k = 0; k < 3; ++k) px[k] = mre::blend_channel(px[k], c[k], alpha);
        }
}

}  // extern "C"
