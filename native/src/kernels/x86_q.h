/* x86_q.h - the x86 Q8/Q4 kernels (int8 activations, integer dot products),
 * written once and compiled per instruction set: avx2.c includes it with
 * XQ_VNNI 0 (vpmaddubsw + vpmaddwd), avxvnni.c with 1 (VEX vpdpbusd on ymm,
 * AVX-VNNI: Alder Lake and later, Zen 4 and later) and avx512vnni.c with 2
 * (the EVEX form on ymm, AVX512-VNNI + VL: Ice Lake / Cascade Lake servers).
 * The including file defines INLINE and XQ_VNNI and is compiled with the
 * flags of its instruction set; everything here is static.
 *
 * vpdpbusd multiplies unsigned by signed bytes and adds each group of four
 * products into an int32 lane, with no int16 step: one instruction for what
 * vpmaddubsw + vpmaddwd do in two. The int32 lane sums are exact either way,
 * so all three variants give the same integers, and the float work after
 * them (conversion, one FMA per block, the fixed reduction) is the same code:
 * results are bitwise equal across the variants and with the portable
 * backend. How the operands become unsigned x signed:
 *   Q8 (n == 1): |w| x sign(x, w), as for vpmaddubsw.
 *   Q8 (n >= 2, EVEX): x + 128 (x ^ 0x80, one xor per input block) x w,
 *       started from -128 * (lane sums of w) (one vpdpbusd per row block,
 *       shared by the tile's inputs): the sum is exactly that of x * w. With
 *       16 registers (VEX) the start values' copies spilled the
 *       accumulators, so there it is |w| x sign(x, w) as for n == 1.
 *   Q4: the nibbles (0..15) x x, started from -8 * (lane sums of x) (per
 *       input block), the low and high nibbles' products chained into one
 *       accumulator: exactly the sum of (nibble - 8) * x.
 * Only these helpers differ between the variants; the tiles, the
 * matrix-vector streams and the row driver are shared, except the streams
 * of a group against 2..8 inputs, which only EVEX has the registers for. */
#ifndef VX_X86_Q_H
#define VX_X86_Q_H
#include <immintrin.h>
#include <string.h>

#include "engine.h"
#include "quant.h"

#if XQ_VNNI == 1
#define XQ_DPBUSD(acc, u, s) _mm256_dpbusd_avx_epi32(acc, u, s)
#elif XQ_VNNI == 2
#define XQ_DPBUSD(acc, u, s) _mm256_dpbusd_epi32(acc, u, s)
#endif

/* The AVX2 backend's float paths (avx2.c), which the VNNI variants share. */
int vx_avx2_matmul_rows(const vx_weight *W, const float *X, int n, int ldx, float *Y, int ldy,
                        int64_t r0, int64_t r1);
void vx_avx2_attn_scores(const float *const *q, int nq, const void *K, int f16, size_t ldk,
                         int64_t nk, int hd, float *S, size_t lds);
void vx_avx2_attn_values(const float *P, size_t ldp, int nq, const void *V, int f16, size_t ldv,
                         int64_t nk, int hd, float *const *o);
#define VX_AVX2_DTYPES                                                                         \
    ((1u << VX_DT_F32) | (1u << VX_DT_F16) | (1u << VX_DT_BF16) | (1u << VX_DT_Q8) |           \
     (1u << VX_DT_Q4))

#define XQ_MAX_N 64 /* rows of X per call (kernels.c's BATCH) */

/* Fixed final reduction of the 8 lanes: ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)). */
INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}


/* ---------------- Q8 / Q4: int8 activations, integer dot products */

/* Lane sums isum[j] of one Q8 (row, input) block: |w| x sign(x, w). */
INLINE __m256i q8_isum(__m256i wb, __m256i x) {
#if XQ_VNNI
    return XQ_DPBUSD(_mm256_setzero_si256(), _mm256_abs_epi8(wb), _mm256_sign_epi8(x, wb));
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(wb), _mm256_sign_epi8(x, wb)),
                             _mm256_set1_epi16(1));
#endif
}

/* Lane k of both 128-bit halves of s, i.e. [s_k x4 | s_k+4 x4] (k < 4).
 * A switch, as vshufps needs an immediate even in an unoptimised build;
 * k is a constant in the unrolled loops, so it folds to one vshufps. */
INLINE __m256 q_splat2(__m256 s, int k) {
    switch (k & 3) {
    case 0: return _mm256_shuffle_ps(s, s, 0x00);
    case 1: return _mm256_shuffle_ps(s, s, 0x55);
    case 2: return _mm256_shuffle_ps(s, s, 0xaa);
    default: return _mm256_shuffle_ps(s, s, 0xff);
    }
}

