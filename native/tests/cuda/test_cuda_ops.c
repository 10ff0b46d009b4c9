/* test_cuda_ops.c - every operation of the CUDA device (device.h) against
 * the CPU device on the portable backend, on random inputs; exits 77
 * (skipped, the reason on stdout) where there is no usable CUDA device.
 *
 * Tolerances, and why:
 *   matmul: |gpu - cpu| <= 1e-5 * S + 1e-7 per element, S = sum_c |w_c x_c|
 *     (+ |bias|). Both sum the same products in float in different orders
 *     (Q8/Q4: the same int8 activations and exact integer block sums, only
 *     the float sum over blocks differs); such sums differ by a few ulp of
 *     S (n * 2^-24 * S is the worst case, 1e-5 covers n = 160 blocks of
 *     terms with room), while a wrong row, block or nibble moves an element
 *     by a sizable fraction of S.
 *   RoPE, the KV cache store (fp16 and float) and add: bit for bit (the
 *     same table, non-fused multiplies, round-to-nearest-even halves).
 *   rmsnorm: 3e-7 relative (the double sum of squares in another order can
 *     move the float scale by an ulp).
 *   swiglu: 1e-6 relative (CUDA's expf is within 2 ulp, glibc's within 1).
 *   attention: 1e-5 of max |v| (a softmax-weighted sum of <= 16 rows in
 *     another order, float exp of the same scores).
 *   a decoder stack of 2 layers, 7 passes (the cache wraps): 1e-4 of max |h|.
 * Pass/fail is per element; the largest error of each check is printed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "quant.h"
#include "tiny_model.h"

#define SKIP 77

static tiny_model T;
static const vx_device *GPU;

static float *frand(int64_t n, float scale) {
    float *x = tiny_alloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) x[i] = tiny_nrand(&T) * scale;
    return x;
}

static vx_dbuf *up(const float *x, size_t n) {
    vx_dbuf *b = GPU->alloc(GPU, sizeof(float) * (n ? n : 1));
    CHECK(b != NULL);
    GPU->upload(GPU, b, 0, x, sizeof(float) * n);
    return b;
}

static float *down(const vx_dbuf *b, size_t n) {
    float *x = tiny_alloc(sizeof(float) * (n ? n : 1));
    GPU->download(GPU, x, b, 0, sizeof(float) * n);
    return x;
}

/* A [rows, cols] weight of dtype from random floats (owned by T). */
static vx_weight make_weight(int dtype, int64_t rows, int64_t cols) {
    float *f = frand(rows * cols, 1.0f / sqrtf((float)cols));
    const size_t bytes = vx_row_bytes(dtype, cols) * (size_t)rows;
    uint8_t *d = tiny_alloc(bytes);
    for (int64_t r = 0; r < rows; r++) {
        const float *x = f + r * cols;
        uint8_t *o = d + (size_t)r * vx_row_bytes(dtype, cols);
        for (int64_t c = 0; c < cols; c++) {
            uint32_t u;
            memcpy(&u, &x[c], 4);
            if (dtype == VX_DT_F32) memcpy(o + 4 * c, &x[c], 4);
            else if (dtype == VX_DT_F16) {
                uint16_t h = vx_f32_to_f16(x[c]);
                memcpy(o + 2 * c, &h, 2);
            } else if (dtype == VX_DT_BF16) {
                uint16_t h = (uint16_t)(u >> 16);
                memcpy(o + 2 * c, &h, 2);
            }
        }
        if (dtype == VX_DT_Q8) vx_quantize_row_q8(x, cols, o);
        if (dtype == VX_DT_Q4) vx_quantize_row_q4(x, cols, o);
    }
    free(f);
    if (vx_dt_is_block(dtype)) {
        uint8_t *packed = tiny_alloc(bytes);
        vx_q_pack_rows(dtype, d, rows, cols, packed);
        free(d);
        d = packed;
    }
    CHECK(T.n_weights < TINY_MAX_WEIGHTS);
    T.weights[T.n_weights++] = d;
    vx_weight w = {(vx_dtype)dtype, rows, cols, d};
    return w;
}

