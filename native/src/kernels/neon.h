/* neon.h - what neon.c shares with neon_i8mm.c: its float paths and its SDOT
 * Q8/Q4 kernels, which the SMMLA variant uses for one input and for the
 * rows outside its tiles. */
#ifndef VX_NEON_H
#define VX_NEON_H
#include "engine.h"

int vx_neon_matmul_rows(const vx_weight *W, const float *X, int n, int ldx, float *Y, int ldy,
                        int64_t r0, int64_t r1);
/* engine.h's matmul_rows_q with SDOT (FEAT_DotProd): only where the CPU has it */
int vx_neon_matmul_rows_q_dot(const vx_weight *W, const vx_qact *X, int n, float *Y, int ldy,
                              int64_t r0, int64_t r1);
void vx_neon_attn_scores(const float *const *q, int nq, const void *K, int f16, size_t ldk,
                         int64_t nk, int hd, float *S, size_t lds);
void vx_neon_attn_values(const float *P, size_t ldp, int nq, const void *V, int f16, size_t ldv,
                         int64_t nk, int hd, float *const *o);
#endif
