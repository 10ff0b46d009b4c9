/* x86_q.h - the x86 Q8/Q4 kernels (int8 activations, integer dot products),
 * written once and compiled per instruction set: avx2.c includes it with
 * XQ_VNNI 0 (vpmaddubsw + vpmaddwd), avxvnni.c with 1 (VEX vpdpbusd on ymm,
 * AVX-VNNI: Alder Lake and later, Zen 4 and later) and avx512vnni.c with 2
 * (EVEX vpdpbusd, and zmm registers for the batched tiles: AVX512-VNNI with
 * F/BW/VL, Ice Lake and Cascade Lake servers, Zen 4 and later). The including
 * file defines INLINE and XQ_VNNI and is compiled with the flags of its
 * instruction set; everything here is static.
 *
 * engine.h defines a product as one int32 sum per (row, input, block of 32)
 * and one float chain per output over the blocks. The integer sums are
 * exact in any order, so the three variants and the three schedules below
 * give the same bits as the portable backend:
 *
 *  n == 1 (a decoder step): each full group of 8 rows (quant.h's row-group
 *    layout: per block the 8 fp16 scales, then the 8 payloads) is one
 *    prefetched stream. Per block, the 8 rows' lane sums (lanes over the
 *    block's columns) are reduced across lanes by a vphaddd tree into one
 *    register of 8 row sums, converted and FMA'd once: two float
 *    instructions per 8 rows and block.
 *  2 <= n <= 8 (several streams' decoder steps): the same, each group block
 *    loaded (and a Q4 block's nibbles split) once for all the inputs; with
 *    AVX-512 the block sits in zmm registers (half the dot products and
 *    reduction steps per input; Q8 as (x + 128) x w less 128 x the row's
 *    weight sum, computed once per block). n == 1 stays on ymm: it is bound
 *    by memory either way (Q4 excepted: its nibble splitting made the ymm
 *    stream bound by instructions per core, and it takes the zmm one).
 *    With AVX-512 and 2 or more inputs, two groups at a time are instead
 *    transposed in registers to rows in lanes (16 rows per zmm, as the tiles
 *    below but with no scratch), so the per-input work has no reduction: one
 *    vpdpbusd per 4 columns of 16 rows, and one conversion, scale and FMA per
 *    16 outputs and block. AVX-VNNI does the same one group (8 rows per ymm) at
 *    a time from 4 inputs, and AVX2 from 3 inputs with vpmaddubsw (Q4: the
 *    block's int16 pair sums added before one widening per input, two groups at
 *    a time so that each broadcast input feeds both; Q8: |w| x sign(x, w),
 *    widened per slice, one group).
 *  n > 8 (encoder, prefill), and rows outside full groups: a tile of R rows
 *    (8 in ymm; 32, two zmm, with AVX512) is first rewritten, a chunk of
 *    blocks at a time, into an L1 scratch where register s of a block holds
 *    the 4 weights of elements 4s..4s+3 of all R rows (a transpose of 4-byte
 *    pieces; with AVX512 a tile of whole groups is transposed in zmm
 *    registers as the stacked step's pairs are). Then one vpdpbusd with the
 *    input's 4 bytes broadcast advances the block sums of all R rows at
 *    once, and 8 of them finish a block: no horizontal reduction, and the
 *    conversion, scale and FMA are one instruction each per R outputs. The
 *    rewrite costs several inputs' worth of work, shared by all of them (so
 *    up to QG_MAX_N inputs stream instead); the next tile's chunk is
 *    prefetched while one computes.
 *
 * How the operands become unsigned x signed:
 *   lanes over columns, Q8: |w| x sign(x, w) (vpmaddubsw's pairs stay
 *       within 2 * 128 * 127: no int16 saturation);
 *   lanes over columns, Q4: the nibbles (0..15) x x, less 8 * (the sum of
 *       the input block): exactly the sum of (nibble - 8) * x. VNNI starts
 *       each of a row's 4 lanes from -2 * the sum (free: the accumulator's
 *       start), AVX2 subtracts it from the 8 reduced rows (q4_start, q4_fix);
 *   the batched tiles, Q4: the nibbles x x from -8 * (sum of the input
 *       block), AVX2 adding the block's int16 pair sums before one
 *       widening; Q8: VNNI (w + 128) x x from -128 * (sum of the input
 *       block), AVX2 |w| x sign(x, w) with |w| kept in the scratch.
 * Every input block's sum comes with the activations (vx_qact's s, made by
 * the quantizer once per call), not recomputed per task or row group. */
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
void vx_avx2_quantize_act(const float *x, int64_t cols, int8_t *q, float *d, int32_t *s);
void vx_avx2_swiglu(float *h1, const float *h3, size_t count); /* avx2_elem.c */

#define XQ_MAX_N 64 /* rows of X per call (kernels.c's BATCH) */

/* Fixed final reduction of the 8 lanes: ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)). */
INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}


/* ---------------- Q8 / Q4: int8 activations, integer dot products */

/* ---- lanes over columns (n <= QG_MAX_N) */

/* Lane sums of one Q8 (row, input) block from |w| (aw), w and x. */
INLINE __m256i q8_isum(__m256i aw, __m256i wb, __m256i x) {
#if XQ_VNNI
    return XQ_DPBUSD(_mm256_setzero_si256(), aw, _mm256_sign_epi8(x, wb));
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(x, wb)), _mm256_set1_epi16(1));
#endif
}

/* Q4's int32 lanes for a register holding the bytes of one block of two rows
 * (one per 128-bit half): nl / nh the low / high nibbles, xl / xh the
 * input's elements 0-15 / 16-31 in both halves, start as q4_start gives it
 * for the input block. */
INLINE __m256i q4_isum(__m256i nl, __m256i nh, __m256i xl, __m256i xh, __m256i start) {
#if XQ_VNNI
    return XQ_DPBUSD(XQ_DPBUSD(start, nl, xl), nh, xh);
#else
    const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(nl, xl), _mm256_maddubs_epi16(nh, xh));
    return _mm256_add_epi32(start, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
#endif
}

/* The -8 of every Q4 weight is -8 x xs per row, xs the input block's sum.
 * VNNI spreads it over the 4 lanes that hold a row's sums, as their start;
 * AVX2 starts from 0 and takes it off the 8 reduced rows (q4_fix), one
 * subtraction where 4 additions would be. */
INLINE __m256i q4_start(int32_t xs) {
    return XQ_VNNI ? _mm256_set1_epi32(-2 * xs) : _mm256_setzero_si256();
}

INLINE __m256i q4_fix(__m256i rows, int32_t xs) {
    return XQ_VNNI ? rows : _mm256_sub_epi32(rows, _mm256_set1_epi32(8 * xs));
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

/* Q8: the 8 rows' lane sums v[k] (8 lanes each) to [row 0 .. row 7]: two
 * vphaddd rounds leave [r0 r1 r2 r3] of lanes 0-3 and 4-7 in the halves,
 * one cross-half add finishes. */
INLINE __m256i q8_rows8(const __m256i *v) {
    const __m256i u0 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    const __m256i u1 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20),
                            _mm256_permute2x128_si256(u0, u1, 0x31));
}

/* Q4: the lane sums p[k] = [row 2k | row 2k+1] (4 lanes each) to
 * [r0 r2 r4 r6 | r1 r3 r5 r7]: two vphaddd rounds. */
INLINE __m256i q4_rows8(const __m256i *p) {
    return _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
}

/* Rows in q4_rows8's order ([0 2 4 6 | 1 3 5 7]) and back. */
#define Q4_EVEN_ODD _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7)
#define Q4_ROW_ORDER _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)

/* Look-ahead of a group stream, in bytes (whole group blocks of it: Q4 48
 * blocks, Q8 25). With 8 blocks of either (1.2 / 2.2 KB) one thread's
 * stream kept too few lines in flight and read at 0.50-0.73 of the 1-thread
 * bandwidth in voxd bench's q4 decoder step, 0.84-0.86 with 48. Into L2
 * (q_prefetch), 24 Q4 blocks were slower than 48, and 96 slower again
 * (1.05-1.07 the time of a one-stream q4 decoder pass). It is the bytes that
 * count: the Q8 output head had 48 blocks too (13 KB), and took longer than
 * with 24 (6.5 KB). A one-stream q4 decoder pass, the head's time with the
 * Q8 look-ahead below / with 48 blocks, AVX512-VNNI, medians of 16 rounds
 * alternated in one process, 4-6 runs each: 16 blocks 1.03-1.23 (the worst
 * when memory was fast), 20 blocks 0.93-0.98, 24 blocks 0.91-0.92, 32
 * blocks 0.93-0.96; and 48 / 25 (this rule), 4 runs each: AVX512-VNNI
 * 1.02-1.12, plain AVX2 0.99-1.12. A q8 model's one-stream pass (every
 * matrix Q8), 48 / 25: 1.07-1.13 with AVX512-VNNI, 1.05-1.12 plain. */
#define Q_PREFETCH_BYTES ((size_t)48 * VX_QGROUP * VX_Q4_BLOCK_BYTES)

/* The group block at gb (gbb bytes) into L2 only (qz_look_step says why). */
INLINE void q_prefetch_l2(const uint8_t *gb, size_t gbb) {
    for (size_t o = 0; o < gbb; o += 64) _mm_prefetch((const char *)gb + o, _MM_HINT_T1);
}

