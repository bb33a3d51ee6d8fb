// Post-processing kernels: pasted binary masks, instance-id map, coloured overlay.
// Compiled at run time by NVRTC (runtime/gpu/cuda_ops.py). One thread per frame pixel.
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

#ifndef MRE_HOST_BUILD
// Instance id of this thread's pixel with the tile culling of postprocess.cuh (block = one
// TILE_W x TILE_H tile; every thread of the block must call it: it synchronises the block).
// host_build.cpp runs the same four phases over a block's threads (it has no __syncthreads).
// T: float (float32 masks) or unsigned short (the half bits of an fp16 engine's masks).
template <typename T>
__device__ int tiled_instance_id(mre::TileShared& s, const T* masks, const mre::PasteBox* boxes,
                                 const int* order, const mre::InstanceParams& p, int x, int y) {
    int t = threadIdx.y * blockDim.x + threadIdx.x;
    mre::TileRect tile = mre::tile_rect(blockIdx.x, blockIdx.y, p.width, p.height);
    bool inside = x < p.width && y < p.height;
    int id = 0;
    for (int base = 0; base < p.n; base += mre::TILE_CAP) {  // block-uniform: the syncs are safe
        mre::tile_flag(s, t, base, order, boxes, p.n, tile);
        __syncthreads();
        mre::tile_count(s, t);
        __syncthreads();
        mre::tile_compact(s, t, base, order);
        __syncthreads();
        if (inside) id = mre::tile_pixel(s, masks, boxes, p.m, p.threshold, x, y, id);
        __syncthreads();  // the next round overwrites the shared lists
    }
    return id;
}

template <typename T>
__device__ void instance_map_body(const T* masks, const mre::PasteBox* boxes, const int* order,
                                  const mre::InstanceParams& p, int* ids) {
    __shared__ mre::TileShared s;
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    int id = tiled_instance_id(s, masks, boxes, order, p, x, y);
    if (x < p.width && y < p.height) ids[(long long)y * p.width + x] = id;
}

template <typename T>
__device__ void render_instances_body(const unsigned char* src, const T* masks, const mre::PasteBox* boxes,
                                      const int* order, const unsigned char* colours,
                                      const mre::InstanceParams& p, unsigned char* dst) {
    __shared__ mre::TileShared s;
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    int id = tiled_instance_id(s, masks, boxes, order, p, x, y);
    if (x >= p.width || y >= p.height) return;
    mre::render_pixel(src + (long long)y * p.src_pitch + 3 * x, dst + (long long)y * p.dst_pitch + 3 * x,
                      colours, id, p.alpha);
}

// ids[y * width + x] = instance id (0 = none). Launch: blocks of TILE_W x TILE_H over the frame.
extern "C" __global__ void instance_map(const float* masks, const mre::PasteBox* boxes,
                                        const int* order, mre::InstanceParams p, int* ids) {
    instance_map_body(masks, boxes, order, p, ids);
}

// The same, reading an fp16 engine's masks (half bits) where the engine left them.
extern "C" __global__ void instance_map_f16(const unsigned short* masks, const mre::PasteBox* boxes,
                                            const int* order, mre::InstanceParams p, int* ids) {
    instance_map_body(masks, boxes, order, p, ids);
}

// The drawn frame in one pass: dst = src with colours[id - 1] (BGR) blended in where a mask is,
// src copied elsewhere. src is the frame the letterbox already uploaded; dst is what goes down.
extern "C" __global__ void render_instances(const unsigned char* src, const float* masks,
                                            const mre::PasteBox* boxes, const int* order,
                                            const unsigned char* colours, mre::InstanceParams p,
                                            unsigned char* dst) {
    render_instances_body(src, masks, boxes, order, colours, p, dst);
}

// The same, reading an fp16 engine's masks (half bits) where the engine left them.
extern "C" __global__ void render_instances_f16(const unsigned char* src, const unsigned short* masks,
                                                const mre::PasteBox* boxes, const int* order,
                                                const unsigned char* colours, mre::InstanceParams p,
                                                unsigned char* dst) {
    render_instances_body(src, masks, boxes, order, colours, p, dst);
}
#endif

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