#define QA 8        /* row stride of the accumulator arrays */
/* Inputs per Q8 / Q4 tile, as many as the registers hold without spilling
 * accumulators: 16 ymm registers (VEX) take 4 rows x 3 inputs of Q8 with
 * vpmaddubsw but only x 2 with vpdpbusd (its accumulator operand is also its
 * result, so the start value needs a copy per use); EVEX has 32. Q4 keeps
 * two rows to a register and needs more per input. */
#if XQ_VNNI == 2
#define QMAX_N 4
#define Q4MAX_N 4
#elif XQ_VNNI == 1
#define QMAX_N 2
#define Q4MAX_N 2
#else
#define QMAX_N 3
#define Q4MAX_N 2
#endif
#define QR 4         /* rows per tile of the batched path */
#define QCHUNK 16    /* blocks per chunk of the batched path (512 columns) */

/* The fp16 scales of block b of rows w[0..R) (R = 1 or QR) as one 64-bit
 * integer, row k in bits 16k..16k+15. A tile of QR rows is QR consecutive
 * rows of one group (q_rows_batched forms no other), so its scales are 8
 * consecutive bytes: one scalar load, on the integer pipes, which the
 * vector work leaves idle. */
INLINE uint64_t q_scale_bits(int R, const vx_qrow *w, int64_t b) {
    const uint8_t *p = w[0].scale + (size_t)b * w[0].stride;
    uint64_t h;
    if (R == QR) {
        memcpy(&h, p, 8);
    } else {
        uint16_t v;
        memcpy(&v, p, 2);
        h = v;
    }
    return h;
}

/* Payload of block b of row view w. */
INLINE const uint8_t *q_payload(const vx_qrow *w, int64_t b) { return w->payload + (size_t)b * w->stride; }

/* Q8: blocks [b0, b1) of R rows (views w[k]) x N inputs (int8 rows of X at stride
 * cols, scales at stride cols / 32); acc[i * QA + k] carries the chain of
 * (input i, row k) in and out, so splitting the blocks reorders nothing. */
INLINE void q8tile(int R, int N, const vx_qrow *w, const int8_t *xq, const float *xd,
                   int64_t cols, int64_t b0, int64_t b1, __m256 *acc) {
    const int64_t nblk = cols / VX_QBLOCK;
    __m256 a[QMAX_N][QR];
    _Pragma("GCC unroll 8")
    for (int i = 0; i < N; i++)
        _Pragma("GCC unroll 8")
        for (int k = 0; k < R; k++) a[i][k] = acc[i * QA + k];
    /* The R x N scales dw * dx of a block (R <= 4): the R fp16 dw in one
     * 64-bit integer whose vcvtph2ps fills both halves with [dw_0..dw_3];
     * one vmulps per input (the same IEEE products as scalar multiplies) and
     * one in-lane shuffle per (row, input) splat each scale, with no store
     * and reload. The loops over k and i are unrolled so accumulators, x and
     * constants stay in registers (at -O2 GCC left them in memory: 2x
     * slower). */
    for (int64_t b = b0; b < b1; b++) {
        const __m256 dw = _mm256_cvtph_ps(_mm_set1_epi64x((long long)q_scale_bits(R, w, b)));
        __m256i xv[QMAX_N];
        __m256 sv[QMAX_N];
        _Pragma("GCC unroll 8")
        for (int i = 0; i < N; i++) {
            xv[i] = _mm256_loadu_si256((const __m256i *)(const void *)(xq + (size_t)i * cols + b * VX_QBLOCK));
#if XQ_VNNI == 2
            xv[i] = _mm256_xor_si256(xv[i], _mm256_set1_epi8(-128)); /* x + 128, unsigned */
#endif
            sv[i] = _mm256_mul_ps(dw, _mm256_broadcast_ss(xd + (size_t)i * nblk + b));
        }
        _Pragma("GCC unroll 8")
        for (int k = 0; k < R; k++) {
            const __m256i wb = _mm256_loadu_si256((const __m256i *)(const void *)q_payload(&w[k], b));
#if XQ_VNNI == 2
            /* -128 * lane sums of w: the start that takes the + 128 off again */
            const __m256i base = _mm256_sub_epi32(_mm256_setzero_si256(),
                                                  XQ_DPBUSD(_mm256_setzero_si256(), _mm256_set1_epi8(-128), wb));
#endif
            _Pragma("GCC unroll 8")
            for (int i = 0; i < N; i++) {
#if XQ_VNNI == 2
                const __m256i isum = XQ_DPBUSD(base, xv[i], wb);
#else
                const __m256i isum = q8_isum(wb, xv[i]);
#endif
                a[i][k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), q_splat2(sv[i], k), a[i][k]);
            }
        }
    }
    _Pragma("GCC unroll 8")
    for (int i = 0; i < N; i++)
        _Pragma("GCC unroll 8")
        for (int k = 0; k < R; k++) acc[i * QA + k] = a[i][k];
}