/* The group block Q_PREFETCH_BYTES (rounded down to whole group blocks of
 * gbb bytes) past gb, into L2 only: the group stream's look-ahead. Into L1
 * it was slower on a Zen 4 core, 2 threads, the two hints alternated in
 * one process (time L1 / L2, median of 16-30 pairs per run, the run's
 * spread): [9216 x 3072] x 1 cycled past the L3, Q4 1.08-1.24 with
 * AVX512-VNNI and 1.12-1.14 with plain AVX2, Q8 1.02-1.15 and 1.16 (AVX2's
 * Q8 at 2 inputs, a group stream there too, 1.27); a whole q4 decoder pass
 * of one stream 1.02-1.09 and 1.03-1.07. */
INLINE void q_prefetch(const uint8_t *gb, size_t gbb) {
    q_prefetch_l2(gb + Q_PREFETCH_BYTES / gbb * gbb, gbb);
}

/* The 8 fp16 scales of a group block as floats, row order. */
INLINE __m256 q_dw8(const uint8_t *gb) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)gb));
}

#define QG_MAX_N 8 /* inputs up to which full groups are streamed (lanes over columns) */

/* engine.h's float step for 8 outputs, their block sums isum and scales dw
 * against an input block of scale dx: acc = fma((float)isum, dw * dx, acc). */
INLINE __m256 q_step8(__m256 acc, __m256i isum, __m256 dw, float dx) {
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, _mm256_set1_ps(dx)), acc);
}


/* Group g (rows 8k..8k+7, its first block), all blocks, N inputs: acc[i] the
 * chains of input i (Q8: row order; Q4: q4_rows8's order). The group's
 * stream is read once and each block's weights reused for every input. */
INLINE void q8_group(int N, const uint8_t *g, const int8_t *xq, const float *xd, int64_t cols,
                     __m256 *acc) {
    const size_t gbb = VX_QGROUP * VX_Q8_BLOCK_BYTES;
    const int64_t nblk = cols / VX_QBLOCK;
    __m256 a[QG_MAX_N];
    _Pragma("GCC unroll 8")
    for (int i = 0; i < N; i++) a[i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nblk; b++, g += gbb) {
        q_prefetch(g, gbb);
        const __m256 dw = q_dw8(g);
        __m256i wb[8], aw[8];
        _Pragma("GCC unroll 8")
        for (int k = 0; k < 8; k++) {
            wb[k] = _mm256_loadu_si256((const __m256i *)(const void *)(g + 16 + 32 * k));
            aw[k] = _mm256_abs_epi8(wb[k]);
        }
        _Pragma("GCC unroll 8")
        for (int i = 0; i < N; i++) {
            const __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)(xq + (size_t)i * cols + b * VX_QBLOCK));
            __m256i v[8];
            _Pragma("GCC unroll 8")
            for (int k = 0; k < 8; k++) v[k] = q8_isum(aw[k], wb[k], x);
            a[i] = q_step8(a[i], q8_rows8(v), dw, xd[(size_t)i * nblk + b]);
        }
    }
    _Pragma("GCC unroll 8")
    for (int i = 0; i < N; i++) acc[i] = a[i];
}

INLINE void q4_group(int N, const uint8_t *g, const int8_t *xq, const float *xd, const int32_t *xs,
                     int64_t cols, __m256 *acc) {
    const size_t gbb = VX_QGROUP * VX_Q4_BLOCK_BYTES;
    const int64_t nblk = cols / VX_QBLOCK;
    __m256 a[QG_MAX_N];
    _Pragma("GCC unroll 8")
    for (int i = 0; i < N; i++) a[i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nblk; b++, g += gbb) {
        q_prefetch(g, gbb);
        const __m256 dw = _mm256_permutevar8x32_ps(q_dw8(g), Q4_EVEN_ODD);
        __m256i nl[4], nh[4];
        _Pragma("GCC unroll 4")
        for (int k = 0; k < 4; k++)
            q4_split(_mm256_loadu_si256((const __m256i *)(const void *)(g + 16 + 32 * k)), &nl[k], &nh[k]);
        _Pragma("GCC unroll 8")
        for (int i = 0; i < N; i++) {
            __m256i xl, xh;
            q4_x(xq + (size_t)i * cols + b * VX_QBLOCK, &xl, &xh);
            const size_t ib = (size_t)i * nblk + b;
            const __m256i start = q4_start(xs[ib]);
            __m256i p[4];
            _Pragma("GCC unroll 4")
            for (int k = 0; k < 4; k++) p[k] = q4_isum(nl[k], nh[k], xl, xh, start);
            a[i] = q_step8(a[i], q4_fix(q4_rows8(p), xs[ib]), dw, xd[ib]);
        }
    }
    _Pragma("GCC unroll 8")
    for (int i = 0; i < N; i++) acc[i] = a[i];
}

#if XQ_VNNI == 2
/* ---- 2 <= n <= QG_MAX_N with EVEX: the group block in zmm registers,
 * which halves the dot products and the reduction per input (the decoder
 * steps of several streams). Same integers, same float chain: the same
 * bits as the ymm streams. */

/* Q4: da / db hold rows 0-3 / 4-7, one row's 4 lane sums per 128-bit lane:
 * to [r0 .. r7]. */
INLINE __m256i q4z_rows8(__m512i da, __m512i db) {
    const __m512i c = _mm512_add_epi32(_mm512_unpacklo_epi64(da, db), _mm512_unpackhi_epi64(da, db));
    const __m512i d = _mm512_add_epi32(c, _mm512_shuffle_epi32(c, _MM_PERM_CDAB));
    const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 2, 6, 10, 14, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_castsi512_si256(_mm512_permutexvar_epi32(idx, d));
}

/* Q8: z[k] holds rows 2k | 2k+1, 8 lane sums each: to [r0 .. r7]. */
INLINE __m256i q8z_rows8(const __m512i *z) {
    const __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(z[0], z[1]), _mm512_unpackhi_epi32(z[0], z[1]));
    const __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(z[2], z[3]), _mm512_unpackhi_epi32(z[2], z[3]));
    const __m512i t = _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
    const __m512i u = _mm512_add_epi32(t, _mm512_shuffle_i32x4(t, t, _MM_SHUFFLE(2, 3, 0, 1)));
    const __m512i idx = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_castsi512_si256(_mm512_permutexvar_epi32(idx, u));
}

/* Q4: the nibbles x x, a row's 4 lanes started from -2 x the input block's
 * sum (q4_start). */
INLINE void q4_group_z(int N, const uint8_t *g, const int8_t *xq, const float *xd,
                       const int32_t *xs, int64_t cols, __m256 *acc) {
    const size_t gbb = VX_QGROUP * VX_Q4_BLOCK_BYTES;
    const int64_t nblk = cols / VX_QBLOCK;
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m256 a[QG_MAX_N];
    _Pragma("GCC unroll 8")
    for (int i = 0; i < N; i++) a[i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nblk; b++, g += gbb) {
        q_prefetch(g, gbb);
        const __m256 dw = q_dw8(g);
        const __m512i va = _mm512_loadu_si512((const void *)(g + 16));
        const __m512i vb = _mm512_loadu_si512((const void *)(g + 16 + 64));
        const __m512i nla = _mm512_and_si512(va, m4), nha = _mm512_and_si512(_mm512_srli_epi16(va, 4), m4);
        const __m512i nlb = _mm512_and_si512(vb, m4), nhb = _mm512_and_si512(_mm512_srli_epi16(vb, 4), m4);
        _Pragma("GCC unroll 8")
        for (int i = 0; i < N; i++) {
            const int8_t *xb = xq + (size_t)i * cols + b * VX_QBLOCK;
            const __m512i xl = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(const void *)xb));
            const __m512i xh = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(const void *)(xb + 16)));
            const size_t ib = (size_t)i * nblk + b;
            const __m512i start = _mm512_set1_epi32(-2 * xs[ib]);
            const __m512i da = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(start, nla, xl), nha, xh);
            const __m512i db = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(start, nlb, xl), nhb, xh);
            a[i] = q_step8(a[i], q4z_rows8(da, db), dw, xd[ib]);
        }
    }
    _Pragma("GCC unroll 8")
    for (int i = 0; i < N; i++) acc[i] = a[i];
}

/* Q8: (x + 128) x w, less 128 * (the row's weight sum), which the block
 * computes once for all the inputs. */
INLINE void q8_group_z(int N, const uint8_t *g, const int8_t *xq, const float *xd, int64_t cols,
                       __m256 *acc) {
    const size_t gbb = VX_QGROUP * VX_Q8_BLOCK_BYTES;
    const int64_t nblk = cols / VX_QBLOCK;
    const __m512i ones = _mm512_set1_epi8(1);
    const __m256i bias = _mm256_set1_epi8(-128);
    __m256 a[QG_MAX_N];
    _Pragma("GCC unroll 8")
    for (int i = 0; i < N; i++) a[i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nblk; b++, g += gbb) {
        q_prefetch(g, gbb);
        const __m256 dw = q_dw8(g);
        __m512i w[4], ws[4];
        _Pragma("GCC unroll 4")
        for (int k = 0; k < 4; k++) {
            w[k] = _mm512_loadu_si512((const void *)(g + 16 + 64 * k));
            ws[k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, w[k]);
        }
        const __m256i wsum = _mm256_slli_epi32(q8z_rows8(ws), 7); /* 128 * sum of the row's w */
        _Pragma("GCC unroll 8")
        for (int i = 0; i < N; i++) {
            const __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)(xq + (size_t)i * cols + b * VX_QBLOCK));
            const __m512i xu = _mm512_broadcast_i64x4(_mm256_xor_si256(x, bias)); /* x + 128 */
            __m512i d[4];
            _Pragma("GCC unroll 4")
            for (int k = 0; k < 4; k++) d[k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), xu, w[k]);
            const __m256i isum = _mm256_sub_epi32(q8z_rows8(d), wsum);
            a[i] = q_step8(a[i], isum, dw, xd[(size_t)i * nblk + b]);
        }
    }
    _Pragma("GCC unroll 8")
    for (int i = 0; i < N; i++) acc[i] = a[i];
}
#endif

