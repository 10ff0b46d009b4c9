/* engine.h - internal structures of the voxd engine (not installed). */
#ifndef VX_ENGINE_H
#define VX_ENGINE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"
#include "tokenizer.h"
#include "voxd_engine.h"

/* ---- parameters (params.json) ---- */

typedef struct {
    int dim, n_layers, n_heads, n_kv_heads, head_dim, hidden_dim;
    int window;
    double norm_eps, rope_theta;
} vx_tf_params; /* one transformer stack */

typedef struct {
    vx_tf_params dec;
    vx_tf_params enc;
    int vocab_size;
    int ada_dim;        /* ada_rms_norm_t_cond_dim */
    int n_mels, sample_rate, hop, window_size;
    double log_mel_max;
    int downsample;
} vx_params;

int vx_params_load(const char *path, vx_params *p, char *err, size_t err_len);

/* ---- weights ---- */

/* Memory the engine needs beside its weights: the KV caches and activations
 * (a few hundred MB at the largest windows). The CUDA device takes the
 * weights only where they leave this much of its memory free; the host's
 * copy of them (vx_st_into_memory) leaves twice this (model.c). */
#define VX_RUNTIME_BYTES ((int64_t)512 << 20)

/* A 2-D weight [rows, cols] viewed in place inside the file's bytes. */
typedef struct {
    vx_dtype dtype;
    int64_t rows, cols;
    const void *data;
} vx_weight;

typedef struct {
    vx_weight wq, wk, wv, wo, w1, w2, w3;
    float *bq, *bv, *bo, *b2;     /* encoder only (NULL in the decoder) */
    float *attn_norm, *ffn_norm;
    vx_weight ada_down, ada_up;   /* decoder only */
} vx_layer;

/* n rows of activations quantized for the Q8/Q4 dot products by
 * vx_quantize_act_q8 (quant.h), cols wide (nblk = cols / 32 blocks): row i
 * is q[i * cols ..] (int8), d[i * nblk ..] (block scales) and
 * s[i * nblk ..] (block sums: the sum of a block's 32 int8 values, which
 * kernels that multiply unsigned weights subtract as their correction). */
typedef struct {
    const int8_t *q;
    const float *d;
    const int32_t *s;
} vx_qact;

/* Every weight dtype a model may hold (bit per vx_dtype): what the CPU
 * backends handle. */
#define VX_WEIGHT_DTYPES                                                                       \
    ((1u << VX_DT_F32) | (1u << VX_DT_F16) | (1u << VX_DT_BF16) | (1u << VX_DT_Q8) |           \
     (1u << VX_DT_Q4))

typedef struct vx_pool vx_pool;
typedef struct vx_device vx_device; /* device.h */
typedef struct vx_dbuf vx_dbuf;     /* memory owned by a device */
typedef struct vx_actbuf vx_actbuf;
typedef struct vx_backend vx_backend;

struct vx_model {
    char *dir;
    vx_params p;
    vx_safetensors st;
    vx_tokenizer tok;
    int bos_id, eos_id, pad_id;

    vx_weight conv0, conv1;        /* [enc_dim, n_mels*3], [enc_dim, enc_dim*3] */
    float *conv0_b, *conv1_b;
    vx_layer *enc_layers;
    float *enc_norm;
    vx_weight adapt0, adapt2;      /* [dim, enc_dim*ds], [dim, dim] */
    vx_weight tok_emb;             /* [vocab, dim]; also the output head */
    vx_layer *dec_layers;
    float *dec_norm;

    /* mel front end tables */
    int n_fft, n_freq;
    double *hann;                  /* [n_fft] */
    double *dft_cos, *dft_sin;     /* [n_freq, n_fft] */
    float *mel_fb;                 /* [n_mels, n_freq] */

    const vx_device *dev; /* runs the transformer stacks (device.h) */
    const vx_backend *be; /* the CPU kernels */
    vx_pool *pool;
    vx_actbuf *act; /* NULL when no weight is Q8/Q4 */
    int n_threads;
    int64_t weight_bytes;
    char dev_note[384]; /* why m->dev (model.c's device choice) */
    char mem_note[192]; /* where the weights' bytes live (vx_st_into_memory) */
};

/* ---- CPU kernel table (kernels.c picks one at load; the CPU device, device_cpu.c,
 * runs the stacks on it) ---- */