/* Q4's int32 lanes for a register holding the bytes of one block of two rows
 * (one per 128-bit half): nl / nh the low / high nibbles, xl / xh the
 * input's elements 0-15 / 16-31 in both halves, corr = 8 * their lane sums. */
INLINE __m256i q4_isum(__m256i nl, __m256i nh, __m256i xl, __m256i xh, __m256i corr) {
#if XQ_VNNI
    return XQ_DPBUSD(XQ_DPBUSD(corr, nl, xl), nh, xh); /* corr = -8 * lane sums */
#else
    const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(nl, xl), _mm256_maddubs_epi16(nh, xh));
    return _mm256_sub_epi32(_mm256_madd_epi16(p, _mm256_set1_epi16(1)), corr);
#endif
}

/* What q4_isum takes as corr: 8 * the input's lane sums (VNNI: negated,
 * the accumulator's start). */
INLINE __m256i q4_corr(__m256i xl, __m256i xh) {
    const __m256i eight = _mm256_set1_epi8(8);
#if XQ_VNNI
    const __m256i z = _mm256_setzero_si256();
    return _mm256_sub_epi32(z, XQ_DPBUSD(XQ_DPBUSD(z, eight, xl), eight, xh));
#else
    return _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(eight, xl), _mm256_maddubs_epi16(eight, xh)),
                             _mm256_set1_epi16(1));
#endif
}

/* Elements 0-15 and 16-31 of an input block, each in both halves. */
INLINE void q4_x(const int8_t *xb, __m256i *xl, __m256i *xh) {
    *xl = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)xb));
    *xh = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)(xb + 16)));
}

/* The low and high nibbles of v, a register of two rows' block payloads. */
INLINE void q4_split(__m256i v, __m256i *nl, __m256i *nh) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    *nl = _mm256_and_si256(v, m4);
    *nh = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
}

/* Q4's reduction (a0+a2) + (a1+a3) of each half of v: *lo of the low half,
 * *hi of the high one. */
INLINE void hsum4_pair(__m256 v, float *lo, float *hi) {
    __m128 t0 = _mm256_castps256_ps128(v), t1 = _mm256_extractf128_ps(v, 1);
    t0 = _mm_add_ps(t0, _mm_movehl_ps(t0, t0));
    t1 = _mm_add_ps(t1, _mm_movehl_ps(t1, t1));
    *lo = _mm_cvtss_f32(_mm_add_ss(t0, _mm_movehdup_ps(t0)));
    *hi = _mm_cvtss_f32(_mm_add_ss(t1, _mm_movehdup_ps(t1)));
}

/* Q4: blocks [b0, b1) of 4 rows of one group as the pairs (0, 1) and
 * (2, 3) x N inputs; a pair's payloads are 32 consecutive bytes, one load,
 * and acc[i * QA + p] holds its chains ([row 2p | row 2p+1]). The scales
 * reordered in integer registers to [dw0 dw2 . . | dw1 dw3 . .] make one
 * in-lane splat per pair give [dw_2p x4 | dw_2p+1 x4]. */
INLINE void q4tile4(int N, const vx_qrow *w, const int8_t *xq, const float *xd, int64_t cols,
                    int64_t b0, int64_t b1, __m256 *acc) {
    const int64_t nblk = cols / VX_QBLOCK;
    __m256 a[Q4MAX_N][2];
    _Pragma("GCC unroll 4")
    for (int i = 0; i < N; i++) a[i][0] = acc[i * QA], a[i][1] = acc[i * QA + 1];
    for (int64_t b = b0; b < b1; b++) {
        const uint64_t h = q_scale_bits(QR, w, b);
        const uint64_t even = (h & 0xffff) | ((h >> 16) & 0xffff0000u);
        const uint64_t odd = ((h >> 16) & 0xffff) | ((h >> 32) & 0xffff0000u);
        const __m256 dw = _mm256_cvtph_ps(_mm_set_epi64x((long long)odd, (long long)even));
        __m256i xl[Q4MAX_N], xh[Q4MAX_N], corr[Q4MAX_N];
        __m256 sv[Q4MAX_N];
        _Pragma("GCC unroll 4")
        for (int i = 0; i < N; i++) {
            q4_x(xq + (size_t)i * cols + b * VX_QBLOCK, &xl[i], &xh[i]);
            corr[i] = q4_corr(xl[i], xh[i]);
            sv[i] = _mm256_mul_ps(dw, _mm256_broadcast_ss(xd + (size_t)i * nblk + b));
        }
        _Pragma("GCC unroll 2")
        for (int p = 0; p < 2; p++) {
            __m256i nl, nh;
            q4_split(_mm256_loadu_si256((const __m256i *)(const void *)q_payload(&w[2 * p], b)), &nl, &nh);
            _Pragma("GCC unroll 4")
            for (int i = 0; i < N; i++)
                a[i][p] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q4_isum(nl, nh, xl[i], xh[i], corr[i])),
                                          q_splat2(sv[i], p), a[i][p]);
        }
    }
    _Pragma("GCC unroll 4")
    for (int i = 0; i < N; i++) acc[i * QA] = a[i][0], acc[i * QA + 1] = a[i][1];
}

