/* elementwise.c - the element-wise loops a backend may replace with wider
 * vectors (engine.h's vx_backend), in vec4.h's 4 lanes: these define the
 * bits. Built without contraction (CMakeLists.txt), as vec4.h needs. */
#include <stddef.h>
#include <string.h>

#include "engine.h"
#include "vec4.h"

/* silu(x) * h = x / (1 + e^-x) * h, in that order. */
static inline vx_f32x4 silu_mul4(vx_f32x4 x, vx_f32x4 h) {
    return x / (vx_splat4(1.0f) + vx_exp4(-x)) * h;
}

void vx_swiglu4(float *h1, const float *h3, size_t count) {
    size_t i = 0;
    for (; i + 4 <= count; i += 4) {
        const vx_f32x4 y = silu_mul4(vx_load4(h1 + i), vx_load4(h3 + i));
        memcpy(h1 + i, &y, sizeof y);
    }
    if (i < count) { /* the tail through the same operations, padded with zeros */
        const size_t k = count - i;
        vx_f32x4 x = vx_splat4(0.0f), h = vx_splat4(0.0f);
        memcpy(&x, h1 + i, k * sizeof(float));
        memcpy(&h, h3 + i, k * sizeof(float));
        const vx_f32x4 y = silu_mul4(x, h);
        memcpy(h1 + i, &y, k * sizeof(float));
    }
}
