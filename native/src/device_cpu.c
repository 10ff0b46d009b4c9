/* device_cpu.c - the CPU device (device.h): host memory, a vx_dbuf being a
 * host pointer, and a layer's operations on the model's thread pool with
 * the CPU kernel table m->be (portable, AVX2, NEON). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "device.h"
#include "quant.h"
#include "vec4.h"

/* A handle's host memory (the CPU device's handles are host pointers). */
static inline float *F(vx_dbuf *b) { return (float *)(void *)b; }
static inline const float *CF(const vx_dbuf *b) { return (const float *)(const void *)b; }
static inline uint8_t *B(vx_dbuf *b) { return (uint8_t *)(void *)b; }
static inline const uint8_t *CB(const vx_dbuf *b) { return (const uint8_t *)(const void *)b; }

/* ---- memory ---- */

static vx_dbuf *cpu_alloc(const vx_device *d, size_t bytes) {
    return (vx_dbuf *)malloc(bytes ? bytes : 1);
}

static void cpu_release(const vx_device *d, vx_dbuf *b) { free(b); }

static void cpu_upload(const vx_device *d, vx_dbuf *dst, size_t off, const void *src,
                       size_t bytes) {
    if (bytes) memcpy(B(dst) + off, src, bytes);
}

static void cpu_download(const vx_device *d, void *dst, const vx_dbuf *src, size_t off,
                         size_t bytes) {
    if (bytes) memcpy(dst, CB(src) + off, bytes);
}

static void cpu_copy(const vx_device *d, vx_dbuf *dst, size_t dst_off, const vx_dbuf *src,
                     size_t src_off, size_t bytes) {
    if (bytes) memcpy(B(dst) + dst_off, CB(src) + src_off, bytes);
}

/* ---- element-wise ---- */

static void cpu_rope_table(const vx_model *m, vx_dbuf *cs, int n, int head_dim, int64_t pos0,
                           double theta) {
    for (int i = 0; i < n; i++)
        vx_rope_table(F(cs) + (size_t)i * head_dim, head_dim, pos0 + i, theta);
}

static void cpu_rmsnorm(const vx_model *m, vx_dbuf *out, const vx_dbuf *x, const float *w,
                        const float *scale, int n, int dim, double eps) {
    for (int i = 0; i < n; i++) {
        float *o = F(out) + (size_t)i * dim;
        vx_rmsnorm(o, CF(x) + (size_t)i * dim, w, dim, eps);
        if (scale)
            for (int c = 0; c < dim; c++) o[c] *= scale[c];
    }
}

static void cpu_add(const vx_model *m, vx_dbuf *h, const vx_dbuf *x, size_t count) {
    float *hp = F(h);
    const float *xp = CF(x);
    for (size_t i = 0; i < count; i++) hp[i] += xp[i];
}

/* Four floats at v as a vector, lanes past the k < 4 given 0; and back. */
static inline vx_f32x4 load_part(const float *v, size_t k) {
    vx_f32x4 x = vx_splat4(0.0f);
    memcpy(&x, v, k * sizeof(float));
    return x;
}

static inline void store_part(float *v, vx_f32x4 x, size_t k) { memcpy(v, &x, k * sizeof(float)); }

/* e^(v[i] - sub) for i < count in place, four at a time (vec4.h's
 * vx_exp4, the tail padded through the same operations, so an element's
 * bits do not depend on where a loop starts). Returns the double sum of
 * the results, in order. */
static double exp_in_place(float *v, size_t count, float sub) {
    const vx_f32x4 s = vx_splat4(sub);
    double sum = 0;
    size_t i = 0;
    for (; i + 4 <= count; i += 4) {
        const vx_f32x4 e = vx_exp4(vx_load4(v + i) - s);
        store_part(v + i, e, 4);
        sum += e[0], sum += e[1], sum += e[2], sum += e[3];
    }
    if (i < count) {
        store_part(v + i, vx_exp4(load_part(v + i, count - i) - s), count - i);
        for (; i < count; i++) sum += v[i];
    }
    return sum;
}

