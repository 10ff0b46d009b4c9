/* vecw.h - vec4.h's rounding and exponential for any vector width. A file
 * defines VX_ROUND_NAME and VX_EXP_NAME (the two functions' names),
 * VX_EXP_F and VX_EXP_I (float and int32 generic vectors of one lane count)
 * and includes this: vec4.h for 4 lanes, the AVX2 backend's element-wise
 * file (kernels/avx2_elem.c) for 8 (vswiglu.h builds SwiGLU on them).
 * Each width does the same IEEE operations per lane, so an element gets the
 * same bits from any of them, as long as the including file is built
 * without contraction (a fused multiply-add rounds once where these round
 * twice). */
#if !defined(VX_ROUND_NAME) || !defined(VX_EXP_NAME) || !defined(VX_EXP_F) || !defined(VX_EXP_I)
#error "define VX_ROUND_NAME, VX_EXP_NAME, VX_EXP_F and VX_EXP_I before including vecw.h"
#endif

/* x rounded to an integer, half to even (the default rounding mode), for
 * |x| <= 2^22: adding 1.5 * 2^23 leaves a float whose ulp is 1, and
 * subtracting it again is exact. A branch-free lrintf without libm. */
static inline VX_EXP_F VX_ROUND_NAME(VX_EXP_F x) { return (x + 12582912.0f) - 12582912.0f; }

/* e^x, within 2 ulp of e^x rounded to float: +Inf above ~88.72, 0 (through
 * the subnormals) below ~-103.9, NaN kept. x = n ln 2 + r with
 * |r| <= ln 2 / 2 (ln 2 in two parts, so n ln2_hi is exact), e^r by its
 * Taylor series to r^7 (the next term is below 2^-26 of the result), times
 * 2^n as two factors 2^(n/2) and 2^(n - n/2) built from exponent bits, so
 * both stay normal where 2^n alone would not. */
static inline VX_EXP_F VX_EXP_NAME(VX_EXP_F x) {
    /* a scalar operand is widened to every lane; 0 + c is c exactly */
#define VX_EXP_SPLAT(c) ((VX_EXP_F){0} + (c))
#define VX_EXP_SELECT(m, a, b) ((VX_EXP_F)(((VX_EXP_I)(a) & (m)) | ((VX_EXP_I)(b) & ~(m))))
    const VX_EXP_I is_num = x == x;
    VX_EXP_F xc = VX_EXP_SELECT(is_num, x, VX_EXP_SPLAT(0.0f));
    xc = VX_EXP_SELECT(xc > 89.0f, VX_EXP_SPLAT(89.0f), xc);
    xc = VX_EXP_SELECT(xc < -104.0f, VX_EXP_SPLAT(-104.0f), xc);
    const VX_EXP_F n = VX_ROUND_NAME(xc * 1.44269504088896341f); /* x / ln 2: -150..128 */
    const VX_EXP_F r = (xc - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
    /* in pairs (Estrin), not one Horner chain: a chain of 14 dependent
     * operations held the loops that call this to its latency */
    const VX_EXP_F r2 = r * r, r4 = r2 * r2;
    const VX_EXP_F p01 = 1.0f + r, p23 = 0.5f + r * (1.0f / 6.0f);
    const VX_EXP_F p45 = (1.0f / 24.0f) + r * (1.0f / 120.0f);
    const VX_EXP_F p67 = (1.0f / 720.0f) + r * (1.0f / 5040.0f);
    const VX_EXP_F p = (p01 + r2 * p23) + r4 * (p45 + r2 * p67);
    const VX_EXP_I ni = __builtin_convertvector(n, VX_EXP_I);
    const VX_EXP_I n1 = ni >> 1, n2 = ni - n1; /* each in [-75, 64] */
    const VX_EXP_F s1 = (VX_EXP_F)((n1 + 127) << 23), s2 = (VX_EXP_F)((n2 + 127) << 23);
    return VX_EXP_SELECT(is_num, (p * s1) * s2, x);
#undef VX_EXP_SPLAT
#undef VX_EXP_SELECT
}

#undef VX_ROUND_NAME
#undef VX_EXP_NAME
#undef VX_EXP_F
#undef VX_EXP_I