/* Q4, one row x N inputs over blocks [b0, b1): the row's bytes in both
 * halves, so each half holds the same four lanes; acc[i * QA] carries them
 * (the low half is the chain, the high one a copy of it). */
INLINE void q4tile1(int N, const vx_qrow *w, const int8_t *xq, const float *xd, int64_t cols,
                    int64_t b0, int64_t b1, __m256 *acc) {
    const int64_t nblk = cols / VX_QBLOCK;
    __m256 a[Q4MAX_N];
    for (int i = 0; i < N; i++) a[i] = acc[i * QA];
    for (int64_t b = b0; b < b1; b++) {
        uint16_t hb;
        memcpy(&hb, w->scale + (size_t)b * w->stride, 2);
        const float dw = _cvtsh_ss(hb);
        __m256i nl, nh;
        q4_split(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)q_payload(w, b))),
                 &nl, &nh);
        for (int i = 0; i < N; i++) {
            __m256i xl, xh;
            q4_x(xq + (size_t)i * cols + b * VX_QBLOCK, &xl, &xh);
            const __m256 s = _mm256_set1_ps(dw * xd[(size_t)i * nblk + b]);
            a[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q4_isum(nl, nh, xl, xh, q4_corr(xl, xh))), s, a[i]);
        }
    }
    for (int i = 0; i < N; i++) acc[i * QA] = a[i];
}

/* ---- n == 1: a full group of eight rows against one input, one block at
 * a time. In the row-group layout (quant.h) a group is one contiguous run:
 * per block the eight fp16 scales (one 16-byte load and one vcvtph2ps; one
 * vmulps makes the eight products dw_k * dx, the same IEEE products as
 * scalar multiplies) and then the eight payloads back to back. Gathering
 * the scales from eight rows, and putting two rows' payloads into one
 * register, had cost about as much as the dot products here (the kernel is
 * bound by instructions on 2 cores, not by memory). Consecutive groups are
 * contiguous too, so a thread's rows are one stream; it is prefetched a
 * fixed distance ahead (prefetches never fault, so it may run past the
 * rows of the call). */
#define Q_PREFETCH_BLOCKS 8 /* group blocks of look-ahead */

INLINE void q_prefetch(const uint8_t *gb, size_t gbb) {
    const char *p = (const char *)gb + Q_PREFETCH_BLOCKS * gbb;
    for (size_t o = 0; o < gbb; o += 64) _mm_prefetch(p + o, _MM_HINT_T0);
}

/* dw_k * dx for the eight rows of a group block gb: [s0..s3 | s4..s7]. */
INLINE __m256 q_scales8(const uint8_t *gb, float dx) {
    return _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)gb)), _mm256_set1_ps(dx));
}

/* Q8: per row, |w| x sign(x, w) through maddubs / madd (q8_isum), converted
 * and FMA'd with the row's scale splat across the 8 lanes. */
static void q8_mv8(const uint8_t *g, const int8_t *xq, const float *xd, int64_t nblk, float *y) {
    const size_t gbb = VX_QGROUP * VX_Q8_BLOCK_BYTES;
    __m256 a[8];
    for (int k = 0; k < 8; k++) a[k] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nblk; b++, g += gbb) {
        q_prefetch(g, gbb);
        const __m256 s = q_scales8(g, xd[b]);
        const __m256 slo = _mm256_permute2f128_ps(s, s, 0x00), shi = _mm256_permute2f128_ps(s, s, 0x11);
        const __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)(xq + b * VX_QBLOCK));
        _Pragma("GCC unroll 8")
        for (int k = 0; k < 8; k++) {
            const __m256i wb = _mm256_loadu_si256((const __m256i *)(const void *)(g + 16 + 32 * k));
            const __m256 sk = k < 4 ? q_splat2(slo, k % 4) : q_splat2(shi, k % 4);
            a[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q8_isum(wb, x)), sk, a[k]);
        }
    }
    for (int k = 0; k < 8; k++) y[k] = hsum8(a[k]);
}

