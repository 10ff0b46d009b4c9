/* vec4.h - 4-lane float / int32 vectors through the compiler's generic
 * vector extension (GCC, Clang): SSE2 on x86-64, Advanced SIMD on AArch64,
 * scalar code elsewhere. For the loops that must give the same bits
 * everywhere (argmax, the activation quantizer, the exponentials of the
 * softmax and SwiGLU): each lane does the same IEEE operations in the same
 * order (the scalar code's, where there is one). The quantizer and SwiGLU
 * written here define the bits a backend's wider versions must give
 * (engine.h's quantize_act and swiglu).
 * Comparisons give int32 masks (-1 true, 0 false). */
#ifndef VX_VEC4_H
#define VX_VEC4_H
#include <stdint.h>
#include <string.h>

typedef float vx_f32x4 __attribute__((vector_size(16)));
typedef int32_t vx_i32x4 __attribute__((vector_size(16)));

static inline vx_f32x4 vx_splat4(float v) { return (vx_f32x4){v, v, v, v}; }

/* Four floats from p (any alignment). */
static inline vx_f32x4 vx_load4(const float *p) {
    vx_f32x4 v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* mask ? a : b per lane, for int32 masks as comparisons make them. */
static inline vx_f32x4 vx_select4(vx_i32x4 mask, vx_f32x4 a, vx_f32x4 b) {
    return (vx_f32x4)(((vx_i32x4)a & mask) | ((vx_i32x4)b & ~mask));
}
static inline vx_i32x4 vx_select4i(vx_i32x4 mask, vx_i32x4 a, vx_i32x4 b) {
    return (a & mask) | (b & ~mask);
}

/* vx_round4: x rounded half to even, for |x| <= 2^22; vx_exp4: e^x per
 * lane, within 2 ulp of e^x rounded to float, +Inf and 0 past the ends, NaN
 * kept (both in vecw.h, written once for every width). The files that use
 * them are built without contraction, so every lane, platform and position
 * in a loop gets the same bits. */
#define VX_ROUND_NAME vx_round4
#define VX_EXP_NAME vx_exp4
#define VX_EXP_F vx_f32x4
#define VX_EXP_I vx_i32x4
#include "vecw.h"
#endif
