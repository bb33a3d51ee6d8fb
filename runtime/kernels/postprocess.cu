// Post-processing kernels: pasted binary masks, instance-id map, coloured overlay.
// Compiled at run time by NVRTC (runtime/cuda_ops.py). One thread per frame pixel.
#include "postprocess.cuh"

// out[i, y, x] = 1 where detection i's pasted probability > threshold. Grid z = detection.
extern "C" __global__ void paste_masks_u8(const float* masks, const mre::PasteBox* boxes, int n,
                                          int m, int height, int width, float threshold,
                                          unsigned char* out) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    int i = blockIdx.z;
    if (x >= width || y >= height || i >= n) return;
    float v = mre::paste_value(masks + (long long)i * m * m, m, boxes[i], x, y);
    out[((long long)i * height + y) * width + x] = v > threshold ? 1 : 0;
}

extern "C" __global__ void instance_map(const float* masks, const mre::PasteBox* boxes,
                                        const int* order, int n, int m, int height, int width,
                                        float threshold, int* out) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= width || y >= height) return;
    out[(long long)y * width + x] = mre::instance_at(masks, boxes, order, n, m, threshold, x, y);
}

// Blend colours[id - 1] (BGR) into the BGR frame where the instance map is non-zero, in place.
extern "C" __global__ void overlay(unsigned char* frame, int pitch, const int* ids,
                                   const unsigned char* colours, int height, int width,
                                   float alpha) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= width || y >= height) return;
    int id = ids[(long long)y * width + x];
    if (id <= 0) return;
    unsigned char* px = frame + (long long)y * pitch + 3 * x;
    const unsigned char* c = colours + 3 * (id - 1);
    for (int k = 0; k < 3; ++k) px[k] = mre::blend_channel(px[k], c[k], alpha);
}