/* Q4: one 32-byte load holds rows 2k and 2k+1 (payloads are 16 bytes, back
 * to back), and the scales reordered once per block to
 * [s0 s2 s4 s6 | s1 s3 s5 s7] give both rows' scales, [s_2k x4 | s_2k+1 x4],
 * with one in-lane splat. */
static void q4_mv8(const uint8_t *g, const int8_t *xq, const float *xd, int64_t nblk, float *y) {
    const size_t gbb = VX_QGROUP * VX_Q4_BLOCK_BYTES;
    const __m256i even_odd = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    __m256 a[4];
    for (int k = 0; k < 4; k++) a[k] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nblk; b++, g += gbb) {
        q_prefetch(g, gbb);
        const __m256 s = _mm256_permutevar8x32_ps(q_scales8(g, xd[b]), even_odd);
        __m256i xl, xh;
        q4_x(xq + b * VX_QBLOCK, &xl, &xh);
        const __m256i corr = q4_corr(xl, xh);
        _Pragma("GCC unroll 4")
        for (int k = 0; k < 4; k++) {
            __m256i nl, nh;
            q4_split(_mm256_loadu_si256((const __m256i *)(const void *)(g + 16 + 32 * k)), &nl, &nh);
            a[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q4_isum(nl, nh, xl, xh, corr)), q_splat2(s, k), a[k]);
        }
    }
    for (int k = 0; k < 4; k++) hsum4_pair(a[k], y + 2 * k, y + 2 * k + 1);
}

#if XQ_VNNI == 2
/* ---- n == 2 .. QG_MAX_N (a decoder step of several streams): the n == 1
 * streams above with one set of accumulators per input, so each group
 * block is loaded (and a Q4 block's nibbles split, its scales converted)
 * once for all the inputs of a tile, and a thread's groups are one
 * prefetched stream. Over more inputs than a tile takes, a chunk of blocks
 * is streamed by the first tile and reused from L1 by the others. The 4-row
 * tiles below (the encoder's) had cost more at n = 2 than two n == 1
 * streams: [9216 x 3072] Q4 on 2 threads took 0.80 ms at n = 2 and 2.02 ms
 * at n = 8 against 0.43 ms at n = 1; these streams take 0.44 and 1.27 ms
 * (bench_kernels). The per-lane arithmetic is the n == 1 streams', so the
 * results are the same bits. EVEX only: the accumulators (4 or 8 per
 * input) and the split nibbles need its 32 registers. */
#define QG_MAX_N 8    /* inputs up to which the group streams are used */
#define QG4_TILE 4    /* Q4 inputs per tile: 16 accumulators + 8 nibble registers */
#define QG8_TILE 2    /* Q8 inputs per tile: 16 accumulators + 2 x 2 scales */
#define QG_CHUNK 16   /* blocks per chunk when the inputs take several tiles */

/* Q4: group g (the group's first block), blocks [b0, b1), N inputs; acc[i *
 * 4 + k] is input i's chain of rows (2k, 2k+1), as in q4_mv8. pf: prefetch
 * ahead (the first tile of a chunk, which reads the group from memory). */
INLINE void q4_gn(int N, const uint8_t *g, const int8_t *xq, const float *xd, int64_t cols,
                  int64_t b0, int64_t b1, int pf, __m256 *acc) {
    const size_t gbb = VX_QGROUP * VX_Q4_BLOCK_BYTES;
    const int64_t nblk = cols / VX_QBLOCK;
    const __m256i even_odd = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    __m256 a[QG4_TILE][4];
    _Pragma("GCC unroll 4")
    for (int i = 0; i < N; i++)
        _Pragma("GCC unroll 4")
        for (int k = 0; k < 4; k++) a[i][k] = acc[i * 4 + k];
    g += (size_t)b0 * gbb;
    for (int64_t b = b0; b < b1; b++, g += gbb) {
        if (pf) q_prefetch(g, gbb);
        /* the permuted scales times dx: the same products as q4_mv8's */
        const __m256 dw = _mm256_permutevar8x32_ps(
            _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)g)), even_odd);
        __m256i nl[4], nh[4];
        _Pragma("GCC unroll 4")
        for (int k = 0; k < 4; k++)
            q4_split(_mm256_loadu_si256((const __m256i *)(const void *)(g + 16 + 32 * k)), &nl[k], &nh[k]);
        _Pragma("GCC unroll 4")
        for (int i = 0; i < N; i++) {
            __m256i xl, xh;
            q4_x(xq + (size_t)i * cols + b * VX_QBLOCK, &xl, &xh);
            const __m256i corr = q4_corr(xl, xh);
            const __m256 s = _mm256_mul_ps(dw, _mm256_set1_ps(xd[(size_t)i * nblk + b]));
            _Pragma("GCC unroll 4")
            for (int k = 0; k < 4; k++)
                a[i][k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q4_isum(nl[k], nh[k], xl, xh, corr)),
                                          q_splat2(s, k), a[i][k]);
        }
    }
    _Pragma("GCC unroll 4")
    for (int i = 0; i < N; i++)
        _Pragma("GCC unroll 4")
        for (int k = 0; k < 4; k++) acc[i * 4 + k] = a[i][k];
}