static void check_matmul(vx_model *m, int nw, const vx_weight *const *W, int n, int with_bias) {
    const int64_t cols = W[0]->cols;
    float *X = frand(n * cols, 1.0f);
    vx_dbuf *gx = up(X, (size_t)(n * cols));
    float *ycpu[VX_MATMUL_MAX], *bias[VX_MATMUL_MAX];
    vx_dbuf *gy[VX_MATMUL_MAX], *cy[VX_MATMUL_MAX];
    const float *cb[VX_MATMUL_MAX];
    for (int p = 0; p < nw; p++) {
        ycpu[p] = tiny_alloc(sizeof(float) * (size_t)(n * W[p]->rows));
        cy[p] = (vx_dbuf *)ycpu[p];
        gy[p] = GPU->alloc(GPU, sizeof(float) * (size_t)(n * W[p]->rows));
        bias[p] = with_bias ? frand(W[p]->rows, 0.1f) : NULL;
        cb[p] = bias[p];
    }
    vx_device_cpu()->matmul(m, nw, W, (const vx_dbuf *)X, n, cy, cb);
    GPU->matmul(m, nw, W, gx, n, gy, cb);
    float *w = tiny_alloc(sizeof(float) * (size_t)cols);
    for (int p = 0; p < nw; p++) {
        float *yg = down(gy[p], (size_t)(n * W[p]->rows));
        double worst = 0;
        for (int64_t r = 0; r < W[p]->rows; r++) {
            vx_weight_row(W[p], r, w);
            for (int i = 0; i < n; i++) {
                double S = bias[p] ? fabs(bias[p][r]) : 0;
                for (int64_t c = 0; c < cols; c++) S += fabs((double)w[c] * X[i * cols + c]);
                const double d = fabs((double)yg[i * W[p]->rows + r] - ycpu[p][i * W[p]->rows + r]);
                const double rel = d / (S + 1e-30);
                if (rel > worst) worst = rel;
                CHECK(d <= 1e-5 * S + 1e-7);
            }
        }
        printf("matmul %s [%lld x %lld] n=%d%s: max error %.2e of sum |w x|\n",
               vx_dtype_name(W[p]->dtype), (long long)W[p]->rows, (long long)cols, n,
               with_bias ? " +bias" : "", worst);
        free(yg);
        free(ycpu[p]);
        free(bias[p]);
        GPU->release(GPU, gy[p]);
    }
    free(w);
    free(X);
    GPU->release(GPU, gx);
}

static void check_rows(const char *what, const float *a, const float *b, size_t n, double rel_tol,
                       double scale) {
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        const double ref = scale > 0 ? scale : fabs((double)b[i]) + 1e-30;
        const double e = fabs((double)a[i] - b[i]) / ref;
        if (e > worst) worst = e;
        CHECK(e <= rel_tol);
    }
    printf("%s: max relative error %.2e (bound %.0e)\n", what, worst, rel_tol);
}

static void check_elementwise(vx_model *m) {
    const int n = 5, dim = 160;
    float *x = frand(n * dim, 2.0f), *w = frand(dim, 1.0f), *sc = frand(dim, 1.0f);
    float *out = tiny_alloc(sizeof(float) * n * dim);
    vx_dbuf *gx = up(x, n * dim), *go = GPU->alloc(GPU, sizeof(float) * n * dim);
    for (int with_scale = 0; with_scale < 2; with_scale++) {
        vx_device_cpu()->rmsnorm(m, (vx_dbuf *)out, (const vx_dbuf *)x, w,
                                 with_scale ? sc : NULL, n, dim, 1e-5);
        GPU->rmsnorm(m, go, gx, w, with_scale ? sc : NULL, n, dim, 1e-5);
        float *g = down(go, n * dim);
        check_rows(with_scale ? "rmsnorm * scale" : "rmsnorm", g, out, n * dim, 3e-7, 0);
        free(g);
    }
    float *h = frand(n * dim, 1.0f);
    vx_dbuf *gh = up(h, n * dim);
    vx_device_cpu()->add(m, (vx_dbuf *)h, (const vx_dbuf *)x, n * dim);
    GPU->add(m, gh, gx, n * dim);
    float *g = down(gh, n * dim);
    CHECK(memcmp(g, h, sizeof(float) * n * dim) == 0);
    free(g);
    vx_device_cpu()->swiglu(m, (vx_dbuf *)h, (const vx_dbuf *)x, n * dim);
    GPU->swiglu(m, gh, gx, n * dim);
    g = down(gh, n * dim);
    check_rows("swiglu", g, h, n * dim, 1e-6, 0);
    printf("add: bit for bit\n");
    free(g);
    free(x);
    free(w);
    free(sc);
    free(out);
    free(h);
    GPU->release(GPU, gx);
    GPU->release(GPU, go);
    GPU->release(GPU, gh);
}

/* RoPE + cache store for positions [0, end) in passes of `step` rows on both
 * devices (the cache wraps), comparing q, k and the whole cache each pass;
 * then attention of the last pass's rows. */
