/* simd_driver.h - the driver shared by the SIMD backends, written once: row
 * blocking of the matrix-vector product, the register-blocked batched path
 * with its widening buffer and prefetch, and the attention kernels' tiling.
 * A backend file (avx2.c, neon.c) defines its vector primitives below and
 * then includes this file; what it adds of its own is its tiles, its Q8/Q4
 * kernels and its vx_backend table. A third backend is one such file.
 *
 * Summation order (the seam's contract, engine.h): every output of the
 * float paths is one chain of 8-lane FMAs over c = 0, 8, 16, ... from zero,
 * then the fixed reduction ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)); BF16 and
 * F16 widen exactly. So the matrix-vector path, the batched tiles and any
 * split of rows give bitwise the same outputs, and every backend the same
 * bits as every other.
 *
 * What the including file provides (all inline, each a few instructions):
 *   vf8                     8 float lanes (one register or a pair)
 *   vf8_zero()              all lanes 0
 *   vf8_fma(acc, a, b)      acc + a * b per lane, rounded once
 *   vf8_loadu(p)            8 floats from p (any alignment)
 *   vf8_load_a(p)           8 floats from p, aligned to SIMD_ALIGN
 *   vf8_store_a(p, v)       the same as a store
 *   vf8_storeu(p, v)        8 floats to p (any alignment)
 *   vf8_bcast(p)            *p in every lane
 *   vf8_hsum(v)             the fixed reduction above
 *   load8(dt, p)            8 elements of an F32 / F16 / BF16 row at byte p, widened
 *   kv_load8(row, f16, c)   8 elements of a KV row (fp16 or float) from element c
 *   f16_scalar(h)           one fp16 value, exactly
 *   prefetch_line(p)        ask for p's cache line
 * and the constants
 *   MV_ROWS      rows per matrix-vector step (their chains cover the FMA latency)
 *   TILE_N       inputs per register tile of the batched path (2 or 3)
 *   SIMD_ALIGN   alignment of vf8_load_a / vf8_store_a
 *   FUSED_WIDEN  1: full row blocks widen inside their first tiles (tile_widen)
 *   SCORES_4X2   1: the backend's scores_store_4x2 reduces a 4 x 2 score tile
 *
 * Everything here is static and compiled with the including file's flags. */
#ifndef VX_SIMD_DRIVER_H
#define VX_SIMD_DRIVER_H

#define CHUNK 512 /* columns widened at a time (BR rows x 2 KB in L1) */
#define BR 8      /* rows per block of the batched path */
#define MAX_N 64  /* rows of X per call (kernels.c's BATCH) */

INLINE size_t elem_bytes(int dt) { return dt == VX_DT_F32 ? 4 : 2; }

/* ---------------- n == 1: matrix-vector, weights widened in registers */

/* Rows w[0..R) (R = 1 or MV_ROWS, a compile-time constant at each call):
 * MV_ROWS chains share each load of x, and the weights are read once. */
INLINE void matvec_rows(int dt, int R, const uint8_t *const *w, const float *x, int64_t cols,
                        float *y) {
    vf8 a[MV_ROWS];
    for (int k = 0; k < R; k++) a[k] = vf8_zero();
    const size_t es = elem_bytes(dt);
    for (int64_t c = 0; c < cols; c += 8) {
        const vf8 xv = vf8_loadu(x + c);
        for (int k = 0; k < R; k++) a[k] = vf8_fma(a[k], load8(dt, w[k] + (size_t)c * es), xv);
    }
    for (int k = 0; k < R; k++) y[k] = vf8_hsum(a[k]);
}

INLINE void matvec(int dt, const uint8_t *base, size_t row_bytes, const float *x, int64_t cols,
                   float *Y, int64_t r0, int64_t r1) {
    int64_t r = r0;
    for (; r + MV_ROWS <= r1; r += MV_ROWS) {
        const uint8_t *w[MV_ROWS];
        for (int k = 0; k < MV_ROWS; k++) w[k] = base + (size_t)(r + k) * row_bytes;
        matvec_rows(dt, MV_ROWS, w, x, cols, Y + r);
    }
    for (; r < r1; r++) {
        const uint8_t *w[1] = {base + (size_t)r * row_bytes};
        matvec_rows(dt, 1, w, x, cols, Y + r);
    }
}

