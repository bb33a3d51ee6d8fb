// Host build of the kernels, for the tests (not shipped, not used at run time). Two layers:
// - host_* functions: the per-pixel arithmetic of the headers, driven by plain loops;
// - host_launch: the .cu kernels themselves, compiled for the host with the CUDA built-ins
//   (blockIdx, blockDim, threadIdx, gridDim) emulated, run thread by thread over a launch grid
//   from cuLaunchKernel-style packed arguments (void* per parameter). The stand-in cuda-python
//   (tests/fakes/fake_cuda.py) launches through it. The tiled kernels (instance_map,
//   render_instances) synchronise their block, which a thread-by-thread loop cannot; for them
//   run_tiled below runs the same phase functions (postprocess.cuh) phase by phase over a block's
//   threads, which is what __syncthreads() guarantees on the device; only the few lines of
//   their __global__ bodies are not compiled here.
// Build:
//   g++ -O2 -std=c++17 -ffp-contract=off -shared -fPIC host_build.cpp -o libmre_host.so
#include <cstddef>
#include <cstring>
#include <type_traits>
#include <utility>

#include "preprocess.cuh"
#include "postprocess.cuh"

namespace mre_host {
struct Dim3 {
    unsigned int x, y, z;
};
}  // namespace mre_host

// The built-ins a kernel body reads; thread_local so that two Python threads may launch at once.
static thread_local mre_host::Dim3 blockIdx, blockDim, threadIdx, gridDim;

#define __global__
#define MRE_HOST_BUILD
#include "preprocess.cu"
#include "postprocess.cu"
#undef __global__

namespace mre_host {

// Call kernel k with its parameters read from params[i] (each a pointer to the i-th value, the
// layout cuLaunchKernel's kernelParams has).
template <typename... Args, std::size_t... I>
void call_packed(void (*k)(Args...), void** params, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<std::remove_reference_t<Args>>*>(params[I])...);
}

template <typename... Args>
void run_grid(void (*k)(Args...), Dim3 grid, Dim3 block, void** params) {
    gridDim = grid;
    blockDim = block;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx)
                for (unsigned tz = 0; tz < block.z; ++tz)
                    for (unsigned ty = 0; ty < block.y; ++ty)
                        for (unsigned tx = 0; tx < block.x; ++tx) {
                            blockIdx = Dim3{bx, by, bz};
                            threadIdx = Dim3{tx, ty, tz};
                            call_packed(k, params, std::index_sequence_for<Args...>{});
                        }
}

// A tiled kernel (TILE_W x TILE_H blocks): ids of every pixel of each block through the four
// phases of tiled_instance_id in postprocess.cu, then emit(x, y, id) for the pixels in the frame.
template <typename T, typename Emit>
void run_tiled(Dim3 grid, Dim3 block, const T* masks, const mre::PasteBox* boxes, const int* order,
               const mre::InstanceParams& p, Emit emit) {
    static thread_local mre::TileShared s;
    int ids[mre::TILE_CAP];
    for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
            mre::TileRect tile = mre::tile_rect((int)bx, (int)by, p.width, p.height);
            for (int t = 0; t < mre::TILE_CAP; ++t) ids[t] = 0;
            for (int base = 0; base < p.n; base += mre::TILE_CAP) {
                for (int t = 0; t < mre::TILE_CAP; ++t) mre::tile_flag(s, t, base, order, boxes, p.n, tile);
                for (int t = 0; t < mre::TILE_CAP; ++t) mre::tile_count(s, t);
                for (int t = 0; t < mre::TILE_CAP; ++t) mre::tile_compact(s, t, base, order);
                for (int t = 0; t < mre::TILE_CAP; ++t) {
                    int x = (int)bx * (int)block.x + t % (int)block.x, y = (int)by * (int)block.y + t / (int)block.x;
                    if (x < p.width && y < p.height) ids[t] = mre::tile_pixel(s, masks, boxes, p.m, p.threshold, x, y, ids[t]);
                }
            }
            for (int t = 0; t < mre::TILE_CAP; ++t) {
                int x = (int)bx * (int)block.x + t % (int)block.x, y = (int)by * (int)block.y + t / (int)block.x;
                if (x < p.width && y < p.height) emit(x, y, ids[t]);
            }
        }
}