/* Q8: as q8_mv8 per input; acc[i * 8 + k] is input i's chain of row k. */
INLINE void q8_gn(int N, const uint8_t *g, const int8_t *xq, const float *xd, int64_t cols,
                  int64_t b0, int64_t b1, int pf, __m256 *acc) {
    const size_t gbb = VX_QGROUP * VX_Q8_BLOCK_BYTES;
    const int64_t nblk = cols / VX_QBLOCK;
    __m256 a[QG8_TILE][8];
    _Pragma("GCC unroll 2")
    for (int i = 0; i < N; i++)
        _Pragma("GCC unroll 8")
        for (int k = 0; k < 8; k++) a[i][k] = acc[i * 8 + k];
    g += (size_t)b0 * gbb;
    for (int64_t b = b0; b < b1; b++, g += gbb) {
        if (pf) q_prefetch(g, gbb);
        __m256i x[QG8_TILE];
        __m256 slo[QG8_TILE], shi[QG8_TILE];
        _Pragma("GCC unroll 2")
        for (int i = 0; i < N; i++) {
            const __m256 s = q_scales8(g, xd[(size_t)i * nblk + b]);
            slo[i] = _mm256_permute2f128_ps(s, s, 0x00);
            shi[i] = _mm256_permute2f128_ps(s, s, 0x11);
            x[i] = _mm256_loadu_si256((const __m256i *)(const void *)(xq + (size_t)i * cols + b * VX_QBLOCK));
        }
        _Pragma("GCC unroll 8")
        for (int k = 0; k < 8; k++) {
            const __m256i wb = _mm256_loadu_si256((const __m256i *)(const void *)(g + 16 + 32 * k));
            _Pragma("GCC unroll 2")
            for (int i = 0; i < N; i++) {
                const __m256 sk = k < 4 ? q_splat2(slo[i], k % 4) : q_splat2(shi[i], k % 4);
                a[i][k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q8_isum(wb, x[i])), sk, a[i][k]);
            }
        }
    }
    _Pragma("GCC unroll 2")
    for (int i = 0; i < N; i++)
        _Pragma("GCC unroll 8")
        for (int k = 0; k < 8; k++) acc[i * 8 + k] = a[i][k];
}

/* The tile of nt inputs (a constant at each call). */
static void q4_gn_tile(int nt, const uint8_t *g, const int8_t *xq, const float *xd, int64_t cols,
                       int64_t b0, int64_t b1, int pf, __m256 *acc) {
    switch (nt) {
    case 4: q4_gn(4, g, xq, xd, cols, b0, b1, pf, acc); break;
    case 3: q4_gn(3, g, xq, xd, cols, b0, b1, pf, acc); break;
    case 2: q4_gn(2, g, xq, xd, cols, b0, b1, pf, acc); break;
    default: q4_gn(1, g, xq, xd, cols, b0, b1, pf, acc); break;
    }
}

static void q8_gn_tile(int nt, const uint8_t *g, const int8_t *xq, const float *xd, int64_t cols,
                       int64_t b0, int64_t b1, int pf, __m256 *acc) {
    if (nt == 2) q8_gn(2, g, xq, xd, cols, b0, b1, pf, acc);
    else q8_gn(1, g, xq, xd, cols, b0, b1, pf, acc);
}

