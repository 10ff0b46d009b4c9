/* vec4.h - 4-lane float / int32 vectors through the compiler's generic
 * vector extension (GCC, Clang): SSE2 on x86-64, Advanced SIMD on AArch64,
 * scalar code elsewhere. For the few loops outside the backends (argmax,
 * the activation quantizer) that must give the same bits everywhere: each
 * lane does the scalar code's IEEE operations, so no backend seam is needed.
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
#endif