/* One function per dtype so each inner loop is compiled for its dtype. */
#define MATVEC_FN(name, dt)                                                                    \
    static void name(const uint8_t *b, size_t rb, const float *x, int64_t c, float *Y,        \
                     int64_t r0, int64_t r1) {                                                 \
        matvec(dt, b, rb, x, c, Y, r0, r1);                                                    \
    }
MATVEC_FN(matvec_f32, VX_DT_F32)
MATVEC_FN(matvec_f16, VX_DT_F16)
MATVEC_FN(matvec_bf16, VX_DT_BF16)

/* ---------------- n >= 2: widen a chunk once, register-blocked tiles */

/* Widen elements [c0, c0+len) of a row (len a multiple of 8) to float: the
 * very values the matrix-vector path feeds to its FMAs. F32 too goes
 * through registers (a memcpy of 1 KB pieces cost more than the FMAs that
 * reuse them). */
static void widen(int dt, const uint8_t *row, int64_t c0, int64_t len, float *out) {
    const uint8_t *p = row + (size_t)c0 * elem_bytes(dt);
    if (dt == VX_DT_F32)
        for (int64_t c = 0; c < len; c += 8) vf8_store_a(out + c, load8(VX_DT_F32, p + c * 4));
    else if (dt == VX_DT_F16)
        for (int64_t c = 0; c < len; c += 8) vf8_store_a(out + c, load8(VX_DT_F16, p + c * 2));
    else
        for (int64_t c = 0; c < len; c += 8) vf8_store_a(out + c, load8(VX_DT_BF16, p + c * 2));
}

/* Tile of R widened rows (w, stride CHUNK) x N inputs (x, stride ldx) over
 * len columns; acc[i * BR + k] carries the chain of (input i, row k) from the
 * previous chunk and gets it back, so chunking does not reorder anything.
 * Each widened weight vector feeds N inputs and each x vector R rows. */
INLINE void tile(int R, int N, const float *w, const float *x, int ldx, int64_t len, vf8 *acc) {
    vf8 a[TILE_N][4];
    for (int i = 0; i < N; i++)
        for (int k = 0; k < R; k++) a[i][k] = acc[i * BR + k];
    for (int64_t c = 0; c < len; c += 8) {
        vf8 xv[TILE_N];
        for (int i = 0; i < N; i++) xv[i] = vf8_loadu(x + (size_t)i * ldx + c);
        for (int k = 0; k < R; k++) {
            const vf8 wv = vf8_load_a(w + k * CHUNK + c);
            for (int i = 0; i < N; i++) a[i][k] = vf8_fma(a[i][k], wv, xv[i]);
        }
    }
    for (int i = 0; i < N; i++)
        for (int k = 0; k < R; k++) acc[i * BR + k] = a[i][k];
}

/* The tiles' shapes, each compiled on its own: 4 rows or 1 x 1 .. TILE_N
 * inputs (the others handle the edges of n and of the rows). */
#define TILE_FN(R, N)                                                                          \
    static void tile_##R##x##N(const float *w, const float *x, int ldx, int64_t len, vf8 *acc) { \
        tile(R, N, w, x, ldx, len, acc);                                                       \
    }
TILE_FN(4, 1)
TILE_FN(4, 2)
TILE_FN(1, 1)
TILE_FN(1, 2)
#if TILE_N >= 3
TILE_FN(4, 3)
TILE_FN(1, 3)
#endif

/* The tile of R (4 or 1) rows x N inputs; R is a constant at each call. */
INLINE void tile_rn(int R, int N, const float *w, const float *x, int ldx, int64_t len, vf8 *acc) {
#if TILE_N >= 3
    if (N == 3) {
        if (R == 4) tile_4x3(w, x, ldx, len, acc);
        else tile_1x3(w, x, ldx, len, acc);
        return;
    }
#endif
    if (N == 2) {
        if (R == 4) tile_4x2(w, x, ldx, len, acc);
        else tile_1x2(w, x, ldx, len, acc);
    } else {
        if (R == 4) tile_4x1(w, x, ldx, len, acc);
        else tile_1x1(w, x, ldx, len, acc);
    }
}

