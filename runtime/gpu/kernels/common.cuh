// Shared helpers for the runtime kernels. Everything here builds for the device (NVRTC, nvcc) and
// for the host (g++), so that the per-pixel arithmetic the GPU runs is the arithmetic the tests run.
// No system headers: NVRTC compiles these without a CUDA toolkit include path.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define MRE_HD __host__ __device__ __forceinline__
#else
#define MRE_HD inline
#endif

namespace mre {

// Bilinear source index with torch.nn.functional.interpolate(mode="bilinear", align_corners=False)
// semantics for one axis: the scale is in_size / out_size in float32 (what torch recomputes from the
// integer sizes), the source coordinate is clamped at 0, and the upper neighbour is clamped to the
// last element. No antialiasing: a downscale samples, it does not average.
struct Tap {
    int i0;      // lower source index
    int i1;      // upper source index (== i0 on the last element)
    float w1;    // weight of i1; i0 gets 1 - w1
};

MRE_HD float interp_scale(int in_size, int out_size) {
    return (float)in_size / (float)out_size;
}

MRE_HD Tap bilinear_tap(float scale, int dst, int in_size) {
    float src = scale * ((float)dst + 0.5f) - 0.5f;
    if (src < 0.0f) src = 0.0f;
    Tap t;
    t.i0 = (int)src;  // src >= 0: truncation is floor
    if (t.i0 > in_size - 1) t.i0 = in_size - 1;
    t.i1 = t.i0 + ((t.i0 < in_size - 1) ? 1 : 0);
    t.w1 = src - (float)t.i0;
    return t;
}

// One rounding rule for both sides: a*(1-w) + b*w, evaluated in this order, in float32.
MRE_HD float lerp(float a, float b, float w) {
    return a * (1.0f - w) + b * w;
}

// float32 -> IEEE half bits, round to nearest even (numpy's astype(float16) and __float2half_rn).
// Written with integer arithmetic so that host and device agree bit for bit.
MRE_HD unsigned short float_to_half_bits(float value) {
    union { float f; unsigned int u; } in;
    in.f = value;
    unsigned int x = in.u;
    unsigned int sign = x & 0x80000000u;
    x ^= sign;
    unsigned int out;
    if (x >= 0x47800000u) {                        // >= 65536, inf or nan
        out = (x > 0x7f800000u) ? 0x7e00u : 0x7c00u;
    } else if (x < 0x38800000u) {                  // below the smallest normal half: subnormal or 0
        if (x < 0x33000000u) {                     // < 2^-25 rounds to zero (2^-25 itself ties to 0)
            out = 0u;
        } else {
            unsigned int exponent = x >> 23;                   // 102 .. 112
            unsigned int mantissa = (x & 0x007fffffu) | 0x00800000u;
            unsigned int shift = 126u - exponent;              // 14 .. 24
            unsigned int q = mantissa >> shift;
            unsigned int rem = mantissa & ((1u << shift) - 1u);
            unsigned int half = 1u << (shift - 1u);
            if (rem > half || (rem == half && (q & 1u))) q += 1u;
            out = q;
        }
    } else {
        unsigned int odd = (x >> 13) & 1u;
        x += 0xc8000000u + 0x0fffu + odd;          // rebias exponent (-112 << 23) and round
        out = x >> 13;
    }
    return (unsigned short)(out | (sign >> 16));
}

// IEEE half bits -> float32, exactly (every half is a float32; numpy's astype(float32) and
// __half2float). Integer arithmetic, so that the host build and the device agree bit for bit and
// no cuda_fp16.h is needed (NVRTC compiles without a toolkit include path). The engine's fp16
// masks are read in place through this.
MRE_HD float half_bits_to_float(unsigned short h) {
    unsigned int sign = (unsigned int)(h & 0x8000u) << 16;
    unsigned int exponent = (h >> 10) & 0x1fu;
    unsigned int mantissa = h & 0x3ffu;
    unsigned int bits;
    if (exponent == 0x1fu) {                       // inf, nan (payload kept)
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent != 0u) {                   // normal: rebias 15 -> 127
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    } else if (mantissa == 0u) {                   // +-0
        bits = sign;
    } else {                                       // subnormal m * 2^-24: normalise
        unsigned int e = 113u;                     // biased exponent of 2^-14
        while (!(mantissa & 0x400u)) {
            mantissa <<= 1;
            --e;
        }
        bits = sign | (e << 23) | ((mantissa & 0x3ffu) << 13);
    }
    union { unsigned int u; float f; } out;
    out.u = bits;
    return out.f;
}


}  // namespace mre
