// Shared device helpers of the CUDA kernels (csrc/cuda/*.cu). Header-free on purpose: the kernels
// compile under NVRTC (cupy.RawModule, at run time) and nvcc (the CI compile check) without the
// CUDA toolkit's cuda_fp16.h / cuda_bf16.h, so 16-bit values are bit patterns converted with PTX.
// Element types: float (f32), f16 (IEEE half), bf16 (bfloat16); accumulation is always float.
#pragma once

#define NEG_INF __int_as_float(0xff800000)

struct f16 { unsigned short bits; };
struct bf16 { unsigned short bits; };

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(f16 v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
    return f;
}
__device__ __forceinline__ float to_float(bf16 v) {
    return __uint_as_float(static_cast<unsigned>(v.bits) << 16);
}

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ f16 from_float<f16>(float v) {
    f16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(v));
    return r;
}
template <> __device__ __forceinline__ bf16 from_float<bf16>(float v) {
    bf16 r;  // round to nearest even, NaN kept (PTX cvt.rn.bf16.f32, sm_80+)
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.bits) : "f"(v));
    return r;
}

// Two floats packed into one 32-bit register of 16-bit values, lo in the low half (the element
// with the lower index), as mma.sync fragments expect.
template <typename T> __device__ __forceinline__ unsigned pack2(float lo, float hi);
template <> __device__ __forceinline__ unsigned pack2<f16>(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
template <> __device__ __forceinline__ unsigned pack2<bf16>(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum (or max) over the whole block: warp shuffles, then one value per warp through shared
// memory. Every thread gets the result. blockDim.x must be a multiple of 32 (<= 1024).
__device__ __forceinline__ float block_reduce(float v, bool is_max) {
    __shared__ float partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    v = is_max ? warp_max(v) : warp_sum(v);
    __syncthreads();  // partial[] may still be read by a previous call
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < n_warps ? partial[lane] : (is_max ? NEG_INF : 0.0f);
    return is_max ? warp_max(v) : warp_sum(v);
}

#define LOG2E 1.4426950408889634f

// Instantiate extern "C" kernels NAME_f32 / NAME_f16 / NAME_bf16 from the device template
// NAME_impl<T>: ARGS is a function-like macro giving the parameter list for an element type,
// CALL the argument list passed on.
#define INSTANTIATE(NAME, ARGS, CALL)                                                           \
    extern "C" __global__ void NAME##_f32 ARGS(float) { NAME##_impl<float> CALL; }            \
    extern "C" __global__ void NAME##_f16 ARGS(f16) { NAME##_impl<f16> CALL; }                \
    extern "C" __global__ void NAME##_bf16 ARGS(bf16) { NAME##_impl<bf16> CALL; }