/* All tiles of one chunk for inputs [i, i+N) (N <= TILE_N): the x chunk of
 * these inputs is fetched once from L2 and then reused from L1 by every row. */
static void chunk_inputs(int N, int rows, const float *wbuf, const float *x, int ldx, int64_t len,
                         vf8 *acc) {
    int k = 0;
    for (; k + 4 <= rows; k += 4) tile_rn(4, N, wbuf + k * CHUNK, x, ldx, len, acc + k);
    for (; k < rows; k++) tile_rn(1, N, wbuf + k * CHUNK, x, ldx, len, acc + k);
}

#if FUSED_WIDEN
/* The 4 x TILE_N tile of the first inputs, widening its 4 rows on the way:
 * each widened vector feeds this tile's FMAs and is stored to w for the
 * other inputs. Widening as a pass of its own was bound by its stores
 * (~10% of the kernel at n = 24 on AVX2); here the stores overlap FMA work. */
INLINE void tile_widen(int dt, const uint8_t *const *src, float *w, const float *x, int ldx,
                       int64_t len, vf8 *acc) {
    const size_t es = elem_bytes(dt);
    vf8 a[TILE_N][4];
    for (int i = 0; i < TILE_N; i++)
        for (int k = 0; k < 4; k++) a[i][k] = acc[i * BR + k];
    for (int64_t c = 0; c < len; c += 8) {
        vf8 xv[TILE_N];
        for (int i = 0; i < TILE_N; i++) xv[i] = vf8_loadu(x + (size_t)i * ldx + c);
        for (int k = 0; k < 4; k++) {
            const vf8 wv = load8(dt, src[k] + (size_t)c * es);
            vf8_store_a(w + k * CHUNK + c, wv);
            for (int i = 0; i < TILE_N; i++) a[i][k] = vf8_fma(a[i][k], wv, xv[i]);
        }
    }
    for (int i = 0; i < TILE_N; i++)
        for (int k = 0; k < 4; k++) acc[i * BR + k] = a[i][k];
}

#define TILE_WIDEN_FN(name, dt)                                                                \
    static void name(const uint8_t *const *s, float *w, const float *x, int ldx, int64_t len,  \
                     vf8 *acc) {                                                               \
        tile_widen(dt, s, w, x, ldx, len, acc);                                                \
    }
TILE_WIDEN_FN(tile_widen_f32, VX_DT_F32)
TILE_WIDEN_FN(tile_widen_f16, VX_DT_F16)
TILE_WIDEN_FN(tile_widen_bf16, VX_DT_BF16)

/* Widen a full block's chunk inside the tiles of inputs [0, TILE_N). */
static void widen_block_tiles(const vx_weight *W, int64_t r, int64_t c0, int64_t len,
                              const float *X, int ldx, float *wbuf, vf8 *acc) {
    const size_t row_bytes = vx_row_bytes(W->dtype, W->cols);
    const uint8_t *base = W->data;
    for (int k = 0; k < BR; k += 4) {
        const uint8_t *src[4];
        for (int q = 0; q < 4; q++)
            src[q] = base + (size_t)(r + k + q) * row_bytes + vx_row_bytes(W->dtype, c0);
        const float *x = X + c0;
        if (W->dtype == VX_DT_BF16) tile_widen_bf16(src, wbuf + k * CHUNK, x, ldx, len, acc + k);
        else if (W->dtype == VX_DT_F16) tile_widen_f16(src, wbuf + k * CHUNK, x, ldx, len, acc + k);
        else tile_widen_f32(src, wbuf + k * CHUNK, x, ldx, len, acc + k);
    }
}
#endif

/* Prefetch of the next block's weights, spread over this block's work. The
 * BR rows of a block are one contiguous run of memory; fetching it a whole
 * block ahead (several microseconds of FMAs) hides the DRAM latency, and a
 * few lines per step of (chunk, input group) keeps the fetches from piling
 * up on the miss buffers (128 prefetches at once stalled the loads). */
typedef struct {
    const char *p, *end; /* lines still to ask for */
    size_t step;         /* bytes per step */
} pf_run;