struct vx_backend {
    const char *name;
    /* Y[i*ldy + r] = sum_c X[i*ldx + c] * W[r, c] for i < n, r0 <= r < r1.
     * Each output element must be computed in an order that does not depend on
     * n, r0 or r1, so results never depend on batching or threading. */
    int (*matmul_rows)(const vx_weight *W, const float *X, int n, int ldx, float *Y, int ldy,
                       int64_t r0, int64_t r1);
    /* Q8 / Q4 weights, with X already quantized by vx_quantize_act_q8 (its
     * n rows: X->q, X->d, X->s).
     * Y[i*ldy + r] for i < n, r0 <= r < r1 is defined exactly as:
     *   per block b of 32 columns, the int32 isum_b, the sum of the 32
     *   products w[e] * xq[e] (w = q for Q8, nibble - 8 for Q4), then one
     *   float chain over the blocks in order
     *     acc = fmaf((float)isum_b, dw_b * dx_b, acc)   (acc from 0, dw_b * dx_b
     *   one float multiply), and Y = acc.
     * One integer sum per block (not per 4-element lane) lets a kernel put
     * output rows in its vector lanes: the conversion and FMA then cost one
     * instruction per vector of rows and block, not one per 4 weights, which
     * is what kept the int8 encoder near the fp32 FMA rate. Every backend
     * gives these bits, whatever n, r0 or r1. */
    int (*matmul_rows_q)(const vx_weight *W, const vx_qact *X, int n, float *Y, int ldy,
                         int64_t r0, int64_t r1);
    /* Which dtypes the backend handles (bit per vx_dtype): F32/F16/BF16 go
     * to matmul_rows, Q8/Q4 to matmul_rows_q; VX_WEIGHT_DTYPES is all of them. */
    unsigned dtypes;
    /* Attention over a run of nk cache rows (f16: uint16_t halves, else float),
     * row t at K + t * ldk elements; q[i] / o[i] are hd floats.
     *   scores: S[i * lds + t] = q[i] . k_t, one 8-lane chain over c (lane c % 8)
     *           reduced in a fixed order;
     *   values: o[i][c] += sum_t P[i * ldp + t] * v_t[c], accumulated in t order.
     * Each element's arithmetic must not depend on nq or nk, so a query gives
     * the same bits alone or in a tile, and a run may be split in two (the
     * rolling cache wraps) without changing anything. */
    void (*attn_scores)(const float *const *q, int nq, const void *K, int f16, size_t ldk,
                        int64_t nk, int hd, float *S, size_t lds);
    void (*attn_values)(const float *P, size_t ldp, int nq, const void *V, int f16, size_t ldv,
                        int64_t nk, int hd, float *const *o);
    /* The activations matmul_rows_q takes: vx_quantize_act_q8's contract
     * and its bytes exactly (test_kernels compares them), in the backend's
     * vectors; vx_quantize_act_q8 itself where the 4-lane code is as fast. */
    void (*quantize_act)(const float *x, int64_t cols, int8_t *q, float *d, int32_t *s);
    /* h1[i] = silu(h1[i]) * h3[i] for i < count: vx_swiglu4's bits
     * (elementwise.c), in the backend's vectors. */
    void (*swiglu)(float *h1, const float *h3, size_t count);
};

/* elementwise.c: the portable and NEON backends' swiglu, and its definition. */
void vx_swiglu4(float *h1, const float *h3, size_t count);

/* attn_values for columns [c0, c1) one element at a time with fmaf: the
 * bits of an FMA lane, for the SIMD backends' columns past their last 8. */
void vx_attn_values_fma_cols(const float *P, size_t ldp, int nq, const void *V, int f16,
                             size_t ldv, int64_t nk, int c0, int c1, float *const *o);

const vx_backend *vx_backend_portable(void);
const vx_backend *vx_backend_avx2(void);   /* NULL where not compiled / CPU lacks it */
/* AVX2 with vpdpbusd in the Q8/Q4 kernels (VEX AVX-VNNI / EVEX AVX512-VNNI) */
const vx_backend *vx_backend_avxvnni(void);
const vx_backend *vx_backend_avx512vnni(void);
const vx_backend *vx_backend_neon(void);
const vx_backend *vx_backend_neon_i8mm(void); /* NEON with SMMLA in the Q8/Q4 kernels */
const vx_backend *vx_backend_select(const char *name, char *err, size_t err_len);

/* Thread pool: run fn(ctx, task) for task in [0, n_tasks) on all threads. */
vx_pool *vx_pool_new(int n_threads);
void vx_pool_free(vx_pool *p);
int vx_pool_size(const vx_pool *p);
void vx_pool_run(vx_pool *p, int n_tasks, void (*fn)(void *ctx, int task), void *ctx);

/* Buffer for the int8-quantized activations of vx_matmul on Q8/Q4 weights:
 * room for BATCH rows of max_cols; a mutex makes streams that share a model
 * take turns with it. Owned by the model (made at load, so running out of
 * memory is a load error rather than a failure inside vx_matmul). */
vx_actbuf *vx_actbuf_new(int64_t max_cols);
void vx_actbuf_free(vx_actbuf *a);

/* Threaded Y[n, W.rows] = X[n, W.cols] W^T (+ bias). A Q8/Q4 W needs m->act
 * with max_cols >= W.cols (else Y is set to NaN: a model built by hand
 * without one is a programming error, and NaN makes it loud). */
void vx_matmul(const vx_model *m, const vx_weight *W, const float *X, int n, float *Y,
               const float *bias);
