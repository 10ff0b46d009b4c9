/* vswiglu.h - SwiGLU along a row for one generic-vector width, written once.
 * The including file defines VX_SWIGLU_NAME (the function), VX_SWIGLU_F (a
 * float vector) and VX_SWIGLU_EXP (vecw.h's exponential for that width), and
 * is built without contraction: elementwise.c at 4 lanes (vx_swiglu4, the
 * definition), kernels/avx2_elem.c at 8. Each lane computes
 * h1 / (1 + e^-h1) * h3 in that order, and the tail goes through the same
 * operations padded with zeros, so an element's bits depend neither on the
 * width nor on where a loop starts. */
#if !defined(VX_SWIGLU_NAME) || !defined(VX_SWIGLU_F) || !defined(VX_SWIGLU_EXP)
#error "define VX_SWIGLU_NAME, VX_SWIGLU_F and VX_SWIGLU_EXP before including vswiglu.h"
#endif

void VX_SWIGLU_NAME(float *h1, const float *h3, size_t count) {
    const size_t lanes = sizeof(VX_SWIGLU_F) / sizeof(float);
    size_t i = 0;
    for (; i + lanes <= count; i += lanes) {
        VX_SWIGLU_F x, h;
        memcpy(&x, h1 + i, sizeof x);
        memcpy(&h, h3 + i, sizeof h);
        const VX_SWIGLU_F y = x / (1.0f + VX_SWIGLU_EXP(-x)) * h;
        memcpy(h1 + i, &y, sizeof y);
    }
    if (i < count) {
        const size_t k = count - i;
        VX_SWIGLU_F x = {0}, h = {0};
        memcpy(&x, h1 + i, k * sizeof(float));
        memcpy(&h, h3 + i, k * sizeof(float));
        const VX_SWIGLU_F y = x / (1.0f + VX_SWIGLU_EXP(-x)) * h;
        memcpy(h1 + i, &y, k * sizeof(float));
    }
}

#undef VX_SWIGLU_NAME
#undef VX_SWIGLU_F
#undef VX_SWIGLU_EXP