INLINE void pf_start(pf_run *f, const vx_weight *W, int64_t r_next, int64_t r1, int steps) {
    const size_t row_bytes = vx_row_bytes(W->dtype, W->cols);
    const int64_t rows = r1 - r_next < BR ? r1 - r_next : BR;
    f->p = f->end = (const char *)W->data; /* nothing to fetch after the last block */
    f->step = 0;
    if (rows <= 0) return;
    f->p += (size_t)r_next * row_bytes;
    f->end = f->p + (size_t)rows * row_bytes;
    f->step = ((size_t)rows * row_bytes / (size_t)steps + 63) & ~(size_t)63;
}

INLINE void pf_step(pf_run *f) {
    const char *stop = f->p + f->step < f->end ? f->p + f->step : f->end;
    for (; f->p < stop; f->p += 64) prefetch_line(f->p);
}

/* n >= 2: blocks of BR rows; per CHUNK of columns the block is widened into
 * an L1-resident buffer and walked by the tiles of every input group. */
static void batched(const vx_weight *W, const float *X, int n, int ldx, float *Y, int ldy,
                    int64_t r0, int64_t r1) {
    const int64_t cols = W->cols;
    const size_t row_bytes = vx_row_bytes(W->dtype, cols);
    const uint8_t *base = W->data;
    float wbuf[BR * CHUNK] __attribute__((aligned(SIMD_ALIGN)));
    vf8 acc[MAX_N * BR]; /* [input][row of the block] */
    const int steps = (int)((cols + CHUNK - 1) / CHUNK) * ((n + TILE_N - 1) / TILE_N);
    for (int64_t r = r0; r < r1; r += BR) {
        const int rows = r1 - r < BR ? (int)(r1 - r) : BR;
        pf_run pf;
        pf_start(&pf, W, r + BR, r1, steps);
        for (int i = 0; i < n; i++)
            for (int k = 0; k < rows; k++) acc[i * BR + k] = vf8_zero();
        for (int64_t c0 = 0; c0 < cols; c0 += CHUNK) {
            const int64_t len = cols - c0 < CHUNK ? cols - c0 : CHUNK;
            int i = 0;
#if FUSED_WIDEN
            if (rows == BR && n >= TILE_N) {
                widen_block_tiles(W, r, c0, len, X, ldx, wbuf, acc);
                pf_step(&pf);
                i = TILE_N;
            } else
#endif
            {
                for (int k = 0; k < rows; k++)
                    widen(W->dtype, base + (size_t)(r + k) * row_bytes, c0, len, wbuf + k * CHUNK);
            }
            for (; i < n; i += TILE_N) {
                const int N = n - i < TILE_N ? n - i : TILE_N;
                pf_step(&pf);
                chunk_inputs(N, rows, wbuf, X + (size_t)i * ldx + c0, ldx, len, acc + i * BR);
            }
        }
        for (int i = 0; i < n; i++)
            for (int k = 0; k < rows; k++) Y[(size_t)i * ldy + r + k] = vf8_hsum(acc[i * BR + k]);
    }
}

/* engine.h's matmul_rows for F32 / F16 / BF16 rows of a multiple of 8. */
static int simd_matmul_rows(const vx_weight *W, const float *X, int n, int ldx, float *Y, int ldy,
                            int64_t r0, int64_t r1) {
    if (W->dtype != VX_DT_F32 && W->dtype != VX_DT_F16 && W->dtype != VX_DT_BF16) return -1;
    if (n > MAX_N || W->cols % 8 != 0) return -1;
    if (n <= 0 || r0 >= r1) return 0;
    if (n == 1) {
        const uint8_t *base = W->data;
        const size_t rb = vx_row_bytes(W->dtype, W->cols);
        switch (W->dtype) {
        case VX_DT_F32: matvec_f32(base, rb, X, W->cols, Y, r0, r1); break;
        case VX_DT_F16: matvec_f16(base, rb, X, W->cols, Y, r0, r1); break;
        case VX_DT_BF16: matvec_bf16(base, rb, X, W->cols, Y, r0, r1); break;
        default: return -1;
        }
        return 0;
    }
    batched(W, X, n, ldx, Y, ldy, r0, r1);
    return 0;
}

/* ---------------- attention (engine.h: attn_scores / attn_values) */