/* The same for up to VX_MATMUL_MAX weights that read the same X (e.g. the
 * query, key and value projections): Y[p] = X W[p]^T (+ bias[p], which may
 * be NULL), run as one pool job with X quantized once, which saves a
 * dispatch and its wait per weight. Weights of different widths or kinds
 * (float vs Q8/Q4) are simply run one after another. */
#define VX_MATMUL_MAX 3
void vx_matmul_multi(const vx_model *m, int nw, const vx_weight *const *W, const float *X, int n,
                     float *const *Y, const float *const *bias);
/* Row r of an embedding-like weight, converted to float. */
void vx_weight_row(const vx_weight *W, int64_t r, float *out);

/* element-wise helpers (kernels.c) */
void vx_rmsnorm(float *out, const float *x, const float *w, int n, double eps);
/* RoPE in two steps, since every layer rotates by the same angles: cs gets
 * head_dim/2 (cos, sin) pairs for position pos; then each head's pairs
 * (x[2j], x[2j+1]) are rotated by pair j. */
void vx_rope_table(float *cs, int head_dim, int64_t pos, double theta);
void vx_rope_apply(float *x, int n_heads, int head_dim, const float *cs);
float vx_gelu(float x);
/* Greedy decoding's pick: the lowest index of the largest value. NaNs never
 * win, except that a NaN at 0 gives 0 (as a "v[i] > v[best]" scan does). */
int64_t vx_argmax(const float *v, int64_t n);
float vx_bf16_to_f32(uint16_t h);
float vx_f16_to_f32(uint16_t h);

/* ---- transformer stack shared by encoder and decoder ---- */

/* Rolling KV cache of one stack: slot = pos % cap_max, grown lazily, in
 * the memory of a device. Values are fp16 by default (half the memory and
 * the attention's reads); float32 where a stream asks for it (exact checks
 * against the reference). */
typedef struct vx_kv {
    const vx_device *dev;
    int n_layers, kv_dim;
    int f16;           /* elements are uint16_t halves, else float */
    int64_t cap;       /* slots allocated now */
    int64_t cap_max;   /* window + largest batch */
    vx_dbuf **k, **v;  /* [n_layers] buffers of [cap * kv_dim] elements */
} vx_kv;

int vx_kv_init(vx_kv *kv, const vx_device *dev, int n_layers, int kv_dim, int64_t cap_max,
               int f16);
int vx_kv_reserve(vx_kv *kv, int64_t pos_end); /* make slots for positions < pos_end */
void vx_kv_free(vx_kv *kv);
/* Copy every slot src holds into dst (same geometry); dst keeps any extra slots. */
int vx_kv_copy(vx_kv *dst, const vx_kv *src);
/* Bytes of one cache element. */
static inline size_t vx_kv_elem_bytes(const vx_kv *kv) { return kv->f16 ? 2 : 4; }

/* A stack pass's activations, in the memory of the device that first
 * reserves them (vx_stack_reserve). */
typedef struct {
    const vx_device *dev;
    vx_dbuf *x; /* [rows, dim]: the residual stream, the stack's input and output */
    vx_dbuf *xn, *q, *k, *v, *att, *h1, *h3, *scores;
    vx_dbuf *rope; /* [rows, head_dim]: (cos, sin) pairs of each row's position */
    vx_dbuf *out;  /* a stage's output after the stack (the decoder's logits) */
    int cap_rows;
    size_t cap_scores; /* floats of attention scratch (the device sizes them) */
    size_t cap_out;    /* floats of out */
} vx_scratch;

void vx_scratch_free(vx_scratch *s);
/* Room for out_floats floats in s->out. 0 or -1. */
int vx_scratch_reserve_out(vx_scratch *s, const vx_device *dev, size_t out_floats);

/* The transformer stack on m->dev, in two steps so that a stage can keep
 * its rows on the device: vx_stack_reserve makes room in s and kv for n
 * positions from pos0 (0, or -1 when memory runs out or n is more than the
 * cache can take), then vx_stack_layers runs them through every layer, the
 * rows being s->x [n, dim] in and out. ada: per-layer scale vectors (1 + s)
 * or NULL. */
int vx_stack_reserve(const vx_model *m, const vx_tf_params *p, vx_kv *kv, vx_scratch *s, int n,
                     int64_t pos0);
void vx_stack_layers(const vx_model *m, const vx_tf_params *p, const vx_layer *layers,
                     float **ada, vx_kv *kv, vx_scratch *s, int n, int64_t pos0);
/* Both, with host rows h [n, dim] in and out. */
int vx_stack_forward(const vx_model *m, const vx_tf_params *p, const vx_layer *layers,
                     float **ada, vx_kv *kv, vx_scratch *s, float *h, int n, int64_t pos0);

/* ---- mel ---- */
int vx_mel_tables_init(vx_model *m);
void vx_mel_tables_free(vx_model *m);
/* log-mel of one frame from n_fft samples (already windowed region). */
void vx_mel_frame(const vx_model *m, const float *samples, float *out);

#endif