// The tiled kernels' bodies with masks of element type T (float, or half bits for the _f16 ones).
template <typename T>
void launch_tiled_as(bool render, Dim3 grid, Dim3 block, void** params) {
    if (!render) {
        const T* masks = *static_cast<const T**>(params[0]);
        const mre::PasteBox* boxes = *static_cast<const mre::PasteBox**>(params[1]);
        const int* order = *static_cast<const int**>(params[2]);
        const mre::InstanceParams p = *static_cast<mre::InstanceParams*>(params[3]);
        int* ids = *static_cast<int**>(params[4]);
        run_tiled(grid, block, masks, boxes, order, p,
                  [&](int x, int y, int id) { ids[(long long)y * p.width + x] = id; });
        return;
    }
    const unsigned char* src = *static_cast<const unsigned char**>(params[0]);
    const T* masks = *static_cast<const T**>(params[1]);
    const mre::PasteBox* boxes = *static_cast<const mre::PasteBox**>(params[2]);
    const int* order = *static_cast<const int**>(params[3]);
    const unsigned char* colours = *static_cast<const unsigned char**>(params[4]);
    const mre::InstanceParams p = *static_cast<mre::InstanceParams*>(params[5]);
    unsigned char* dst = *static_cast<unsigned char**>(params[6]);
    run_tiled(grid, block, masks, boxes, order, p, [&](int x, int y, int id) {
        mre::render_pixel(src + (long long)y * p.src_pitch + 3 * x, dst + (long long)y * p.dst_pitch + 3 * x,
                          colours, id, p.alpha);
    });
}

// The tiled kernels need exactly TILE_W x TILE_H blocks (their shared lists hold TILE_CAP ranks).
// "_f16" names read the masks as half bits, the others as float32.
int launch_tiled(const char* name, Dim3 grid, Dim3 block, void** params) {
    if (block.x != (unsigned)mre::TILE_W || block.y != (unsigned)mre::TILE_H || block.z != 1) return -2;
    bool render = !std::strncmp(name, "render_instances", 16);
    std::size_t len = std::strlen(name);
    if (len > 4 && !std::strcmp(name + len - 4, "_f16"))
        launch_tiled_as<unsigned short>(render, grid, block, params);
    else
        launch_tiled_as<float>(render, grid, block, params);
    return 0;
}

}  // namespace mre_host

extern "C" {

// Layout probes: the Python mirrors (cuda_ops.LetterboxParams, int32 [N,4] boxes) must match.
int host_sizeof_letterbox_params() { return (int)sizeof(mre::LetterboxParams); }
int host_offsetof_letterbox_add() { return (int)offsetof(mre::LetterboxParams, add); }
int host_sizeof_paste_box() { return (int)sizeof(mre::PasteBox); }
int host_sizeof_instance_params() { return (int)sizeof(mre::InstanceParams); }

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

void host_half_to_float(const unsigned short* src, float* dst, long long n) {
    for (long long i = 0; i < n; ++i) dst[i] = mre::half_bits_to_float(src[i]);
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

// Run kernel `name` over grid x block, parameters packed as for cuLaunchKernel. Returns 0, -1
// for a name that is not a kernel of runtime/gpu/kernels, -2 for a tiled kernel on other blocks.
int host_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                unsigned bz, void** params) {
    mre_host::Dim3 grid{gx, gy, gz}, block{bx, by, bz};
    if (!std::strcmp(name, "letterbox_f32")) mre_host::run_grid(letterbox_f32, grid, block, params);
    else if (!std::strcmp(name, "letterbox_f16")) mre_host::run_grid(letterbox_f16, grid, block, params);
    else if (!std::strcmp(name, "paste_mask_u8")) mre_host::run_grid(paste_mask_u8, grid, block, params);
    else if (!std::strcmp(name, "instance_map") || !std::strcmp(name, "render_instances") ||
             !std::strcmp(name, "instance_map_f16") || !std::strcmp(name, "render_instances_f16"))
        return mre_host::launch_tiled(name, grid, block, params);
    else if (!std::strcmp(name, "overlay")) mre_host::run_grid(overlay, grid, block, params);
    else return -1;
    return 0;
}

}  // extern "C"