/* The full groups [g0, g1) (row numbers, multiples of VX_QGROUP) x n inputs. */
static void q_groups_multi(int dt, const vx_weight *W, const int8_t *xq, const float *xd, int n,
                           float *Y, int ldy, int64_t g0, int64_t g1) {
    const int64_t cols = W->cols, nblk = cols / VX_QBLOCK;
    const int tile = dt == VX_DT_Q8 ? QG8_TILE : QG4_TILE;
    const int64_t chunk = n <= tile ? nblk : QG_CHUNK; /* one tile: no chunks */
    const size_t group_bytes = (size_t)VX_QGROUP * vx_row_bytes(dt, cols);
    const uint8_t *g = (const uint8_t *)W->data + (size_t)(g0 / VX_QGROUP) * group_bytes;
    __m256 acc[QG_MAX_N * 8];
    for (int64_t r = g0; r < g1; r += VX_QGROUP, g += group_bytes) {
        for (int j = 0; j < QG_MAX_N * 8; j++) acc[j] = _mm256_setzero_ps();
        for (int64_t b0 = 0; b0 < nblk; b0 += chunk) {
            const int64_t b1 = nblk - b0 < chunk ? nblk : b0 + chunk;
            for (int i = 0; i < n; i += tile) {
                const int nt = n - i < tile ? n - i : tile;
                const int8_t *x = xq + (size_t)i * cols;
                const float *d = xd + (size_t)i * nblk;
                if (dt == VX_DT_Q8) q8_gn_tile(nt, g, x, d, cols, b0, b1, i == 0, acc + i * 8);
                else q4_gn_tile(nt, g, x, d, cols, b0, b1, i == 0, acc + i * 4);
            }
        }
        for (int i = 0; i < n; i++) {
            float *y = Y + (size_t)i * ldy + r;
            if (dt == VX_DT_Q8)
                for (int k = 0; k < 8; k++) y[k] = hsum8(acc[i * 8 + k]);
            else
                for (int k = 0; k < 4; k++) hsum4_pair(acc[i * 4 + k], y + 2 * k, y + 2 * k + 1);
        }
    }
}
#else
#define QG_MAX_N 1 /* VEX: the 4-row tiles for every n >= 2 */
#endif

/* Rows [r0, r1) x n inputs in QR-row tiles, a chunk of blocks at a time: the
 * rows' chunk and the inputs' chunk (n x 512 bytes) are reused from cache.
 * A tile is QR rows from a multiple of QR (so within one group, which the
 * tiles rely on); rows before or after such tiles are taken one at a time
 * through their views, so any r0 and r1 work. */
static void q_rows_batched(int dt, const vx_weight *W, const int8_t *xq, const float *xd, int n,
                           float *Y, int ldy, int64_t r0, int64_t r1) {
    const int64_t cols = W->cols, nblk = cols / VX_QBLOCK;
    const int step = dt == VX_DT_Q8 ? QMAX_N : Q4MAX_N; /* inputs per tile */
    __m256 acc[XQ_MAX_N * QA];
    for (int64_t r = r0, rows; r < r1; r += rows) {
        const int64_t next = (r / QR + 1) * QR; /* the next multiple of QR */
        rows = r % QR == 0 && r + QR <= r1 ? QR : (next < r1 ? next : r1) - r;
        vx_qrow w[QR];
        for (int k = 0; k < rows; k++) w[k] = vx_q_row(dt, W->data, W->rows, cols, r + k);
        for (int i = 0; i < n; i++)
            for (int k = 0; k < rows; k++) acc[i * QA + k] = _mm256_setzero_ps();
        for (int64_t b0 = 0; b0 < nblk; b0 += QCHUNK) {
            const int64_t b1 = nblk - b0 < QCHUNK ? nblk : b0 + QCHUNK;
            for (int i = 0; i < n; i += step) {
                const int8_t *x = xq + (size_t)i * cols;
                const float *d = xd + (size_t)i * nblk;
                __m256 *ac = acc + i * QA;
                const int left = n - i;
                /* inputs in this tile: a constant at each call below */
                const int nt = left < step ? left : step;
                if (dt == VX_DT_Q4) {
                    if (rows == QR) {
                        switch (nt) {
#if Q4MAX_N >= 4
                        case 4: q4tile4(4, w, x, d, cols, b0, b1, ac); break;
                        case 3: q4tile4(3, w, x, d, cols, b0, b1, ac); break;
#endif
                        case 2: q4tile4(2, w, x, d, cols, b0, b1, ac); break;
                        default: q4tile4(1, w, x, d, cols, b0, b1, ac); break;
                        }
                    } else {
                        for (int k = 0; k < rows; k++) {
                            if (nt >= 2) q4tile1(2, &w[k], x, d, cols, b0, b1, ac + k);
                            else q4tile1(1, &w[k], x, d, cols, b0, b1, ac + k);
                            if (nt > 2) q4tile1(nt - 2 > 1 ? 2 : 1, &w[k], x + 2 * cols, d + 2 * nblk, cols, b0, b1, ac + 2 * QA + k);
                        }
                    }
                } else if (rows == QR) {
                    switch (nt) {
#if QMAX_N >= 4
                    case 4: q8tile(QR, 4, w, x, d, cols, b0, b1, ac); break;
#endif
#if QMAX_N >= 3
                    case 3: q8tile(QR, 3, w, x, d, cols, b0, b1, ac); break;
#endif
                    case 2: q8tile(QR, 2, w, x, d, cols, b0, b1, ac); break;
                    default: q8tile(QR, 1, w, x, d, cols, b0, b1, ac); break;
                    }
                } else {
                    for (int k = 0; k < rows; k++) {
                        int j = 0; /* one row: inputs two at a time */
                        for (; j + 2 <= nt; j += 2)
                            q8tile(1, 2, w + k, x + j * cols, d + j * nblk, cols, b0, b1, ac + j * QA + k);
                        if (j < nt) q8tile(1, 1, w + k, x + j * cols, d + j * nblk, cols, b0, b1, ac + j * QA + k);
                    }
                }
            }
        }
        for (int i = 0; i < n; i++) {
            float *y = Y + (size_t)i * ldy + r;
            const __m256 *a = acc + i * QA;
            if (dt == VX_DT_Q8) {
                for (int k = 0; k < rows; k++) y[k] = hsum8(a[k]);
            } else if (rows == QR) {
                hsum4_pair(a[0], y + 0, y + 1);
                hsum4_pair(a[1], y + 2, y + 3);
            } else {
                float dup;
                for (int k = 0; k < rows; k++) hsum4_pair(a[k], y + k, &dup);
            }
        }
    }
}

