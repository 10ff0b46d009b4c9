/* quant.h - voxd's block weight formats (blocks of 32 along a row).
 *   Q8: fp16 scale d, then 32 int8 q;        value = d * q
 *   Q4: fp16 scale d, then 16 bytes: byte j holds element j in its low nibble
 *       and element j+16 in its high nibble;  value = d * (nibble - 8)
 * One row of `cols` elements quantizes to cols/32 blocks (vx_quantize_row_*).
 *
 * A Q8/Q4 tensor [rows, cols] is stored in row groups ("rowgroup8", named in
 * the file's metadata): rows 8g .. 8g+n-1 form group g (n = 8, or the rows
 * left at the end), whose bytes start at 8g * (cols/32) * BB (BB = block
 * bytes) and hold, block by block, the n rows' fp16 scales (row order) and
 * then their n payloads (32 int8 / 16 nibble bytes, row order). So a
 * matrix-vector product reads one contiguous stream per 8 rows, and a
 * block's 8 scales with one load instead of 8 gathered ones. The total size
 * is that of row-major blocks; a one-row tensor is one row of blocks. */
#ifndef VX_QUANT_H
#define VX_QUANT_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define VX_QBLOCK 32

/* float -> fp16 bits, round to nearest even (overflow to inf, NaN kept
 * quiet), with one shift path for normal and subnormal results. Inline:
 * every cached K and V value goes through it. */
static inline uint16_t vx_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    const uint32_t sign = (u >> 16) & 0x8000, e = (u >> 23) & 0xff, man = u & 0x7fffff;
    if (e == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    if (e >= 143) return (uint16_t)(sign | 0x7c00);
    /* normal results (e >= 113): exponent field e - 112, the implicit bit
     * of m adds the 1; subnormal ones: m shifted right by 126 - e (at most
     * 31 here: anything below 2^-25 rounds to zero either way) */
    const uint32_t m = man | 0x800000;
    const uint32_t sh = e >= 113 ? 13 : (126 - e < 31 ? 126 - e : 31);
    uint32_t h = (e >= 113 ? (e - 113) << 10 : 0) + (m >> sh);
    const uint32_t rem = m & ((1u << sh) - 1), mid = 1u << (sh - 1);
    if (rem > mid || (rem == mid && (h & 1))) h++; /* a carry moves into the exponent */
    return (uint16_t)(sign | h);
}

#define VX_QGROUP 8
#define VX_Q_LAYOUT "rowgroup8" /* the metadata value naming this layout */

/* Bytes of one block of 32 (34 for Q8, 18 for Q4) and of its payload. */
size_t vx_q_block_bytes(int dtype);

/* Where row r of a [rows, cols] Q8/Q4 tensor keeps its blocks: block b's
 * scale at scale + b * stride, its payload at payload + b * stride. */
typedef struct {
    const uint8_t *scale, *payload;
    size_t stride;
} vx_qrow;
vx_qrow vx_q_row(int dtype, const void *data, int64_t rows, int64_t cols, int64_t r);
/* Elements [c0, c0+n) of such a row as float (exact). */
void vx_q_row_to_f32(int dtype, vx_qrow w, int64_t c0, int64_t n, float *out);
/* Reorder rows x cols of row-major blocks (rows of vx_quantize_row_*) into
 * the row-group layout. */
void vx_q_pack_rows(int dtype, const uint8_t *rowmajor, int64_t rows, int64_t cols, uint8_t *dst);

/* Bytes of one row of cols elements in dtype (cols % 32 == 0 for block formats). */
size_t vx_row_bytes(int dtype, int64_t cols);
/* Convert elements [c0, c0+n) of a row to float (Q8/Q4: a row of
 * consecutive blocks, as vx_quantize_row_* writes it). */
void vx_row_to_f32(int dtype, const void *row, int64_t c0, int64_t n, float *out);
/* Quantize one row of cols floats (cols % 32 == 0) into dst. */
void vx_quantize_row_q8(const float *x, int64_t cols, uint8_t *dst);
void vx_quantize_row_q4(const float *x, int64_t cols, uint8_t *dst);

/* Activations for the integer Q8/Q4 dot products (the backends' matmul_rows_q):
 * per block of 32 values x, amax = max |x|, d = amax / 127 and
 * q = round-half-even(x * (127 / amax)) in [-127, 127]; an all-zero block
 * gives d = 0 and q = 0, a block holding Inf or NaN gives d = NaN and q = 0
 * (so every output that sees it is NaN). q gets cols bytes, d and s cols/32
 * floats / int32s: s the sum of the block's q (0 for a zero or non-finite
 * block), computed here once for every kernel that needs it.
 * This function defines the bytes: a backend's quantize_act (engine.h) may
 * make them in wider vectors, and test_kernels checks that it gives these. */
void vx_quantize_act_q8(const float *x, int64_t cols, int8_t *q, float *d, int32_t *s);

/* The two factors that take a block of largest magnitude amax (finite and
 * above 0) to q = round(x * sc * inv), in that order. 127 / amax overflows
 * for amax below ~3.7e-37: such a block is scaled by 2^100 first (exact),
 * so q is still x * (127 / amax) rounded; for every other block sc = 1 and
 * x * sc is x. Shared by vx_quantize_act_q8 and the backends' quantize_act. */
static inline void vx_act_block_factors(float amax, float *sc, float *inv) {
    *sc = amax < 0x1p-100f ? 0x1p100f : 1.0f;
    *inv = 127.0f / (amax * *sc);
}
#endif