/* h1 = silu(h1) * h3 on the pool, in the backend's vectors (its swiglu):
 * the exponential per element of [n, hidden] is the largest element-wise
 * cost of the feed-forward. On a Zen 4 core vx_exp4's four SSE2 lanes took
 * about half the time of libm's expf, and the x86 backends' eight AVX2
 * lanes 0.84-1.02 ns per element against 2.20-2.33 for the four. */
#define SWIGLU_TASK 4096 /* elements per task, a multiple of 8 */

typedef struct {
    const vx_backend *be;
    float *h1;
    const float *h3;
    size_t count;
} swiglu_job;

static void swiglu_task(void *ctx, int t) {
    swiglu_job *j = ctx;
    const size_t i0 = (size_t)t * SWIGLU_TASK;
    const size_t i1 = i0 + SWIGLU_TASK < j->count ? i0 + SWIGLU_TASK : j->count;
    j->be->swiglu(j->h1 + i0, j->h3 + i0, i1 - i0);
}

static void cpu_swiglu(const vx_model *m, vx_dbuf *h1, const vx_dbuf *h3, size_t count) {
    swiglu_job sj = {m->be, F(h1), CF(h3), count};
    vx_pool_run(m->pool, (int)((count + SWIGLU_TASK - 1) / SWIGLU_TASK), swiglu_task, &sj);
}

/* ---- matrices ---- */

static void cpu_matmul(const vx_model *m, int nw, const vx_weight *const *W, const vx_dbuf *X,
                       int n, vx_dbuf *const *Y, const float *const *bias) {
    float *y[VX_MATMUL_MAX];
    for (int p = 0; p < nw && p < VX_MATMUL_MAX; p++) y[p] = F(Y[p]);
    vx_matmul_multi(m, nw, W, CF(X), n, y, bias);
}

/* ---- RoPE and the KV cache ---- */

/* A row of floats -> fp16, the same bits as vx_f32_to_f16 per element: a
 * branch-free pass (which the compiler vectorizes) that is exact for normal,
 * infinite and NaN results, then vx_f32_to_f16 for the rare elements whose
 * result is subnormal or zero. */
static void f16_row(uint16_t *out, const float *x, int n) {
    int32_t tiny = 0;
    for (int c = 0; c < n; c++) {
        uint32_t u;
        memcpy(&u, &x[c], 4);
        const int32_t a = (int32_t)(u & 0x7fffffff);
        /* (e - 112) << 10 | man >> 13, rounded to nearest even: the low 13
         * bits plus 0xfff plus the kept lsb carry iff they round up */
        uint32_t h = ((uint32_t)a - 0x38000000u) >> 13;
        h += (((uint32_t)a & 0x1fff) + 0xfff + (h & 1)) >> 13;
        h = a >= 0x47800000 ? 0x7c00 : h;            /* |x| >= 65536: inf */
        h = a > 0x7f800000 ? 0x7e00 : h;             /* NaN */
        out[c] = (uint16_t)(((u >> 16) & 0x8000) | h);
        tiny |= a < 0x38800000;                      /* below 2^-14 */
    }
    if (tiny)
        for (int c = 0; c < n; c++)
            if ((fabsf(x[c]) < 0x1p-14f)) out[c] = vx_f32_to_f16(x[c]);
}

/* RoPE on row i of q and k, then k/v row i into its slot of the cache (as
 * fp16 or float): one pool task per row, since these run for every row of
 * every layer and cost as much as a few percent of the matrix work alone. */
typedef struct {
    const vx_tf_params *p;
    vx_kv *kv;
    int layer;
    float *q, *k;
    const float *v, *rope;
    int64_t pos0;
} qkv_job;