static void check_rope_attention(vx_model *m, int f16) {
    const vx_tf_params *p = &m->p.dec;
    const int qd = p->n_heads * p->head_dim, kvd = p->n_kv_heads * p->head_dim;
    const int64_t cap_max = p->window + 8, end = 45;
    const int step = 5;
    vx_kv kc, kg;
    CHECK(vx_kv_init(&kc, vx_device_cpu(), 1, kvd, cap_max, f16) == 0);
    CHECK(vx_kv_init(&kg, GPU, 1, kvd, cap_max, f16) == 0);
    CHECK(vx_kv_reserve(&kc, cap_max) == 0 && vx_kv_reserve(&kg, cap_max) == 0);
    const size_t cache_bytes = (size_t)cap_max * kvd * vx_kv_elem_bytes(&kc);
    for (int64_t pos0 = 0; pos0 < end; pos0 += step) {
        float *q = frand(step * qd, 1.0f), *k = frand(step * kvd, 1.0f),
              *v = frand(step * kvd, 1.0f), *cs = tiny_alloc(sizeof(float) * step * p->head_dim);
        vx_dbuf *gq = up(q, step * qd), *gk = up(k, step * kvd), *gv = up(v, step * kvd);
        vx_dbuf *gcs = GPU->alloc(GPU, sizeof(float) * step * p->head_dim);
        vx_device_cpu()->rope_table(m, (vx_dbuf *)cs, step, p->head_dim, pos0, p->rope_theta);
        GPU->rope_table(m, gcs, step, p->head_dim, pos0, p->rope_theta);
        vx_device_cpu()->rope_store(m, p, &kc, 0, (vx_dbuf *)q, (vx_dbuf *)k, (const vx_dbuf *)v,
                                    (const vx_dbuf *)cs, step, pos0);
        GPU->rope_store(m, p, &kg, 0, gq, gk, gv, gcs, step, pos0);
        float *q2 = down(gq, step * qd), *k2 = down(gk, step * kvd);
        CHECK(memcmp(q2, q, sizeof(float) * step * qd) == 0);
        CHECK(memcmp(k2, k, sizeof(float) * step * kvd) == 0);
        /* the slots written so far (the rest is uninitialised on both sides) */
        const int64_t written = pos0 + step < cap_max ? pos0 + step : cap_max;
        const size_t wbytes = (size_t)written * kvd * vx_kv_elem_bytes(&kc);
        uint8_t *cg = tiny_alloc(cache_bytes);
        GPU->download(GPU, cg, kg.k[0], 0, wbytes);
        CHECK(memcmp(cg, kc.k[0], wbytes) == 0);
        GPU->download(GPU, cg, kg.v[0], 0, wbytes);
        CHECK(memcmp(cg, kc.v[0], wbytes) == 0);
        free(cg);
        /* attention of these rows over what the caches hold */
        const size_t sc_cpu = vx_device_cpu()->attention_scratch(p, step, pos0);
        const size_t sc_gpu = GPU->attention_scratch(p, step, pos0);
        float *scr = tiny_alloc(sizeof(float) * (sc_cpu ? sc_cpu : 1));
        float *att = tiny_alloc(sizeof(float) * step * qd);
        vx_dbuf *gscr = GPU->alloc(GPU, sizeof(float) * (sc_gpu ? sc_gpu : 1));
        vx_dbuf *gatt = GPU->alloc(GPU, sizeof(float) * step * qd);
        vx_device_cpu()->attention(m, p, &kc, 0, (const vx_dbuf *)q, (vx_dbuf *)att,
                                   (vx_dbuf *)scr, step, pos0);
        GPU->attention(m, p, &kg, 0, gq, gatt, gscr, step, pos0);
        float *a2 = down(gatt, step * qd);
        double vmax = 0;
        for (int i = 0; i < step * kvd; i++) vmax = fmax(vmax, fabs(v[i]));
        char what[96];
        snprintf(what, sizeof what, "attention (%s cache, rows from %lld)", f16 ? "fp16" : "f32",
                 (long long)pos0);
        check_rows(what, a2, att, step * qd, 1e-5, 4.0 /* |v| <= ~4 for these inputs */);
        free(a2);
        free(scr);
        free(att);
        GPU->release(GPU, gscr);
        GPU->release(GPU, gatt);
        free(q2);
        free(k2);
        free(q);
        free(k);
        free(v);
        free(cs);
        GPU->release(GPU, gq);
        GPU->release(GPU, gk);
        GPU->release(GPU, gv);
        GPU->release(GPU, gcs);
    }
    printf("rope + cache store (%s): bit for bit over %lld positions\n", f16 ? "fp16" : "f32",
           (long long)end);
    vx_kv_free(&kc);
    vx_kv_free(&kg);
}