/* Full groups [g0, g1) (row numbers, multiples of VX_QGROUP) x n <= QG_MAX_N inputs. */
static void q_groups(int dt, const vx_weight *W, const vx_qact *X, int n, float *Y, int ldy,
                     int64_t g0, int64_t g1) {
    const int64_t cols = W->cols;
    const int8_t *xq = X->q;
    const float *xd = X->d;
    const int32_t *xs = X->s;
    const size_t group_bytes = (size_t)VX_QGROUP * vx_row_bytes(dt, cols);
    const uint8_t *g = (const uint8_t *)W->data + (size_t)(g0 / VX_QGROUP) * group_bytes;
    __m256 acc[QG_MAX_N];
#if XQ_VNNI == 2
    /* zmm from 2 inputs, and for Q4 from 1: its ymm stream is bound by
     * instructions per core when memory is fast (1.37x in cache, 1.08-1.2x
     * out of it on 2 threads here); Q8's ymm stream is not */
    const int zmm = n >= 2 || dt == VX_DT_Q4; /* row order out */
#define Q_GROUP_CASE(N)                                                                            \
    case N:                                                                                        \
        if (dt == VX_DT_Q4) q4_group_z(N, g, xq, xd, xs, cols, acc);                               \
        else if (N >= 2) q8_group_z(N, g, xq, xd, cols, acc);                                      \
        else q8_group(N, g, xq, xd, cols, acc);                                                    \
        break
#else
    const int zmm = 0;
#define Q_GROUP_CASE(N)                                                                            \
    case N:                                                                                        \
        if (dt == VX_DT_Q8) q8_group(N, g, xq, xd, cols, acc);                                     \
        else q4_group(N, g, xq, xd, xs, cols, acc);                                                \
        break
#endif
    for (int64_t r = g0; r < g1; r += VX_QGROUP, g += group_bytes) {
        switch (n) {
            Q_GROUP_CASE(8); Q_GROUP_CASE(7); Q_GROUP_CASE(6); Q_GROUP_CASE(5);
            Q_GROUP_CASE(4); Q_GROUP_CASE(3); Q_GROUP_CASE(2);
        default: Q_GROUP_CASE(1);
        }
#undef Q_GROUP_CASE
        for (int i = 0; i < n; i++) {
            __m256 v = acc[i];
            if (dt == VX_DT_Q4 && !zmm) v = _mm256_permutevar8x32_ps(v, Q4_ROW_ORDER);
            _mm256_storeu_ps(Y + (size_t)i * ldy + r, v);
        }
    }
}

/* ---- QZ_MIN_N <= n <= QG_MAX_N: full groups with their block transposed
 * in registers to rows in lanes (below: two groups per zmm step with EVEX,
 * one group per ymm step with AVX-VNNI and AVX2), the inputs of a chunk of
 * blocks interleaved once per call. */

#if XQ_VNNI == 2
/* EVEX from 2 inputs. In cache on a Zen 4 core (bench_kernels step), the
 * pair against the group stream: Q4 2 inputs 4.16 against 5.70 ns per
 * 8-row block, 3 inputs 5.06 against 8.17; Q8 5.75 against 9.64 and 6.22
 * against 13.14. Out of cache (2 threads, [9216 x 3072] cycled past the
 * L3, median of 8 alternated rounds, GB/s of weights): Q4 2 inputs
 * 26.7-31.0 -> 29.1-31.5, 3 inputs 24.9-25.3 -> 29.2-29.3; Q8 28.1 -> 30.8
 * and 25.1 -> 29.7. (On an Intel Xeon, before the step's weights went to
 * L2 only, the group stream had been as fast below 4 inputs.) */
#define QZ_MIN_N 2
#elif XQ_VNNI
/* AVX-VNNI, one group per ymm step: from 4 inputs, the threshold EVEX had
 * until it was re-measured above; not re-measured (no CPU here has
 * AVX-VNNI without AVX-512, which takes EVEX) */
#define QZ_MIN_N 4
#else
/* AVX2 from 3 inputs: per input and block the Q4 step issues about 29
 * instructions (8 broadcasts, 8 vpmaddubsw, 7 vpaddw, the widening and the
 * float step) where the group stream's vphaddd tree makes it over 40; the
 * block's transpose is shared by the inputs, and with 2 it cost as much as
 * it saved (in cache on a Zen 3 core: 3 inputs 0.94x the group stream's
 * time, 8 inputs 0.87x, 2 inputs 1.06x). Q8 (a sign and a widening per
 * slice instead of the vphaddd tree): 0.89-0.96x from 3 to 8 inputs. */
#define QZ_MIN_N 3
#endif
/* Look-ahead of each of a step's group streams, in bytes, as the group
 * stream's (Q_PREFETCH_BYTES): Q4 32 blocks (4.6 KB), Q8 16. With 32 Q8
 * blocks (8.7 KB) a q8 model's decoder passes took longer: 2 and 4
 * streams, AVX512-VNNI, time with 16 / with 32 blocks, medians of 12
 * alternated rounds: 0.96-0.98 in four runs; this rule against 32 blocks,
 * time with 32 / with the rule, 2, 4 and 8 streams, two runs each:
 * 0.99-1.00, 1.00-1.05 and 1.03 (a small gain). For Q4, 64 and
 * 128 blocks were no faster than 32 (0.99-1.01 at 2, 4 and 8 inputs). */
#define QZ_PF_BYTES ((size_t)32 * VX_QGROUP * VX_Q4_BLOCK_BYTES)
/* Blocks of the inputs interleaved at a time: 320 (10240 columns) holds a
 * whole row of every decoder matrix, w2's 9216 columns included, so that
 * each thread sweeps its rows' weights once, front to back. In chunks of
 * 128, w2 was read in three strided sweeps (each row group's first 128
 * blocks, then the next 128, then the last 32), and took longer. On a Zen 4
 * core, 2 threads, Q4 [3072 x 9216] cycled past the L3, time with 320 /
 * with 128, medians of 16-20 alternated rounds in two runs: AVX512-VNNI 2
 * inputs 0.95-0.97, 4 inputs 0.92-0.93, 8 inputs 0.97-0.99; plain AVX2 4
 * inputs 0.94-0.98, 8 inputs 0.99-1.00. Chunks of 64 or 48, which keep
 * the interleaved inputs in L1, made whole 8-stream decoder passes slower
 * still (1.04-1.08 the time of 128). The cost is stack: 100 KB at 8
 * inputs. */
#define QZ_CHUNK 320

/* A chunk's inputs, interleaved so that one pointer reaches every input's
 * block: x[b][i] the 32 int8 elements of input i's block b, s[b][i] its
 * correction and scale (engine.h's dx). */
typedef struct {
    int32_t corr;
    float dx;
} qz_xs;

typedef struct {
    int8_t x[QZ_CHUNK][QG_MAX_N][VX_QBLOCK];
    qz_xs s[QZ_CHUNK][QG_MAX_N];
} qz_inputs;

/* The look-ahead of a step's streams: p the next block to prefetch of the
 * first group (the others follow at `stride`; NULL: nothing left to read),
 * `ahead` blocks ahead, running on into the next step's groups (next, NULL
 * at the end) once this step's are covered, so a step's first blocks are
 * not cold misses. */
typedef struct {
    const uint8_t *p;
    const uint8_t *next;
    int ahead; /* blocks of look-ahead */
} qz_look;

INLINE qz_look qz_look_start(const uint8_t *g, size_t gbb, const uint8_t *next, int nb) {
    const int ahead = (int)(QZ_PF_BYTES / gbb);
    return (qz_look){nb <= ahead ? next : g + (size_t)ahead * gbb, next, ahead};
}

/* Before block b of nb: prefetch one block of each of the step's `groups`
 * streams, `stride` bytes apart, into L2 only. L1 holds the chunk's
 * interleaved inputs (read for every group; 40 KB at 8 inputs when this
 * was measured, with 128-block chunks); weights fetched into L1 as well
 * evicted them. On a Zen 4 core with AVX512-VNNI, 2 threads,
 * [9216 x 3072] cycled past the L3, median of 8 alternated rounds
 * (GB/s of weights, from the L1 hint): Q4 4 inputs 22-25 -> 29-32 in four
 * runs, Q8 4 inputs 24.8 -> 32.1, Q8 8 inputs 26.3 -> 32.3; AVX2 without
 * VNNI, bound by its instructions there, the same either way. */
INLINE void qz_look_step(qz_look *l, int b, int nb, size_t gbb, int groups, size_t stride) {
    if (b + l->ahead == nb) l->p = l->next;
    if (!l->p) return;
    for (int k = 0; k < groups; k++) q_prefetch_l2(l->p + (size_t)k * stride, gbb);
    l->p += gbb;
}