static void qkv_task(void *ctx, int i) {
    qkv_job *j = ctx;
    const vx_tf_params *p = j->p;
    vx_kv *kv = j->kv;
    const int qd = p->n_heads * p->head_dim, kvd = kv->kv_dim;
    const int64_t pos = j->pos0 + i;
    float *ki = j->k + (size_t)i * kvd;
    const float *vi = j->v + (size_t)i * kvd;
    const float *cs = j->rope + (size_t)i * p->head_dim;
    vx_rope_apply(j->q + (size_t)i * qd, p->n_heads, p->head_dim, cs);
    vx_rope_apply(ki, p->n_kv_heads, p->head_dim, cs);
    const size_t slot = (size_t)(pos % kv->cap_max);
    if (kv->f16) {
        uint16_t *kd = (uint16_t *)(void *)kv->k[j->layer] + slot * kvd;
        uint16_t *vd = (uint16_t *)(void *)kv->v[j->layer] + slot * kvd;
        f16_row(kd, ki, kvd);
        f16_row(vd, vi, kvd);
    } else {
        memcpy(F(kv->k[j->layer]) + slot * kvd, ki, sizeof(float) * (size_t)kvd);
        memcpy(F(kv->v[j->layer]) + slot * kvd, vi, sizeof(float) * (size_t)kvd);
    }
}

static void cpu_rope_store(const vx_model *m, const vx_tf_params *p, vx_kv *kv, int layer,
                           vx_dbuf *q, vx_dbuf *k, const vx_dbuf *v, const vx_dbuf *cs, int n,
                           int64_t pos0) {
    qkv_job qj = {p, kv, layer, F(q), F(k), CF(v), CF(cs), pos0};
    vx_pool_run(m->pool, n, qkv_task, &qj);
}

/* ---- attention ---- */

/* A task takes ATT_ROWS query rows x the query heads of one KV head, so each
 * key row read (and widened from fp16) serves up to ATT_ROWS x group queries.
 * The rows' windows differ by a few keys: scores are taken over their union
 * and each query's softmax puts exact zeros outside its own window, which
 * leaves its output bitwise what it would be alone (a zero weight adds +0). */
#define ATT_ROWS 4
#define ATT_MAXQ 16 /* queries per kernel call */

typedef struct {
    const vx_model *m;
    const vx_tf_params *p;
    const vx_kv *kv;
    int layer;
    const float *q;
    float *att, *scores;
    size_t scores_per_task; /* floats of scores one task may use */
    int64_t pos0;
    int n;
} att_job;

/* Queries per task and keys per query row of the score buffer. */
static int att_queries(const vx_tf_params *p) {
    int q = ATT_ROWS * (p->n_heads / p->n_kv_heads);
    return q < ATT_MAXQ ? q : ATT_MAXQ;
}

static int att_tasks(const vx_tf_params *p, int n) {
    return (n + ATT_ROWS - 1) / ATT_ROWS * p->n_kv_heads;
}

/* Floats of scores per task: its queries x the union of its rows' windows. */
static size_t att_per_task(const vx_tf_params *p, int n, int64_t pos0) {
    const int64_t keys = (p->window < pos0 + n ? p->window : pos0 + n) + ATT_ROWS - 1;
    return (size_t)att_queries(p) * (size_t)keys;
}

static size_t cpu_attention_scratch(const vx_tf_params *p, int n, int64_t pos0) {
    return (size_t)att_tasks(p, n) * att_per_task(p, n, pos0);
}

