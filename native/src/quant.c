/* quant.c - dtype conversions and the Q8 / Q4 block formats (see quant.h). */
#include "quant.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "engine.h"
#include "vec4.h"

float vx_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float vx_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: renormalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

size_t vx_row_bytes(int dtype, int64_t cols) {
    switch (dtype) {
    case VX_DT_F32: return (size_t)cols * 4;
    case VX_DT_F16:
    case VX_DT_BF16: return (size_t)cols * 2;
    case VX_DT_Q8: return (size_t)(cols / VX_QBLOCK) * VX_Q8_BLOCK_BYTES;
    case VX_DT_Q4: return (size_t)(cols / VX_QBLOCK) * VX_Q4_BLOCK_BYTES;
    default: return 0;
    }
}

static uint16_t load_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

size_t vx_q_block_bytes(int dtype) {
    return dtype == VX_DT_Q8 ? VX_Q8_BLOCK_BYTES : dtype == VX_DT_Q4 ? VX_Q4_BLOCK_BYTES : 0;
}

vx_qrow vx_q_row(int dtype, const void *data, int64_t rows, int64_t cols, int64_t r) {
    const size_t bb = vx_q_block_bytes(dtype), nblk = (size_t)(cols / VX_QBLOCK);
    const int64_t g0 = r - r % VX_QGROUP;
    const size_t n = (size_t)(rows - g0 < VX_QGROUP ? rows - g0 : VX_QGROUP), k = (size_t)(r - g0);
    const uint8_t *group = (const uint8_t *)data + (size_t)g0 * nblk * bb;
    return (vx_qrow){group + 2 * k, group + 2 * n + k * (bb - 2), n * bb};
}

void vx_q_row_to_f32(int dtype, vx_qrow w, int64_t c0, int64_t n, float *out) {
    for (int64_t i = 0; i < n; i++) {
        const int64_t c = c0 + i, b = c / VX_QBLOCK, j = c % VX_QBLOCK;
        const float d = vx_f16_to_f32(load_u16(w.scale + (size_t)b * w.stride));
        const uint8_t *p = w.payload + (size_t)b * w.stride;
        if (dtype == VX_DT_Q8) out[i] = d * (float)(int8_t)p[j];
        else out[i] = d * (float)((j < 16 ? (p[j] & 0x0f) : (p[j - 16] >> 4)) - 8);
    }
}

void vx_q_pack_rows(int dtype, const uint8_t *rowmajor, int64_t rows, int64_t cols, uint8_t *dst) {
    const size_t bb = vx_q_block_bytes(dtype), rb = (size_t)(cols / VX_QBLOCK) * bb;
    for (int64_t r = 0; r < rows; r++) {
        const vx_qrow w = vx_q_row(dtype, dst, rows, cols, r);
        uint8_t *scale = dst + (w.scale - dst), *payload = dst + (w.payload - dst);
        for (int64_t b = 0; b < cols / VX_QBLOCK; b++) {
            const uint8_t *blk = rowmajor + (size_t)r * rb + (size_t)b * bb;
            memcpy(scale + (size_t)b * w.stride, blk, 2);
            memcpy(payload + (size_t)b * w.stride, blk + 2, bb - 2);
        }
    }
}

void vx_row_to_f32(int dtype, const void *row, int64_t c0, int64_t n, float *out) {
    const uint8_t *b = row;
    switch (dtype) {
    case VX_DT_F32: memcpy(out, b + c0 * 4, (size_t)n * 4); break;
    case VX_DT_BF16:
        for (int64_t i = 0; i < n; i++) out[i] = vx_bf16_to_f32(load_u16(b + (c0 + i) * 2));
        break;
    case VX_DT_F16:
        for (int64_t i = 0; i < n; i++) out[i] = vx_f16_to_f32(load_u16(b + (c0 + i) * 2));
        break;
    case VX_DT_Q8:
    case VX_DT_Q4: /* a row of blocks is a one-row tensor of the row-group layout */
        vx_q_row_to_f32(dtype, vx_q_row(dtype, row, 1, c0 + n, 0), c0, n, out);
        break;
    default: memset(out, 0, (size_t)n * 4); break;
    }
}

void vx_quantize_row_q8(const float *x, int64_t cols, uint8_t *dst) {
    for (int64_t b = 0; b < cols / VX_QBLOCK; b++, dst += VX_Q8_BLOCK_BYTES) {
        const float *v = x + b * VX_QBLOCK;
        float amax = 0;
        for (int j = 0; j < VX_QBLOCK; j++) amax = fmaxf(amax, fabsf(v[j]));
        uint16_t dh = vx_f32_to_f16(amax / 127.0f);
        float d = vx_f16_to_f32(dh), inv = d > 0 ? 1.0f / d : 0.0f;
        dst[0] = (uint8_t)(dh & 0xff);
        dst[1] = (uint8_t)(dh >> 8);
        for (int j = 0; j < VX_QBLOCK; j++) {
            long q = lrintf(v[j] * inv);
            q = q > 127 ? 127 : q < -127 ? -127 : q;
            dst[2 + j] = (uint8_t)(int8_t)q;
        }
    }
}