static void check_stack(tiny_model *t) {
    vx_model *m = t->m;
    const vx_tf_params *p = &m->p.dec;
    char err[512];
    const vx_device *gpu = vx_device_cuda_open(m, err, sizeof err);
    CHECK(gpu != NULL);
    float **ada = tiny_alloc(sizeof(float *) * p->n_layers);
    for (int l = 0; l < p->n_layers; l++) ada[l] = frand(p->dim, 0.1f);
    vx_kv kc, kg;
    vx_scratch sc = {0}, sg = {0};
    CHECK(vx_kv_init(&kc, vx_device_cpu(), p->n_layers, p->n_kv_heads * p->head_dim,
                     p->window + 8, 1) == 0);
    CHECK(vx_kv_init(&kg, gpu, p->n_layers, p->n_kv_heads * p->head_dim, p->window + 8, 1) == 0);
    const int ns[] = {7, 1, 8, 3, 8, 8, 1}; /* 36 positions: the cache of 24 wraps */
    int64_t pos = 0;
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        const int n = ns[k];
        float *h = frand(n * p->dim, 1.0f), *hg = tiny_alloc(sizeof(float) * n * p->dim);
        memcpy(hg, h, sizeof(float) * n * p->dim);
        m->dev = vx_device_cpu();
        CHECK(vx_stack_forward(m, p, m->dec_layers, ada, &kc, &sc, h, n, pos) == 0);
        m->dev = gpu;
        CHECK(vx_stack_forward(m, p, m->dec_layers, ada, &kg, &sg, hg, n, pos) == 0);
        double hmax = 0;
        for (int i = 0; i < n * p->dim; i++) hmax = fmax(hmax, fabs(h[i]));
        char what[64];
        snprintf(what, sizeof what, "decoder stack, %d rows from %lld", n, (long long)pos);
        check_rows(what, hg, h, (size_t)n * p->dim, 1e-4, hmax);
        pos += n;
        free(h);
        free(hg);
    }
    vx_kv_free(&kc);
    vx_kv_free(&kg);
    vx_scratch_free(&sc);
    vx_scratch_free(&sg);
    for (int l = 0; l < p->n_layers; l++) free(ada[l]);
    free(ada);
    m->dev = vx_device_cpu();
    vx_device_cuda_close(gpu);
}

int main(void) {
    char desc[160], why[320];
    if (vx_cuda_probe(0, desc, sizeof desc, why, sizeof why) != 0) {
        printf("SKIP: %s\n", why);
        return SKIP;
    }
    printf("device: %s\n", desc);
    tiny_model_init(&T, vx_backend_portable(), 1);
    vx_model *m = T.m;
    /* the first decoder layer's matrices become one test matrix per kind:
     * 75 rows (9 row groups and a short one), 160 columns (5 blocks: odd,
     * and not a multiple of Q4's 4 blocks per step); two of 64 x 256 */
    vx_layer *L = &m->dec_layers[0];
    L->wq = make_weight(VX_DT_F32, 75, 160);
    L->wk = make_weight(VX_DT_F16, 75, 160);
    L->wv = make_weight(VX_DT_BF16, 75, 160);
    L->wo = make_weight(VX_DT_Q8, 75, 160);
    L->w1 = make_weight(VX_DT_Q4, 75, 160);
    L->w2 = make_weight(VX_DT_Q8, 64, 256);
    L->w3 = make_weight(VX_DT_Q4, 64, 256);
    m->act = vx_actbuf_new(256);
    CHECK(m->act != NULL);
    char err[512];
    GPU = vx_device_cuda_open(m, err, sizeof err);
    if (!GPU) {
        printf("FAIL: the device probed usable but did not open: %s\n", err);
        return 1;
    }
    m->dev = GPU;
    const vx_weight *all[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w1, &L->w2, &L->w3};
    const int ns[] = {1, 3, 8, 11};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
        for (size_t j = 0; j < sizeof ns / sizeof ns[0]; j++)
            check_matmul(m, 1, &all[k], ns[j], (int)(j & 1));
    check_matmul(m, 3, all, 2, 1);     /* float kinds sharing X */
    check_matmul(m, 2, all + 3, 9, 0); /* Q8 and Q4 sharing X */
    check_elementwise(m);
    check_rope_attention(m, 1);
    check_rope_attention(m, 0);
    m->dev = vx_device_cpu();
    vx_device_cuda_close(GPU);
    tiny_model_free(&T);

    tiny_model t2;
    tiny_model_init(&t2, vx_backend_portable(), 1);
    T = t2; /* frand draws from T's generator */
    check_stack(&T);
    tiny_model_free(&T);
    return check_report("test_cuda_ops");
}