#if XQ_VNNI == 2
/* ---- EVEX, two groups (16 rows) at a time: each
 * group block is transposed in registers to rows in lanes (register t holds
 * elements 4t..4t+3 of all 16 rows, unsigned), so one vpdpbusd with the
 * input's 4 bytes broadcast advances 16 rows' block sums: no reduction
 * across lanes, and one conversion and FMA per 16 outputs. The accumulators
 * start from the correction of the unsigned weights (Q4: -8, Q8: -128,
 * times the input block's sum), which depends on the input block alone.
 * The floor: per input, block and 16 rows, 8 vpdpbusd and the block's
 * vmulps and vfmadd231ps, which on a Zen 4 core take the same pipes, so the
 * step cannot pass 0.8 of the vpdpbusd peak while the scales are per
 * 32-element block (bench_kernels step times that mix: in cache Q4 reaches
 * 0.91-0.93 of it at 4 and 8 inputs). Activation scales that were powers
 * of two would turn the vmulps into a vpaddd on the exponent bits, which
 * does not take those pipes (alone, 8 vpdpbusd + vfmadd231ps + vpaddd ran
 * 10% faster than with the vmulps); tried in its place, Q4 at 8 inputs in
 * cache took 11.2-12.5 ns per 8-row block against 11.6-12.6 in five
 * alternated runs: no clear gain, so the scales stay exact. */

/* Lane l of a[k] holds row 4k + l: c[s] dword 4l + k = a[k] dword 4l + s,
 * so a register's dword p holds row 4 (p % 4) + p / 4 (QZ_ROWS). */
INLINE void qz_transpose4(const __m512i *a, __m512i *c) {
    const __m512i t0 = _mm512_unpacklo_epi32(a[0], a[1]), t1 = _mm512_unpackhi_epi32(a[0], a[1]);
    const __m512i t2 = _mm512_unpacklo_epi32(a[2], a[3]), t3 = _mm512_unpackhi_epi32(a[2], a[3]);
    c[0] = _mm512_unpacklo_epi64(t0, t2);
    c[1] = _mm512_unpackhi_epi64(t0, t2);
    c[2] = _mm512_unpacklo_epi64(t1, t3);
    c[3] = _mm512_unpackhi_epi64(t1, t3);
}

/* Dword p's row, and (the order being its own inverse) row r's dword. */
#define QZ_ROWS _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15)

/* The 16 scales of group blocks ga (rows 0-7) and gb (rows 8-15) as
 * floats, QZ_ROWS order. */
INLINE __m512 qz_dw16(const uint8_t *ga, const uint8_t *gb) {
    const __m256i h = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)ga)),
        _mm_loadu_si128((const __m128i *)(const void *)gb), 1);
    return _mm512_permutexvar_ps(QZ_ROWS, _mm512_cvtph_ps(h));
}

/* The group blocks ga (rows 0-7) and gb (rows 8-15) as e[t]: elements
 * 4t..4t+3 of the 16 rows (QZ_ROWS order), unsigned: Q4 the nibbles, Q8
 * w + 128. quant.h: a block's payload is Q4 bytes j = elements j (low
 * nibble) and j + 16 (high), Q8 the 32 elements in order. */
INLINE void qz_block(int dt, const uint8_t *ga, const uint8_t *gb, __m512i *e) {
    __m512i a[4], c[4];
    if (dt == VX_DT_Q4) {
        const __m512i m4 = _mm512_set1_epi8(0x0f);
        a[0] = _mm512_loadu_si512((const void *)(ga + 16));
        a[1] = _mm512_loadu_si512((const void *)(ga + 16 + 64));
        a[2] = _mm512_loadu_si512((const void *)(gb + 16));
        a[3] = _mm512_loadu_si512((const void *)(gb + 16 + 64));
        qz_transpose4(a, c);
        _Pragma("GCC unroll 4")
        for (int s = 0; s < 4; s++) {
            e[s] = _mm512_and_si512(c[s], m4);
            e[4 + s] = _mm512_and_si512(_mm512_srli_epi16(c[s], 4), m4);
        }
        return;
    }
    const __m512i bias = _mm512_set1_epi8(-128);
    __m512i z[8], h[4];
    _Pragma("GCC unroll 8")
    for (int j = 0; j < 8; j++) /* rows 2j, 2j + 1: halves 0-15 | 16-31 each */
        z[j] = _mm512_xor_si512(_mm512_loadu_si512((const void *)((j < 4 ? ga : gb) + 16 + 64 * (j % 4))), bias);
    _Pragma("GCC unroll 4")
    for (int k = 0; k < 4; k++) { /* rows 4k..4k+3: elements 0-15, then 16-31 */
        a[k] = _mm512_shuffle_i64x2(z[2 * k], z[2 * k + 1], _MM_SHUFFLE(2, 0, 2, 0));
        h[k] = _mm512_shuffle_i64x2(z[2 * k], z[2 * k + 1], _MM_SHUFFLE(3, 1, 3, 1));
    }
    qz_transpose4(a, e);
    qz_transpose4(h, e + 4);
}

/* Groups ga and ga + group_bytes (at the chunk's first block) x N inputs
 * over the chunk's nb blocks: y[i * ldy + 0..15] input i's 16 outputs, the
 * chains in and out (first: start from zero); between chunks the blocks
 * stay in order. next: the first block read after these (qz_look). */
INLINE void qz_pair(int dt, int N, const uint8_t *ga, size_t group_bytes, const uint8_t *next,
                    const qz_inputs *in, int nb, int first, float *y, int ldy) {
    const size_t gbb = VX_QGROUP * vx_q_block_bytes(dt);
    const uint8_t *gb = ga + group_bytes;
    qz_look look = qz_look_start(ga, gbb, next, nb);
    __m512 f[QG_MAX_N];
    _Pragma("GCC unroll 8")
    for (int i = 0; i < N; i++)
        f[i] = first ? _mm512_setzero_ps() : _mm512_permutexvar_ps(QZ_ROWS, _mm512_loadu_ps(y + (size_t)i * ldy));
    for (int b = 0; b < nb; b++, ga += gbb, gb += gbb) {
        qz_look_step(&look, b, nb, gbb, 2, group_bytes);
        const __m512 dw = qz_dw16(ga, gb);
        __m512i e[8], s[QG_MAX_N];
        qz_block(dt, ga, gb, e);
        _Pragma("GCC unroll 8")
        for (int i = 0; i < N; i++) s[i] = _mm512_set1_epi32(in->s[b][i].corr);
        /* t outer, inputs inner: the N sums' chains interleave in program
         * order, so N independent dot products are in flight at once (with
         * the inputs outer, each input's 8-deep chain waited on its own
         * latency) */
        _Pragma("GCC unroll 8")
        for (int t = 0; t < 8; t++) {
            _Pragma("GCC unroll 8")
            for (int i = 0; i < N; i++) {
                int32_t x4;
                memcpy(&x4, in->x[b][i] + 4 * t, 4);
                s[i] = _mm512_dpbusd_epi32(s[i], e[t], _mm512_set1_epi32(x4));
            }
        }
        _Pragma("GCC unroll 8")
        for (int i = 0; i < N; i++)
            f[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[i]), _mm512_mul_ps(dw, _mm512_set1_ps(in->s[b][i].dx)), f[i]);
    }
    _Pragma("GCC unroll 8")
    for (int i = 0; i < N; i++) _mm512_storeu_ps(y + (size_t)i * ldy, _mm512_permutexvar_ps(QZ_ROWS, f[i]));
}

#endif

#if XQ_VNNI != 2
/* ---- AVX-VNNI and AVX2 (16 ymm registers), one group (8 rows) at a time:
 * its block transposed in registers to rows in lanes (register t holds
 * elements 4t..4t+3 of the 8 rows, in row order), so one vpdpbusd (AVX2:
 * vpmaddubsw) with the input's 4 bytes broadcast advances the 8 rows' block
 * sums: no vphaddd tree per input, as the group stream above needs. The
 * unsigned weights' correction is the sums' start with VNNI, as with EVEX,
 * and added after the widening with AVX2's Q4; AVX2's Q8, |w| x sign(x, w),
 * needs none. The inputs go 4 at a time, so that the block's 8 registers
 * and 4 sums fit. */

/* In each 128-bit lane, a 4 x 4 transpose of dwords: lane l of c[s] holds
 * dword s of a[0..3]'s lane l, in that order. */
INLINE void qy_transpose4(const __m256i *a, __m256i *c) {
    const __m256i t0 = _mm256_unpacklo_epi32(a[0], a[1]), t1 = _mm256_unpackhi_epi32(a[0], a[1]);
    const __m256i t2 = _mm256_unpacklo_epi32(a[2], a[3]), t3 = _mm256_unpackhi_epi32(a[2], a[3]);
    c[0] = _mm256_unpacklo_epi64(t0, t2);
    c[1] = _mm256_unpackhi_epi64(t0, t2);
    c[2] = _mm256_unpacklo_epi64(t1, t3);
    c[3] = _mm256_unpackhi_epi64(t1, t3);
}

/* Group block g as e[t]: elements 4t..4t+3 of rows 0-7 in row order,
 * unsigned (Q4 the nibbles, Q8 w + 128; AVX2's Q8 w, signed). Each
 * 128-bit lane pairs row k with row k + 4 before the transpose. */