/* Elements c .. c+rem of a KV row (or of a query: f16 = 0), zero-padded to 8 lanes. */
INLINE vf8 kv_tail8(const void *row, int f16, int c, int rem) {
    float t[8] = {0};
    for (int l = 0; l < rem; l++)
        t[l] = f16 ? f16_scalar(((const uint16_t *)row)[c + l]) : ((const float *)row)[c + l];
    return vf8_loadu(t);
}

/* Scores of QB queries against 2 keys (or 1): QB x NK independent chains. */
INLINE void scores_tile(int QB, int NK, const float *const *q, const void *k0, const void *k1,
                        int f16, int hd, float *S, size_t lds, int64_t t) {
    vf8 a[4][2];
    for (int i = 0; i < QB; i++)
        for (int j = 0; j < NK; j++) a[i][j] = vf8_zero();
    int hd8 = hd - hd % 8;
    for (int c = 0; c < hd8; c += 8) {
        const vf8 kv0 = kv_load8(k0, f16, c), kv1 = NK > 1 ? kv_load8(k1, f16, c) : kv0;
        for (int i = 0; i < QB; i++) {
            const vf8 qv = vf8_loadu(q[i] + c);
            a[i][0] = vf8_fma(a[i][0], kv0, qv);
            if (NK > 1) a[i][1] = vf8_fma(a[i][1], kv1, qv);
        }
    }
    if (hd8 < hd) {
        const vf8 kv0 = kv_tail8(k0, f16, hd8, hd - hd8);
        const vf8 kv1 = NK > 1 ? kv_tail8(k1, f16, hd8, hd - hd8) : kv0;
        for (int i = 0; i < QB; i++) {
            const vf8 qv = kv_tail8(q[i], 0, hd8, hd - hd8);
            a[i][0] = vf8_fma(a[i][0], kv0, qv);
            if (NK > 1) a[i][1] = vf8_fma(a[i][1], kv1, qv);
        }
    }
#if SCORES_4X2
    if (QB == 4 && NK == 2) {
        scores_store_4x2(a, S, lds, t);
        return;
    }
#endif
    for (int i = 0; i < QB; i++)
        for (int j = 0; j < NK; j++) S[(size_t)i * lds + (size_t)t + (size_t)j] = vf8_hsum(a[i][j]);
}

/* Attention reads one head's slice of each cached position, a whole KV row
 * (kv_dim elements: 4 KB in the encoder) apart, a stride the hardware
 * prefetchers do not follow: the slices KV_PF positions ahead are fetched
 * while these compute (bytes [from, to) of the row). */
#define KV_PF 8

INLINE void kv_prefetch(const uint8_t *row, size_t from, size_t to) {
    for (size_t o = from & ~(size_t)63; o < to; o += 64) prefetch_line(row + o);
}

INLINE void scores_rows(int QB, const float *const *q, const void *K, int f16, size_t ldk,
                        int64_t nk, int hd, float *S, size_t lds) {
    const size_t es = f16 ? 2 : 4, row = ldk * es;
    const uint8_t *base = K;
    int64_t t = 0;
    for (; t + 2 <= nk; t += 2) {
        for (int64_t u = t + KV_PF; u < t + KV_PF + 2 && u < nk; u++)
            kv_prefetch(base + (size_t)u * row, 0, (size_t)hd * es);
        scores_tile(QB, 2, q, base + (size_t)t * row, base + (size_t)(t + 1) * row, f16, hd, S,
                    lds, t);
    }
    if (t < nk) scores_tile(QB, 1, q, base + (size_t)t * row, NULL, f16, hd, S, lds, t);
}

static void simd_attn_scores(const float *const *q, int nq, const void *K, int f16, size_t ldk,
                             int64_t nk, int hd, float *S, size_t lds) {
    int i = 0;
    for (; i + 4 <= nq; i += 4)
        scores_rows(4, q + i, K, f16, ldk, nk, hd, S + (size_t)i * lds, lds);
    for (; i < nq; i++) scores_rows(1, q + i, K, f16, ldk, nk, hd, S + (size_t)i * lds, lds);
}

