/* vec4.h - 4-lane float / int32 vectors through the compiler's generic
 * vector extension (GCC, Clang): SSE2 on x86-64, Advanced SIMD on AArch64,
 * scalar code elsewhere. For the few loops outside the backends (argmax,
 * the activation quantizer, the CPU device's exponentials) that must give
 * the same bits everywhere: each lane does the same IEEE operations in the
 * same order (the scalar code's, where there is one), so no backend seam
 * is needed.
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

/* x rounded to an integer, half to even (the default rounding mode), for
 * |x| <= 2^22: adding 1.5 * 2^23 leaves a float whose ulp is 1, and
 * subtracting it again is exact. A branch-free lrintf without libm. */
static inline vx_f32x4 vx_round4(vx_f32x4 x) {
    const vx_f32x4 shift = vx_splat4(12582912.0f);
    return (x + shift) - shift;
}

/* mask ? a : b per lane, for int32 masks as comparisons make them. */
static inline vx_f32x4 vx_select4(vx_i32x4 mask, vx_f32x4 a, vx_f32x4 b) {
    return (vx_f32x4)(((vx_i32x4)a & mask) | ((vx_i32x4)b & ~mask));
}
static inline vx_i32x4 vx_select4i(vx_i32x4 mask, vx_i32x4 a, vx_i32x4 b) {
    return (a & mask) | (b & ~mask);
}

/* e^x per lane, within 2 ulp of e^x rounded to float: +Inf above ~88.72,
 * 0 (through the subnormals) below ~-103.9, NaN kept. x = n ln 2 + r with |r| <= ln 2 / 2
 * (ln 2 in two parts, so n ln2_hi is exact), e^r by its Taylor series to
 * r^7 (the next term is below 2^-26 of the result), times 2^n as two
 * factors 2^(n/2) and 2^(n - n/2) built from exponent bits, so both stay
 * normal where 2^n alone would not. Plain multiplies and adds: the file
 * that uses it is built without contraction, so every lane, platform and
 * position in a loop gets the same bits. */
static inline vx_f32x4 vx_exp4(vx_f32x4 x) {
    const vx_i32x4 is_num = x == x;
    vx_f32x4 xc = vx_select4(is_num, x, vx_splat4(0.0f));
    xc = vx_select4(xc > vx_splat4(89.0f), vx_splat4(89.0f), xc);
    xc = vx_select4(xc < vx_splat4(-104.0f), vx_splat4(-104.0f), xc);
    const vx_f32x4 n = vx_round4(xc * vx_splat4(1.44269504088896341f)); /* x / ln 2: -150..128 */
    const vx_f32x4 ln2_hi = vx_splat4(0.693145751953125f);
    const vx_f32x4 ln2_lo = vx_splat4(1.42860682030941723e-6f);
    const vx_f32x4 r = (xc - n * ln2_hi) - n * ln2_lo;
    /* in pairs (Estrin), not one Horner chain: a chain of 14 dependent
     * operations held the loops that call this to its latency */
    const vx_f32x4 r2 = r * r, r4 = r2 * r2;
    const vx_f32x4 p01 = vx_splat4(1.0f) + r, p23 = vx_splat4(0.5f) + r * vx_splat4(1.0f / 6.0f);
    const vx_f32x4 p45 = vx_splat4(1.0f / 24.0f) + r * vx_splat4(1.0f / 120.0f);
    const vx_f32x4 p67 = vx_splat4(1.0f / 720.0f) + r * vx_splat4(1.0f / 5040.0f);
    const vx_f32x4 p = (p01 + r2 * p23) + r4 * (p45 + r2 * p67);
    const vx_i32x4 ni = __builtin_convertvector(n, vx_i32x4);
    const vx_i32x4 n1 = ni >> 1, n2 = ni - n1; /* each in [-75, 64] */
    const vx_f32x4 s1 = (vx_f32x4)((n1 + 127) << 23), s2 = (vx_f32x4)((n2 + 127) << 23);
    return vx_select4(is_num, (p * s1) * s2, x);
}
#endif