INLINE void qy_block(int dt, const uint8_t *g, __m256i *e) {
    __m256i a[4], b[4], c[4];
    if (dt == VX_DT_Q4) {
        const __m256i m4 = _mm256_set1_epi8(0x0f);
        _Pragma("GCC unroll 4")
        for (int k = 0; k < 4; k++) /* rows 2k | 2k + 1 */
            a[k] = _mm256_loadu_si256((const __m256i *)(const void *)(g + 16 + 32 * k));
        b[0] = _mm256_permute2x128_si256(a[0], a[2], 0x20); /* rows 0 | 4 */
        b[1] = _mm256_permute2x128_si256(a[0], a[2], 0x31); /* rows 1 | 5 */
        b[2] = _mm256_permute2x128_si256(a[1], a[3], 0x20); /* rows 2 | 6 */
        b[3] = _mm256_permute2x128_si256(a[1], a[3], 0x31); /* rows 3 | 7 */
        qy_transpose4(b, c);
        _Pragma("GCC unroll 4")
        for (int s = 0; s < 4; s++) {
            e[s] = _mm256_and_si256(c[s], m4);
            e[4 + s] = _mm256_and_si256(_mm256_srli_epi16(c[s], 4), m4);
        }
        return;
    }
    __m256i r[8];
    _Pragma("GCC unroll 8")
    for (int k = 0; k < 8; k++) { /* row k */
        r[k] = _mm256_loadu_si256((const __m256i *)(const void *)(g + 16 + 32 * k));
        if (XQ_VNNI) r[k] = _mm256_xor_si256(r[k], _mm256_set1_epi8(-128));
    }
    _Pragma("GCC unroll 4")
    for (int k = 0; k < 4; k++) { /* rows k | k + 4: elements 0-15, then 16-31 */
        a[k] = _mm256_permute2x128_si256(r[k], r[k + 4], 0x20);
        b[k] = _mm256_permute2x128_si256(r[k], r[k + 4], 0x31);
    }
    qy_transpose4(a, e);
    qy_transpose4(b, e + 4);
}

/* Slice t of one input's block sum: acc advanced by the products of e (and
 * AVX2's Q8: w, for the signs) with the input's 4 bytes x4, or started by
 * them (first). VNNI: int32 sums from the correction. AVX2 Q4: int16 pair
 * sums (as the AVX2 tile: each at most 2 * 15 * 128, 8 of them below 2^15),
 * widened once per block by qy_sums. AVX2 Q8: |w| x sign(x, w), widened per
 * slice (a pair can reach 2 * 128 * 127: two do not fit int16). */
INLINE __m256i qy_slice(int dt, __m256i acc, __m256i e, __m256i w, int32_t x4, int first) {
    const __m256i xb = _mm256_set1_epi32(x4);
#if XQ_VNNI
    (void)dt, (void)w, (void)first;
    return XQ_DPBUSD(acc, e, xb);
#else
    if (dt == VX_DT_Q8) {
        const __m256i d = _mm256_madd_epi16(_mm256_maddubs_epi16(e, _mm256_sign_epi8(xb, w)),
                                            _mm256_set1_epi16(1));
        return first ? d : _mm256_add_epi32(acc, d);
    }
    const __m256i d = _mm256_maddubs_epi16(e, xb);
    return first ? d : _mm256_add_epi16(acc, d);
#endif
}

/* The block sums s[k][j] of inputs i0 + j (j < 4, i0 + j < N) against the
 * blocks e[k] of G groups (qy_block; AVX2's Q8: |w| in e, w in w), x the
 * block's interleaved inputs and xs their corrections (AVX2's Q8 needs
 * none). Each input's 4 bytes of a slice are broadcast once for the G
 * groups. */
INLINE void qy_sums(int dt, int G, const __m256i (*e)[8], const __m256i (*w)[8],
                    const int8_t (*x)[VX_QBLOCK], const qz_xs *xs, int i0, int N,
                    __m256i (*s)[4]) {
    __m256i a[2][4];
    _Pragma("GCC unroll 2")
    for (int k = 0; k < G; k++)
        _Pragma("GCC unroll 4")
        for (int j = 0; j < 4; j++)
            if (i0 + j < N) a[k][j] = XQ_VNNI ? _mm256_set1_epi32(xs[i0 + j].corr) : _mm256_setzero_si256();
    _Pragma("GCC unroll 8")
    for (int t = 0; t < 8; t++) {
        _Pragma("GCC unroll 4")
        for (int j = 0; j < 4; j++) {
            if (i0 + j >= N) continue;
            int32_t x4;
            memcpy(&x4, x[i0 + j] + 4 * t, 4);
            _Pragma("GCC unroll 2")
            for (int k = 0; k < G; k++) {
                a[k][j] = qy_slice(dt, a[k][j], e[k][t], w[k][t], x4, !XQ_VNNI && t == 0);
#if !XQ_VNNI
                /* keep each input's chain in order: GCC otherwise rebalances the
                 * exact integer adds into a tree of all the block's products,
                 * which spills them to the stack */
                __asm__("" : "+x"(a[k][j]));
#endif
            }
        }
    }
    _Pragma("GCC unroll 2")
    for (int k = 0; k < G; k++)
        _Pragma("GCC unroll 4")
        for (int j = 0; j < 4; j++) {
            if (i0 + j >= N) continue;
            s[k][j] = a[k][j];
            if (!XQ_VNNI && dt == VX_DT_Q4)
                s[k][j] = _mm256_add_epi32(_mm256_set1_epi32(xs[i0 + j].corr),
                                           _mm256_madd_epi16(a[k][j], _mm256_set1_epi16(1)));
        }
}

/* G (1 or 2) groups, g and g + group_bytes (at the chunk's first block), x
 * N inputs over the chunk's nb blocks: y[i * ldy + 8k..8k+7] input i's 8
 * outputs of group k, as qz_pair. */
INLINE void qy_groups(int dt, int G, int N, const uint8_t *g, size_t group_bytes,
                      const uint8_t *next, const qz_inputs *in, int nb, int first, float *y,
                      int ldy) {
    const size_t gbb = VX_QGROUP * vx_q_block_bytes(dt);
    qz_look look = qz_look_start(g, gbb, next, nb);
    __m256 f[2][QG_MAX_N];
    _Pragma("GCC unroll 2")
    for (int k = 0; k < G; k++)
        _Pragma("GCC unroll 8")
        for (int i = 0; i < N; i++)
            f[k][i] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(y + (size_t)i * ldy + 8 * k);
    for (int b = 0; b < nb; b++, g += gbb) {
        qz_look_step(&look, b, nb, gbb, G, group_bytes);
        __m256 dw[2];
        __m256i e[2][8], w[2][8];
        _Pragma("GCC unroll 2")
        for (int k = 0; k < G; k++) {
            const uint8_t *gk = g + (size_t)k * group_bytes;
            dw[k] = q_dw8(gk);
            qy_block(dt, gk, e[k]);
            _Pragma("GCC unroll 8")
            for (int t = 0; t < 8; t++) { /* read by AVX2's Q8 only: the signs */
                w[k][t] = e[k][t];
                if (!XQ_VNNI && dt == VX_DT_Q8) e[k][t] = _mm256_abs_epi8(e[k][t]);
            }
        }
        _Pragma("GCC unroll 2")
        for (int i0 = 0; i0 < N; i0 += 4) {
            __m256i s[2][4];
            qy_sums(dt, G, (const __m256i (*)[8])e, (const __m256i (*)[8])w, in->x[b], in->s[b], i0, N, s);
            _Pragma("GCC unroll 2")
            for (int k = 0; k < G; k++)
                _Pragma("GCC unroll 4")
                for (int j = 0; j < 4; j++)
                    if (i0 + j < N) f[k][i0 + j] = q_step8(f[k][i0 + j], s[k][j], dw[k], in->s[b][i0 + j].dx);
        }
    }
    _Pragma("GCC unroll 2")
    for (int k = 0; k < G; k++)
        _Pragma("GCC unroll 8")
        for (int i = 0; i < N; i++) _mm256_storeu_ps(y + (size_t)i * ldy + 8 * k, f[k][i]);
}

/* Groups per step: AVX2's Q4 two, each slice's input broadcast feeding both
 * groups' vpmaddubsw (in cache on a Zen 3 core, bench_kernels step: 3
 * inputs 0.87x the time of one group at a time, 4 inputs 0.84x, 8 inputs
 * 0.90x). AVX2's Q8 needs a vpsignb per group and input, so its broadcast
 * saves less than the second group's registers cost (3 inputs 1.16x, 8
 * inputs 1.05x): one. AVX-VNNI, not measured on a CPU with it: one. */
#define QZ_GROUPS(dt) (!XQ_VNNI && (dt) == VX_DT_Q4 ? 2 : 1)
#define QZ_STEP(dt, N, ...) qy_groups(dt, QZ_GROUPS(dt), N, __VA_ARGS__)
#elif XQ_VNNI == 2
#define QZ_GROUPS(dt) 2
#define QZ_STEP(dt, N, ...) qz_pair(dt, N, __VA_ARGS__)
#endif

/* Full groups [g0, g1) x QZ_MIN_N..QG_MAX_N inputs, QZ_GROUPS at a time,
 * QZ_CHUNK blocks at a time (the interleaved inputs, up to 100 KB, live on
 * the stack); groups left over through the group stream. */