/* o[i][c..c+8*CB) += sum_t P[i, t] v_t for QB queries: QB x CB chains. */
INLINE void values_tile(int QB, int CB, const float *P, size_t ldp, const void *V, int f16,
                        size_t ldv, int64_t nk, float *const *o, int c) {
    const size_t es = f16 ? 2 : 4;
    const uint8_t *base = V;
    vf8 a[4][2];
    for (int i = 0; i < QB; i++)
        for (int b = 0; b < CB; b++) a[i][b] = vf8_loadu(o[i] + c + 8 * b);
    for (int64_t t = 0; t < nk; t++) {
        const void *row = base + (size_t)t * ldv * es;
        const vf8 v0 = kv_load8(row, f16, c), v1 = CB > 1 ? kv_load8(row, f16, c + 8) : v0;
        for (int i = 0; i < QB; i++) {
            const vf8 p = vf8_bcast(P + (size_t)i * ldp + (size_t)t);
            a[i][0] = vf8_fma(a[i][0], p, v0);
            if (CB > 1) a[i][1] = vf8_fma(a[i][1], p, v1);
        }
    }
    for (int i = 0; i < QB; i++)
        for (int b = 0; b < CB; b++) vf8_storeu(o[i] + c + 8 * b, a[i][b]);
}

/* Keys per block of the values pass. The column slices of a block's rows
 * are read one after another, and its rows are a KV row apart (4 KB in the
 * encoder), so they share an L1 set: 8 rows of 2 lines stay within its 12
 * ways, where a pass of a slice over all the keys evicted the rows before
 * the next slice came back to them (2.5x the time per value here). */
#define VALUES_KEYS 8

/* qb (<= 4) queries' outputs over nk keys, every column: 16, then 8 at a
 * time, the columns past the last 8 one FMA per element. */
INLINE void values_rows(int qb, const float *P, size_t ldp, const void *V, int f16, size_t ldv,
                        int64_t nk, int hd, float *const *o) {
    const int hd8 = hd - hd % 8;
    int c = 0;
    for (; c + 16 <= hd8; c += 16) {
        if (qb == 4) values_tile(4, 2, P, ldp, V, f16, ldv, nk, o, c);
        else
            for (int k = 0; k < qb; k++)
                values_tile(1, 2, P + (size_t)k * ldp, ldp, V, f16, ldv, nk, o + k, c);
    }
    for (; c < hd8; c += 8) {
        if (qb == 4) values_tile(4, 1, P, ldp, V, f16, ldv, nk, o, c);
        else
            for (int k = 0; k < qb; k++)
                values_tile(1, 1, P + (size_t)k * ldp, ldp, V, f16, ldv, nk, o + k, c);
    }
    vx_attn_values_fma_cols(P, ldp, qb, V, f16, ldv, nk, hd8, hd, o);
}

static void simd_attn_values(const float *P, size_t ldp, int nq, const void *V, int f16,
                             size_t ldv, int64_t nk, int hd, float *const *o) {
    const size_t es = f16 ? 2 : 4, row = ldv * es;
    const uint8_t *base = V;
    for (int i = 0; i < nq; i += 4) {
        const int qb = nq - i < 4 ? nq - i : 4;
        /* each output's sum still runs over the keys in order: block by block */
        for (int64_t t0 = 0; t0 < nk; t0 += VALUES_KEYS) {
            const int64_t nb = nk - t0 < VALUES_KEYS ? nk - t0 : VALUES_KEYS;
            for (int64_t t = t0 + VALUES_KEYS; t < t0 + 2 * VALUES_KEYS && t < nk; t++)
                kv_prefetch(base + (size_t)t * row, 0, (size_t)hd * es); /* the next block */
            values_rows(qb, P + (size_t)i * ldp + (size_t)t0, ldp, base + (size_t)t0 * row, f16,
                        ldv, nb, hd, o + i);
        }
    }
}

/* Checks of engine.h's matmul_rows_q common to the backends: 1 to run the
 * kernel, 0 for nothing to do (return 0), -1 to decline (the caller falls
 * back to the portable backend). */
INLINE int q_args(const vx_weight *W, int n, int64_t r0, int64_t r1) {
    if (!vx_dt_is_block(W->dtype) || W->cols % VX_QBLOCK != 0 || n > MAX_N) return -1;
    return n > 0 && r0 < r1;
}

#endif
