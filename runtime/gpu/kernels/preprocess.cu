// Letterbox + BGR->RGB + normalise + HWC->CHW in one pass; float32 or float16 output.
// Compiled at run time by NVRTC (runtime/gpu/cuda_ops.py). One thread per canvas pixel.
#include "preprocess.cuh"

extern "C" __global__ void letterbox_f32(const unsigned char* src, mre::LetterboxParams p,
                                         float* dst) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= p.dst_w || y >= p.dst_h) return;
    float rgb[3];
    mre::letterbox_pixel(src, p, x, y, rgb);
    long long plane = (long long)p.dst_h * p.dst_w;
    long long i = (long long)y * p.dst_w + x;
    dst[i] = rgb[0];
    dst[plane + i] = rgb[1];
    dst[2 * plane + i] = rgb[2];
}

extern "C" __global__ void letterbox_f16(const unsigned char* src, mre::LetterboxParams p,
                                         unsigned short* dst) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= p.dst_w || y >= p.dst_h) return;
    float rgb[3];
    mre::letterbox_pixel(src, p, x, y, rgb);
    long long plane = (long long)p.dst_h * p.dst_w;
    long long i = (long long)y * p.dst_w + x;
    dst[i] = mre::float_to_half_bits(rgb[0]);
    dst[plane + i] = mre::float_to_half_bits(rgb[1]);
    dst[2 * plane + i] = mre::float_to_half_bits(rgb[2]);
}