static void qz_groups(int dt, const vx_weight *W, const vx_qact *X, int n, float *Y, int ldy,
                      int64_t g0, int64_t g1) {
    const int64_t cols = W->cols, nblk = cols / VX_QBLOCK;
    const size_t group_bytes = (size_t)VX_QGROUP * vx_row_bytes(dt, cols);
    const size_t gbb = VX_QGROUP * vx_q_block_bytes(dt);
    const uint8_t *g = (const uint8_t *)W->data + (size_t)(g0 / VX_QGROUP) * group_bytes;
    const int32_t unit = dt == VX_DT_Q4 ? -8 : XQ_VNNI ? -128 : 0;
    const int groups = QZ_GROUPS(dt);
    const int64_t step = groups * VX_QGROUP; /* rows per step */
    const int64_t p1 = g0 + (g1 - g0) / step * step; /* end of the steps */
    qz_inputs in;
    for (int64_t cb0 = 0; cb0 < nblk && g0 < p1; cb0 += QZ_CHUNK) {
        const int nb = (int)(nblk - cb0 < QZ_CHUNK ? nblk - cb0 : QZ_CHUNK);
        for (int b = 0; b < nb; b++)
            for (int i = 0; i < n; i++) {
                const size_t ib = (size_t)i * (size_t)nblk + (size_t)(cb0 + b);
                memcpy(in.x[b][i], X->q + ib * VX_QBLOCK, VX_QBLOCK);
                in.s[b][i] = (qz_xs){unit * X->s[ib], X->d[ib]};
            }
        const uint8_t *gc = g + (size_t)cb0 * gbb;
        for (int64_t r = g0; r < p1; r += step, gc += (size_t)groups * group_bytes) {
            /* the blocks read after these: the next step's, or the next chunk's first step's */
            const uint8_t *next = NULL;
            if (r + step < p1) next = gc + (size_t)groups * group_bytes;
            else if (cb0 + QZ_CHUNK < nblk) next = g + (size_t)(cb0 + QZ_CHUNK) * gbb;
            switch (n) {
#define QZ_CASE(N)                                                                                 \
    case N:                                                                                        \
        if (dt == VX_DT_Q4) QZ_STEP(VX_DT_Q4, N, gc, group_bytes, next, &in, nb, cb0 == 0, Y + r, ldy); \
        else QZ_STEP(VX_DT_Q8, N, gc, group_bytes, next, &in, nb, cb0 == 0, Y + r, ldy);            \
        break
                QZ_CASE(8); QZ_CASE(7); QZ_CASE(6); QZ_CASE(5);
#if QZ_MIN_N <= 3
                QZ_CASE(4);
#endif
#if QZ_MIN_N <= 2
                QZ_CASE(3);
#endif
            default: QZ_CASE(QZ_MIN_N);
#undef QZ_CASE
            }
        }
    }
    if (p1 < g1) q_groups(dt, W, X, n, Y, ldy, p1, g1);
}

/* ---- the batched tiles: rows in lanes (n > QG_MAX_N, and rows outside
 * full groups). XT_R rows per tile, XT_NI inputs per register tile,
 * XT_CHUNK blocks per scratch. */
#if XQ_VNNI == 2
#define XT_V 2 /* vectors per slice: 32 rows, so each broadcast input feeds two vpdpbusd */
#define XT_NI 6
typedef __m512i xt_vi;
typedef __m512 xt_vf;
#define XT_LOADI(p) _mm512_load_si512((const void *)(p))
#define XT_SET1I(v) _mm512_set1_epi32(v)
#define XT_ZEROI() _mm512_setzero_si512()
#define XT_DOT(acc, u, s) _mm512_dpbusd_epi32(acc, u, s)
#define XT_CVT(v) _mm512_cvtepi32_ps(v)
#define XT_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define XT_MUL(a, b) _mm512_mul_ps(a, b)
#define XT_SET1F(v) _mm512_set1_ps(v)
#define XT_ZEROF() _mm512_setzero_ps()
#define XT_LOADF(p) _mm512_load_ps(p)
#define XT_LOADUF(p) _mm512_loadu_ps(p)
#define XT_STOREF(p, v) _mm512_store_ps(p, v)
#define XT_STOREUF(p, v) _mm512_storeu_ps(p, v)
#else
#define XT_V 1 /* 16 registers: one vector of 8 rows per slice */
#define XT_NI (XQ_VNNI ? 6 : 4)
typedef __m256i xt_vi;
typedef __m256 xt_vf;
#define XT_LOADI(p) _mm256_load_si256((const __m256i *)(const void *)(p))
#define XT_SET1I(v) _mm256_set1_epi32(v)
#define XT_ZEROI() _mm256_setzero_si256()
#if XQ_VNNI
#define XT_DOT(acc, u, s) XQ_DPBUSD(acc, u, s)
#endif
#define XT_CVT(v) _mm256_cvtepi32_ps(v)
#define XT_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define XT_MUL(a, b) _mm256_mul_ps(a, b)
#define XT_SET1F(v) _mm256_set1_ps(v)
#define XT_ZEROF() _mm256_setzero_ps()
#define XT_LOADF(p) _mm256_load_ps(p)
#define XT_LOADUF(p) _mm256_loadu_ps(p)
#define XT_STOREF(p, v) _mm256_store_ps(p, v)
#define XT_STOREUF(p, v) _mm256_storeu_ps(p, v)
#endif
#define XT_R (XT_V * (int)(sizeof(xt_vi) / 4)) /* rows per tile */
#define XT_CHUNK 16

/* A tile's chunk of blocks, rows in lanes: w[bb][s] lane k holds the
 * weights of elements 4s..4s+3 of row k (Q4 the nibbles, unsigned; Q8 with
 * VNNI w + 128, unsigned, with AVX2 w, with |w| in aw), dw[bb][k] the row's
 * scale (0 for rows past the end); lane k is row k unless perm says
 * otherwise. */
typedef struct {
    _Alignas(64) xt_vi w[XT_CHUNK][8][XT_V];
#if !XQ_VNNI
    _Alignas(64) xt_vi aw[XT_CHUNK][8][XT_V];
#endif
    _Alignas(64) float dw[XT_CHUNK][XT_R];
    int perm; /* 1: each vector's rows in QZ_ROWS order (xt_pack_z), else in order */
} xt_scratch;

/* Block b of row view w as 32 signed weights in element order. */
INLINE __m256i xt_elems(int dt, const vx_qrow *w, int64_t b) {
    const uint8_t *p = w->payload + (size_t)b * w->stride;
    if (dt == VX_DT_Q8) return _mm256_loadu_si256((const __m256i *)(const void *)p);
    const __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p), m4 = _mm_set1_epi8(0x0f);
    const __m128i lo = _mm_and_si128(v, m4), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
    return _mm256_sub_epi8(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(8));
}

/* The 8 x 8 transpose of 32-bit pieces: c[s] lane k = a[k] lane s. */
INLINE void xt_transpose8(const __m256i *a, __m256i *c) {
    __m256i t[8], u[8];
    for (int k = 0; k < 8; k += 2) {
        t[k] = _mm256_unpacklo_epi32(a[k], a[k + 1]);
        t[k + 1] = _mm256_unpackhi_epi32(a[k], a[k + 1]);
    }
    for (int h = 0; h < 8; h += 4) {
        u[h] = _mm256_unpacklo_epi64(t[h], t[h + 2]);
        u[h + 1] = _mm256_unpackhi_epi64(t[h], t[h + 2]);
        u[h + 2] = _mm256_unpacklo_epi64(t[h + 1], t[h + 3]);
        u[h + 3] = _mm256_unpackhi_epi64(t[h + 1], t[h + 3]);
    }
    for (int s = 0; s < 4; s++) {
        c[s] = _mm256_permute2x128_si256(u[s], u[s + 4], 0x20);
        c[s + 4] = _mm256_permute2x128_si256(u[s], u[s + 4], 0x31);
    }
}

#if XQ_VNNI == 2
/* xt_pack for a tile of whole groups with EVEX: each pair of groups
 * transposed in zmm registers as the stacked step's pairs are (qz_block),
 * so a vector's rows are in QZ_ROWS order (sc->perm), where xt_pack
 * unpacks a group block's 8 payloads one by one and transposes 8 rows at
 * a time in ymm registers. A Zen 4 core, Q4 [5120 x 1280], time with /
 * without, medians of 15 alternated rounds, 9 / 16 / 24 / 48 / 64 inputs:
 * 2 threads in cache 0.80 / 0.86 / 0.90 / 0.98 / 0.95, 1 thread 0.78 /
 * 0.84 / 0.88 / 0.95 / 0.95; 2 threads, 16 copies cycled past the L3,
 * 0.92 / 0.93 / 0.96 / 0.97 / 0.98. */
static void xt_pack_z(int dt, const vx_weight *W, int64_t r, int64_t cb0, int nb, xt_scratch *sc) {
    const size_t gbb = VX_QGROUP * vx_q_block_bytes(dt);
    const size_t group_bytes = (size_t)VX_QGROUP * vx_row_bytes(dt, W->cols);
    const uint8_t *base = (const uint8_t *)W->data + (size_t)(r / VX_QGROUP) * group_bytes + (size_t)cb0 * gbb;
    for (int bb = 0; bb < nb; bb++) {
        _Pragma("GCC unroll 2")
        for (int v = 0; v < XT_V; v++) {
            const uint8_t *ga = base + (size_t)(2 * v) * group_bytes + (size_t)bb * gbb, *gb = ga + group_bytes;
            _mm512_store_ps(sc->dw[bb] + 16 * v, qz_dw16(ga, gb));
            __m512i e[8];
            qz_block(dt, ga, gb, e);
            _Pragma("GCC unroll 8")
            for (int t = 0; t < 8; t++) _mm512_store_si512((void *)&sc->w[bb][t][v], e[t]);
        }
    }
    sc->perm = 1;
}
#endif