INLINE void q_rows(int dt, const vx_weight *W, const int8_t *xq, const float *xd, int n, float *Y,
                   int ldy, int64_t r0, int64_t r1) {
    if (n > QG_MAX_N) {
        q_rows_batched(dt, W, xq, xd, n, Y, ldy, r0, r1);
        return;
    }
    /* full groups streamed against one input, all blocks in registers; rows
     * outside them (a range that starts or ends inside a group, or a last
     * group of fewer than 8) go through the tiles */
    const int64_t nblk = W->cols / VX_QBLOCK, g0 = (r0 + VX_QGROUP - 1) / VX_QGROUP * VX_QGROUP;
    const int64_t g1 = r1 / VX_QGROUP * VX_QGROUP;
    if (g0 >= g1) {
        q_rows_batched(dt, W, xq, xd, n, Y, ldy, r0, r1);
        return;
    }
    if (r0 < g0) q_rows_batched(dt, W, xq, xd, n, Y, ldy, r0, g0);
#if XQ_VNNI == 2
    if (n > 1) {
        q_groups_multi(dt, W, xq, xd, n, Y, ldy, g0, g1);
        if (g1 < r1) q_rows_batched(dt, W, xq, xd, n, Y, ldy, g1, r1);
        return;
    }
#endif
    const size_t group_bytes = (size_t)VX_QGROUP * vx_row_bytes(dt, W->cols);
    const uint8_t *g = (const uint8_t *)W->data + (size_t)(g0 / VX_QGROUP) * group_bytes;
    for (int64_t r = g0; r < g1; r += VX_QGROUP, g += group_bytes) {
        if (dt == VX_DT_Q8) q8_mv8(g, xq, xd, nblk, Y + r);
        else q4_mv8(g, xq, xd, nblk, Y + r);
    }
    if (g1 < r1) q_rows_batched(dt, W, xq, xd, 1, Y, ldy, g1, r1);
}

static void q_rows_q8(const vx_weight *W, const int8_t *xq, const float *xd, int n, float *Y, int ldy, int64_t r0, int64_t r1) { q_rows(VX_DT_Q8, W, xq, xd, n, Y, ldy, r0, r1); }
static void q_rows_q4(const vx_weight *W, const int8_t *xq, const float *xd, int n, float *Y, int ldy, int64_t r0, int64_t r1) { q_rows(VX_DT_Q4, W, xq, xd, n, Y, ldy, r0, r1); }

static int x86_matmul_rows_q(const vx_weight *W, const int8_t *xq, const float *xd, int n,
                              float *Y, int ldy, int64_t r0, int64_t r1) {
    if (!vx_dt_is_block(W->dtype) || W->cols % VX_QBLOCK != 0 || n > XQ_MAX_N) return -1;
    if (n <= 0 || r0 >= r1) return 0;
    if (W->dtype == VX_DT_Q8) q_rows_q8(W, xq, xd, n, Y, ldy, r0, r1);
    else q_rows_q4(W, xq, xd, n, Y, ldy, r0, r1);
    return 0;
}


#endif
