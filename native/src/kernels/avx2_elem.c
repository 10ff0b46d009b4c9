/* avx2_elem.c - the x86 backends' element-wise loops in 8-lane vectors:
 * elementwise.c's, lane for lane (vecw.h's exponential at 8 lanes), so the
 * same bits. Compiled with -mavx2 and without contraction, and without
 * -mfma, so no multiply can fuse into an add (CMakeLists.txt). */
#if defined(VX_HAVE_AVX2)
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "engine.h"

typedef float vx_f32x8 __attribute__((vector_size(32)));
typedef int32_t vx_i32x8 __attribute__((vector_size(32)));

#define VX_ROUND_NAME vx_round8
#define VX_EXP_NAME vx_exp8
#define VX_EXP_F vx_f32x8
#define VX_EXP_I vx_i32x8
#include "vecw.h"

/* elementwise.c's silu_mul4 at 8 lanes: x / (1 + e^-x) * h. */
static inline vx_f32x8 silu_mul8(vx_f32x8 x, vx_f32x8 h) { return x / (1.0f + vx_exp8(-x)) * h; }

/* vx_swiglu4's contract and bits (device_cpu.c has the timings). */
void vx_avx2_swiglu(float *h1, const float *h3, size_t count) {
    size_t i = 0;
    for (; i + 8 <= count; i += 8) {
        vx_f32x8 x, h;
        memcpy(&x, h1 + i, sizeof x);
        memcpy(&h, h3 + i, sizeof h);
        const vx_f32x8 y = silu_mul8(x, h);
        memcpy(h1 + i, &y, sizeof y);
    }
    if (i < count) { /* the tail through the same operations, padded with zeros */
        const size_t k = count - i;
        vx_f32x8 x = {0}, h = {0};
        memcpy(&x, h1 + i, k * sizeof(float));
        memcpy(&h, h3 + i, k * sizeof(float));
        const vx_f32x8 y = silu_mul8(x, h);
        memcpy(h1 + i, &y, k * sizeof(float));
    }
}
#endif