/* Rows [r, r + rows) (rows <= XT_R), blocks [cb0, cb0 + nb) into sc. A
 * tile of whole groups takes each group block's 8 scales with one load and
 * its payloads back to back (with EVEX: xt_pack_z); other tiles go row
 * view by row view. */
static void xt_pack(int dt, const vx_weight *W, int64_t r, int rows, int64_t cb0, int nb,
                    xt_scratch *sc) {
    vx_qrow w[XT_R];
    const int whole = rows == XT_R && r % VX_QGROUP == 0 && r + XT_R <= W->rows / VX_QGROUP * VX_QGROUP;
#if XQ_VNNI == 2
    if (whole) {
        xt_pack_z(dt, W, r, cb0, nb, sc);
        return;
    }
#endif
    sc->perm = 0;
    /* whole groups read only each group's first row view (an out-of-line
     * call per row was ~5 % of a 24-input product's time) */
    for (int k = 0; k < rows; k += whole ? VX_QGROUP : 1) w[k] = vx_q_row(dt, W->data, W->rows, W->cols, r + k);
    const size_t pb = vx_q_block_bytes(dt) - 2; /* payload bytes */
    for (int bb = 0; bb < nb; bb++) {
        const int64_t b = cb0 + bb;
        for (int h = 0; h < XT_R; h += 8) {
            __m256i a[8], c[8];
            if (whole) {
                const uint8_t *gb = w[h].scale + (size_t)b * w[h].stride; /* the group block */
                _mm256_store_ps(sc->dw[bb] + h, q_dw8(gb));
                _Pragma("GCC unroll 8")
                for (int k = 0; k < 8; k++) {
                    vx_qrow v = {gb, gb + 2 * VX_QGROUP + (size_t)k * pb, 0};
                    a[k] = xt_elems(dt, &v, 0);
                }
            } else {
                for (int k = 0; k < 8; k++) {
                    const int kk = h + k;
                    uint16_t hb = 0;
                    a[k] = _mm256_setzero_si256();
                    if (kk < rows) {
                        a[k] = xt_elems(dt, &w[kk], b);
                        memcpy(&hb, w[kk].scale + (size_t)b * w[kk].stride, 2);
                    }
                    sc->dw[bb][kk] = _cvtsh_ss(hb);
                }
            }
            if (dt == VX_DT_Q4)
                _Pragma("GCC unroll 8")
                for (int k = 0; k < 8; k++) a[k] = _mm256_add_epi8(a[k], _mm256_set1_epi8(8)); /* the nibbles */
#if XQ_VNNI
            else
                _Pragma("GCC unroll 8")
                for (int k = 0; k < 8; k++) a[k] = _mm256_xor_si256(a[k], _mm256_set1_epi8(-128)); /* w + 128 */
#endif
            xt_transpose8(a, c);
            _Pragma("GCC unroll 8")
            for (int s = 0; s < 8; s++) {
                _mm256_store_si256((__m256i *)(void *)((char *)sc->w[bb][s] + 4 * h), c[s]);
#if !XQ_VNNI
                if (dt == VX_DT_Q8)
                    _mm256_store_si256((__m256i *)(void *)((char *)sc->aw[bb][s] + 4 * h), _mm256_abs_epi8(c[s]));
#endif
            }
        }
    }
}

/* The weights of a tile's chunk, blocks [b0, b0 + nb) of the groups
 * holding rows [r, r + rows): in the row-group layout one contiguous run
 * per group, from p[k] (a line boundary) for run[k] bytes. q_tiles has the
 * next tile's chunk fetched into L2 while the current one computes, as the
 * chunk-by-chunk walk over the rows defeats the hardware's stream
 * detection (the packing was bound by cache misses without it). */
typedef struct {
    const char *p[XT_R / VX_QGROUP + 1];
    size_t run[XT_R / VX_QGROUP + 1];
    size_t slice[XT_R / VX_QGROUP + 1]; /* bytes per part (whole lines) */
    int groups; /* 0: nothing to fetch */
} xt_look;

/* The runs of the tile from row r and the chunk from block b0 (as q_tiles
 * cuts them: at most XT_R rows, not past r1, and XT_CHUNK blocks), to be
 * fetched in `parts` parts (xt_look_part). */
static xt_look xt_look_at(int dt, const vx_weight *W, int64_t r, int64_t r1, int64_t b0, int parts) {
    const int64_t nblk = W->cols / VX_QBLOCK;
    const int64_t nb = nblk - b0 < XT_CHUNK ? nblk - b0 : XT_CHUNK;
    const size_t bb = vx_q_block_bytes(dt);
    const int64_t end = r + XT_R < r1 ? r + XT_R : r1; /* r1 <= W->rows */
    xt_look l = {.groups = 0};
    for (int64_t g = r / VX_QGROUP * VX_QGROUP; g < end; g += VX_QGROUP, l.groups++) {
        const int64_t n = W->rows - g < VX_QGROUP ? W->rows - g : VX_QGROUP;
        const size_t gbb = (size_t)n * bb;
        const char *p = (const char *)W->data + (size_t)g * (size_t)nblk * bb + (size_t)b0 * gbb;
        const char *q = p + (size_t)nb * gbb;
        l.p[l.groups] = (const char *)((uintptr_t)p & ~(uintptr_t)63);
        l.run[l.groups] = (size_t)(q - l.p[l.groups]);
        l.slice[l.groups] = parts == 1 ? l.run[l.groups]
                                       : (l.run[l.groups] + (size_t)parts * 64 - 1) / ((size_t)parts * 64) * 64;
    }
    return l;
}

/* Part k of every run of l (of the parts xt_look_at was given) into L2.
 * With EVEX the next tile's chunk comes a slice per block of the tile
 * computing meanwhile (XT_SPREAD); in one burst of up to 144 lines, issued
 * as a tile began, products of few inputs waited on memory. A Zen 4 core,
 * 2 threads, Q4 cycled past the L3, time sliced / burst, medians of 15
 * alternated rounds, 9 / 16 / 24 / 48 / 64 inputs: [5120 x 1280] 0.91 /
 * 0.93 / 0.94 / 0.97 / 0.98, [1280 x 5120] 0.91 / 0.93 / 0.93 / 0.95 /
 * 0.97; fetching two tiles ahead rather than one, 1.00. AVX2 keeps the
 * burst: its tiles are bound by their arithmetic. Into L1 it was slower on
 * a Zen 4 core, 2 threads, the two hints alternated in one process (time
 * L1 / L2, median of 10-20 pairs): [5120 x 1280] x 24 cycled past the L3,
 * Q4 1.10, Q8 1.13 (x 64: 1.04, 1.09; in cache 0.97-0.99, noise); a q4
 * encoder pass of 24 frames 1.04-1.06 with AVX512-VNNI and 1.07 with plain
 * AVX2, of 64 frames 1.05 and 1.00. */
#define XT_SPREAD (XQ_VNNI == 2)
INLINE void xt_look_part(const xt_look *l, int k) {
    for (int g = 0; g < l->groups; g++) {
        const size_t lo = (size_t)k * l->slice[g], end = lo + l->slice[g];
        const size_t hi = end < l->run[g] ? end : l->run[g];
        for (size_t o = lo; o < hi; o += 64) _mm_prefetch(l->p[g] + o, _MM_HINT_T1);
    }
}

/* A tile's chains between a scratch's row order and y's (QZ_ROWS is its
 * own inverse). */
#if XQ_VNNI == 2
#define XT_ORDER(sc, v) ((sc)->perm ? _mm512_permutexvar_ps(QZ_ROWS, v) : (v))
#else
#define XT_ORDER(sc, v) (v)
#endif

/* What a tile's block sums start from: the correction of unsigned weights,
 * -8 (Q4: the nibbles) or -128 (VNNI Q8: w + 128) times the sum of the
 * input block; 0 where the weights stay signed (AVX2 Q8). */
INLINE int32_t xt_unit(int dt) { return dt == VX_DT_Q4 ? -8 : XQ_VNNI ? -128 : 0; }

/* One register tile: the scratch's rows x N inputs over the chunk's nb
 * blocks from cb0; y[i * ldy + k] (k < rows) holds the chains in and out
 * (first: start from zero). xs[i * XT_CHUNK + bb]: xt_unit x the sum of
 * input i's block cb0 + bb. AVX2 Q4 adds a block's 8 vpmaddubsw pair sums
 * in int16 before widening them: each is at most 2 * 15 * 128, and 8 of
 * them stay below 2^15: exact, and 2 instructions per slice and input where
 * Q8's sign, multiply, widen and add take 4. */