void vx_quantize_row_q4(const float *x, int64_t cols, uint8_t *dst) {
    for (int64_t b = 0; b < cols / VX_QBLOCK; b++, dst += VX_Q4_BLOCK_BYTES) {
        const float *v = x + b * VX_QBLOCK;
        /* scale from the signed extreme so it maps to -8 exactly (uses all 16 levels) */
        float ext = 0;
        for (int j = 0; j < VX_QBLOCK; j++)
            if (fabsf(v[j]) > fabsf(ext)) ext = v[j];
        uint16_t dh = vx_f32_to_f16(ext / -8.0f);
        float d = vx_f16_to_f32(dh), inv = d != 0 ? 1.0f / d : 0.0f;
        dst[0] = (uint8_t)(dh & 0xff);
        dst[1] = (uint8_t)(dh >> 8);
        for (int j = 0; j < 16; j++) {
            long lo = lrintf(v[j] * inv) + 8, hi = lrintf(v[j + 16] * inv) + 8;
            lo = lo < 0 ? 0 : lo > 15 ? 15 : lo;
            hi = hi < 0 ? 0 : hi > 15 ? 15 : hi;
            dst[2 + j] = (uint8_t)(lo | (hi << 4));
        }
    }
}

/* quant.c is compiled with -ffp-contract=off (CMakeLists.txt, scripts/aarch64-test.sh):
 * a fused x * inv + 1.5 * 2^23 (vx_round4) would round differently from the two-step
 * arithmetic written here, and on AArch64 the compiler would fuse it.
 *
 * In vec4.h's 4-lane vectors (SSE2, NEON): the decoder quantizes ~20k values
 * per layer and row before each matrix job (one row on the caller alone,
 * several on the pool: kernels.c), ~0.7 ms of a step as scalar code. Lane by
 * lane the operations are those of the scalar definition (engine.h): abs,
 * compare, max, multiply, add, subtract, clamp, truncate; each exact or one
 * IEEE rounding, so the bytes do not change. */
#define LANES 4
#define VECS (VX_QBLOCK / LANES)

void vx_quantize_act_q8(const float *x, int64_t cols, int8_t *q, float *d, int32_t *s) {
    const vx_i32x4 abs_bits = {0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff};
    for (int64_t b = 0; b < cols / VX_QBLOCK; b++) {
        vx_f32x4 v[VECS];
        for (int k = 0; k < VECS; k++) v[k] = vx_load4(x + b * VX_QBLOCK + k * LANES);
        int8_t *o = q + b * VX_QBLOCK;
        vx_f32x4 amax4 = vx_splat4(0.0f);
        vx_i32x4 finite4 = ~(vx_i32x4){0, 0, 0, 0};
        for (int k = 0; k < VECS; k++) {
            const vx_f32x4 a = (vx_f32x4)((vx_i32x4)v[k] & abs_bits);
            finite4 &= a <= vx_splat4(FLT_MAX); /* false for Inf and NaN */
            amax4 = vx_select4(a > amax4, a, amax4);
        }
        float amax = 0;
        int finite = 1;
        for (int l = 0; l < LANES; l++) {
            finite &= finite4[l] != 0;
            amax = amax4[l] > amax ? amax4[l] : amax;
        }
        if (!finite || amax == 0) {
            memset(o, 0, VX_QBLOCK);
            d[b] = finite ? 0.0f : NAN;
            s[b] = 0;
            continue;
        }
        float sc, inv;
        vx_act_block_factors(amax, &sc, &inv);
        d[b] = amax / 127.0f;
        vx_i32x4 sum4 = {0, 0, 0, 0};
        for (int k = 0; k < VECS; k++) {
            vx_f32x4 r = vx_round4((v[k] * vx_splat4(sc)) * vx_splat4(inv));
            r = vx_select4(r > vx_splat4(127.0f), vx_splat4(127.0f), r);
            r = vx_select4(r < vx_splat4(-127.0f), vx_splat4(-127.0f), r);
            const vx_i32x4 n = __builtin_convertvector(r, vx_i32x4);
            sum4 += n;
            for (int l = 0; l < LANES; l++) o[k * LANES + l] = (int8_t)n[l];
        }
        s[b] = (sum4[0] + sum4[1]) + (sum4[2] + sum4[3]);
    }
}
