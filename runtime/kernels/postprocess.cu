// Post-processing kernels: pasted binary masks, instance-id map, coloured overlay.
// Compiled at run time by NVRTC (runtime/cuda_ops.py). One thread per frame pixel.
#include "postprocess.cuh"

// One detection's pasted binary mask, only over its box: out[r * cols + c] = 1 where detection i's
// pasted probability at frame pixel (x0 + c, y0 + r) > threshold. (x0, y0, rows, cols) is the
// box clipped to the frame (the host computes it), so memory and work scale with the box, not
// with the frame times the number of detections.
extern "C" __global__ void paste_mask_u8(const float* masks, const mre::PasteBox* boxes, int i, int m,
                                         int x0, int y0, int rows, int cols, float threshold,
                                         unsigned char* out) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    int r = blockIdx.y * blockDim.y + threadIdx.y;
    if (c >= cols || r >= rows) return;
    float v = mre::paste_value(masks + (long long)i * m * m, m, boxes[i], x0 + c, y0 + r);
    out[(long long)r * cols + c] = v > threshold ? 1 : 0;
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