INLINE void xt_tile(int dt, int N, const xt_scratch *sc, int nb, int64_t cb0, const int8_t *xq,
                    const float *xd, const int32_t *xs, int64_t cols, int first, float *y,
                    int ldy, int rows, const xt_look *look) {
    const int64_t nblk = cols / VX_QBLOCK;
    const int VL = (int)(sizeof(xt_vi) / 4); /* rows per vector */
    _Alignas(64) float tmp[XT_R];
    xt_vf f[XT_NI][XT_V];
    _Pragma("GCC unroll 8")
    for (int i = 0; i < N; i++) {
        const float *yi = y + (size_t)i * ldy;
        if (!first && rows < XT_R) {
            memcpy(tmp, yi, sizeof(float) * (size_t)rows);
            yi = tmp;
        }
        _Pragma("GCC unroll 2")
        for (int v = 0; v < XT_V; v++) f[i][v] = first ? XT_ZEROF() : XT_ORDER(sc, XT_LOADUF(yi + v * VL));
    }
    for (int bb = 0; bb < nb; bb++) {
        if (XT_SPREAD && look) xt_look_part(look, bb);
        const int64_t b = cb0 + bb;
        xt_vi acc[XT_NI][XT_V];
        _Pragma("GCC unroll 8")
        for (int i = 0; i < N; i++)
            _Pragma("GCC unroll 2")
            for (int v = 0; v < XT_V; v++) acc[i][v] = XT_SET1I(xs[i * XT_CHUNK + bb]);
#if !XQ_VNNI
        if (dt == VX_DT_Q4) {
            xt_vi p[XT_NI];
            _Pragma("GCC unroll 8")
            for (int i = 0; i < N; i++) p[i] = XT_ZEROI();
            _Pragma("GCC unroll 8")
            for (int s = 0; s < 8; s++) {
                const xt_vi wv = XT_LOADI(&sc->w[bb][s][0]);
                _Pragma("GCC unroll 8")
                for (int i = 0; i < N; i++) {
                    int32_t x4;
                    memcpy(&x4, xq + (size_t)i * cols + b * VX_QBLOCK + 4 * s, 4);
                    p[i] = _mm256_add_epi16(p[i], _mm256_maddubs_epi16(wv, XT_SET1I(x4)));
                }
            }
            _Pragma("GCC unroll 8")
            for (int i = 0; i < N; i++)
                acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(p[i], _mm256_set1_epi16(1)));
        }
        else
#endif
        _Pragma("GCC unroll 8")
        for (int s = 0; s < 8; s++) {
            xt_vi wv[XT_V];
#if !XQ_VNNI
            xt_vi av[XT_V];
#endif
            _Pragma("GCC unroll 2")
            for (int v = 0; v < XT_V; v++) {
                wv[v] = XT_LOADI(&sc->w[bb][s][v]);
#if !XQ_VNNI
                av[v] = XT_LOADI(&sc->aw[bb][s][v]);
#endif
            }
            _Pragma("GCC unroll 8")
            for (int i = 0; i < N; i++) {
                int32_t x4;
                memcpy(&x4, xq + (size_t)i * cols + b * VX_QBLOCK + 4 * s, 4);
                const xt_vi xb = XT_SET1I(x4);
                _Pragma("GCC unroll 2")
                for (int v = 0; v < XT_V; v++) {
#if XQ_VNNI
                    acc[i][v] = XT_DOT(acc[i][v], wv[v], xb);
#else
                    const xt_vi p = _mm256_maddubs_epi16(av[v], _mm256_sign_epi8(xb, wv[v]));
                    acc[i][v] = _mm256_add_epi32(acc[i][v], _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
#endif
                }
            }
        }
        _Pragma("GCC unroll 8")
        for (int i = 0; i < N; i++) {
            const xt_vf dx = XT_SET1F(xd[(size_t)i * nblk + b]);
            _Pragma("GCC unroll 2")
            for (int v = 0; v < XT_V; v++)
                f[i][v] = XT_FMA(XT_CVT(acc[i][v]), XT_MUL(XT_LOADF(sc->dw[bb] + v * VL), dx), f[i][v]);
        }
    }
    _Pragma("GCC unroll 8")
    for (int i = 0; i < N; i++) {
        float *yi = y + (size_t)i * ldy;
        if (rows == XT_R) {
            _Pragma("GCC unroll 2")
            for (int v = 0; v < XT_V; v++) XT_STOREUF(yi + v * VL, XT_ORDER(sc, f[i][v]));
        } else {
            _Pragma("GCC unroll 2")
            for (int v = 0; v < XT_V; v++) XT_STOREF(tmp + v * VL, XT_ORDER(sc, f[i][v]));
            memcpy(yi, tmp, sizeof(float) * (size_t)rows);
        }
    }
}

/* Rows [r0, r1) x n inputs through the tiles, a chunk of blocks at a time
 * (the chains live in Y between chunks: blocks stay in order). */
static void q_tiles(int dt, const vx_weight *W, const vx_qact *X, int n, float *Y, int ldy,
                    int64_t r0, int64_t r1) {
    const int64_t cols = W->cols, nblk = cols / VX_QBLOCK;
    xt_scratch sc;
    int32_t xs[XQ_MAX_N * XT_CHUNK];
    const xt_look start = xt_look_at(dt, W, r0, r1, 0, 1);
    xt_look_part(&start, 0);
    for (int64_t cb0 = 0; cb0 < nblk; cb0 += XT_CHUNK) {
        const int nb = (int)(nblk - cb0 < XT_CHUNK ? nblk - cb0 : XT_CHUNK);
        for (int i = 0; i < n; i++)
            for (int bb = 0; bb < nb; bb++)
                xs[i * XT_CHUNK + bb] = xt_unit(dt) * X->s[(size_t)(i * nblk + cb0 + bb)];
        for (int64_t r = r0; r < r1; r += XT_R) {
            const int rows = (int)(r1 - r < XT_R ? r1 - r : XT_R);
            xt_pack(dt, W, r, rows, cb0, nb, &sc);
            /* the next tile's chunk (after the last tile, the next chunk's
             * first), fetched while this one computes its first inputs */
            xt_look next = {.groups = 0};
            const int parts = XT_SPREAD ? nb : 1;
            if (r + XT_R < r1) next = xt_look_at(dt, W, r + XT_R, r1, cb0, parts);
            else if (cb0 + XT_CHUNK < nblk) next = xt_look_at(dt, W, r0, r1, cb0 + XT_CHUNK, parts);
            if (!XT_SPREAD) { /* one burst, now */
                xt_look_part(&next, 0);
                next.groups = 0;
            }
            for (int i = 0; i < n; i += XT_NI) {
                const int nt = n - i < XT_NI ? n - i : XT_NI;
                const int8_t *x = X->q + (size_t)i * cols;
                const float *d = X->d + (size_t)i * nblk;
                const int32_t *s = xs + i * XT_CHUNK;
                float *y = Y + (size_t)i * ldy + r;
                const int first = cb0 == 0;
                const xt_look *look = i == 0 && next.groups ? &next : NULL;
#if XQ_VNNI /* one tile for both formats */
#define XT_CASE(N) case N: xt_tile(dt, N, &sc, nb, cb0, x, d, s, cols, first, y, ldy, rows, look); break
#else /* the AVX2 tile's Q4 and Q8 inner loops differ: one tile each, no branch inside */
#define XT_CASE(N)                                                                                 \
    case N:                                                                                        \
        if (dt == VX_DT_Q4) xt_tile(VX_DT_Q4, N, &sc, nb, cb0, x, d, s, cols, first, y, ldy, rows, look); \
        else xt_tile(VX_DT_Q8, N, &sc, nb, cb0, x, d, s, cols, first, y, ldy, rows, look);               \
        break
#endif
                switch (nt) {
#if XT_NI >= 6
                    XT_CASE(6); XT_CASE(5);
#endif
                    XT_CASE(4); XT_CASE(3); XT_CASE(2);
                default: XT_CASE(1);
                }
#undef XT_CASE
            }
        }
    }
}

INLINE void q_rows(int dt, const vx_weight *W, const vx_qact *X, int n, float *Y, int ldy,
                   int64_t r0, int64_t r1) {
    /* full groups streamed when few inputs share them; the rest (rows
     * outside full groups, or many inputs) through the tiles */
    const int64_t g0 = (r0 + VX_QGROUP - 1) / VX_QGROUP * VX_QGROUP;
    const int64_t g1 = r1 / VX_QGROUP * VX_QGROUP;
    if (n > QG_MAX_N || g0 >= g1) {
        q_tiles(dt, W, X, n, Y, ldy, r0, r1);
        return;
    }
    if (r0 < g0) q_tiles(dt, W, X, n, Y, ldy, r0, g0);
    if (n >= QZ_MIN_N) qz_groups(dt, W, X, n, Y, ldy, g0, g1);
    else q_groups(dt, W, X, n, Y, ldy, g0, g1);
    if (g1 < r1) q_tiles(dt, W, X, n, Y, ldy, g1, r1);
}

static void q_rows_q8(const vx_weight *W, const vx_qact *X, int n, float *Y, int ldy, int64_t r0, int64_t r1) { q_rows(VX_DT_Q8, W, X, n, Y, ldy, r0, r1); }
static void q_rows_q4(const vx_weight *W, const vx_qact *X, int n, float *Y, int ldy, int64_t r0, int64_t r1) { q_rows(VX_DT_Q4, W, X, n, Y, ldy, r0, r1); }

static int x86_matmul_rows_q(const vx_weight *W, const vx_qact *X, int n, float *Y, int ldy,
                             int64_t r0, int64_t r1) {
    if (!vx_dt_is_block(W->dtype) || W->cols % VX_QBLOCK != 0 || n > XQ_MAX_N) return -1;
    if (n <= 0 || r0 >= r1) return 0;
    if (W->dtype == VX_DT_Q8) q_rows_q8(W, X, n, Y, ldy, r0, r1);
    else q_rows_q4(W, X, n, Y, ldy, r0, r1);
    return 0;
}


#endif