static void att_task(void *ctx, int task) {
    att_job *j = ctx;
    const vx_tf_params *p = j->p;
    const vx_backend *be = j->m->be;
    const int hd = p->head_dim, kvd = p->n_kv_heads * hd, grp = p->n_heads / p->n_kv_heads;
    const int row_groups = (j->n + ATT_ROWS - 1) / ATT_ROWS;
    /* a KV head's row groups are consecutive tasks, so its cached slices are
     * read from memory once and then found in cache; its query heads are
     * consecutive too and share them */
    const int g = task / row_groups;
    const int i0 = task % row_groups * ATT_ROWS;
    const int i1 = i0 + ATT_ROWS < j->n ? i0 + ATT_ROWS : j->n;
    const int64_t cap = j->kv->cap_max;
    const size_t es = vx_kv_elem_bytes(j->kv);
    const int f16 = j->kv->f16;
    const float scale = 1.0f / sqrtf((float)hd);

    /* union of the rows' windows [a, b] and its place in the rolling cache */
    int64_t a = j->pos0 + i0 - p->window + 1;
    if (a < 0) a = 0;
    const int64_t b = j->pos0 + i1 - 1, nk = b - a + 1;
    const int64_t s0 = a % cap, len0 = nk < cap - s0 ? nk : cap - s0;
    const uint8_t *K = CB(j->kv->k[j->layer]) + (size_t)g * hd * es;
    const uint8_t *V = CB(j->kv->v[j->layer]) + (size_t)g * hd * es;
    float *S = j->scores + (size_t)task * j->scores_per_task;

    const int total = (i1 - i0) * grp, maxq = att_queries(p);
    for (int q0 = 0; q0 < total; q0 += maxq) {
        const int nq = total - q0 < maxq ? total - q0 : maxq;
        const float *qp[ATT_MAXQ];
        float *op[ATT_MAXQ];
        for (int k = 0; k < nq; k++) {
            int i = i0 + (q0 + k) / grp, h = g * grp + (q0 + k) % grp;
            qp[k] = j->q + (size_t)i * p->n_heads * hd + (size_t)h * hd;
            op[k] = j->att + (size_t)i * p->n_heads * hd + (size_t)h * hd;
            memset(op[k], 0, sizeof(float) * (size_t)hd);
        }
        be->attn_scores(qp, nq, K + (size_t)s0 * kvd * es, f16, (size_t)kvd, len0, hd, S, (size_t)nk);
        if (len0 < nk)
            be->attn_scores(qp, nq, K, f16, (size_t)kvd, nk - len0, hd, S + len0, (size_t)nk);
        for (int k = 0; k < nq; k++) {
            int64_t pos = j->pos0 + i0 + (q0 + k) / grp;
            int64_t lo = pos - p->window + 1 < a ? 0 : pos - p->window + 1 - a, hi = pos - a;
            float *sc = S + (size_t)k * nk, mx = -INFINITY;
            for (int64_t t = lo; t <= hi; t++) {
                sc[t] *= scale;
                if (sc[t] > mx) mx = sc[t];
            }
            const double sum = exp_in_place(sc + lo, (size_t)(hi - lo + 1), mx);
            float inv = (float)(1.0 / sum);
            for (int64_t t = 0; t < lo; t++) sc[t] = 0.0f;
            for (int64_t t = lo; t <= hi; t++) sc[t] *= inv;
            for (int64_t t = hi + 1; t < nk; t++) sc[t] = 0.0f;
        }
        be->attn_values(S, (size_t)nk, nq, V + (size_t)s0 * kvd * es, f16, (size_t)kvd, len0, hd, op);
        if (len0 < nk)
            be->attn_values(S + len0, (size_t)nk, nq, V, f16, (size_t)kvd, nk - len0, hd, op);
    }
}

static void cpu_attention(const vx_model *m, const vx_tf_params *p, const vx_kv *kv, int layer,
                          const vx_dbuf *q, vx_dbuf *att, vx_dbuf *scratch, int n, int64_t pos0) {
    att_job aj = {m, p, kv, layer, CF(q), F(att), F(scratch), att_per_task(p, n, pos0), pos0, n};
    vx_pool_run(m->pool, att_tasks(p, n), att_task, &aj);
}

static const vx_device cpu = {
    .name = "cpu",
    .host_visible = 1,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .upload = cpu_upload,
    .download = cpu_download,
    .copy = cpu_copy,
    .rope_table = cpu_rope_table,
    .rmsnorm = cpu_rmsnorm,
    .matmul = cpu_matmul,
    .rope_store = cpu_rope_store,
    .attention_scratch = cpu_attention_scratch,
    .attention = cpu_attention,
    .add = cpu_add,
    .swiglu = cpu_swiglu,
};

const vx_device *vx_device_cpu(void) { return &cpu; }
