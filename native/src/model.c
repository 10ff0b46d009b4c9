/* model.c - load a model directory: params.json, the mapped safetensors
 * weights (used in place, never copied whole) and tekken.json; every tensor's
 * shape is checked against params.json so that a mismatched checkpoint fails
 * at load with a message instead of computing garbage. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "device.h"
#include "quant.h"
#include "util.h"

#define E "mm_streams_embeddings.embedding_module."

typedef struct {
    vx_model *m;
    const char *file; /* for messages */
    char *err;
    size_t err_len;
    vx_status status; /* of the failure in err */
    int64_t q_cols; /* widest Q8/Q4 matrix: sizes the activation buffer */
} binder;

/* "FILE: message" into b->err with the status the load returns for it. */
static int fail_status(binder *b, vx_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail_status(binder *b, vx_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vx_verrf(b->err, b->err_len, b->file, fmt, ap);
    va_end(ap);
    b->status = st;
    return -1;
}
#define fail(b, ...) fail_status(b, VX_ERR_FORMAT, __VA_ARGS__)
#define fail_shape(b, ...) fail_status(b, VX_ERR_SHAPE, __VA_ARGS__)

static const vx_st_tensor *find_shaped(binder *b, const char *name, int ndim, const int64_t *dims) {
    const vx_st_tensor *t = vx_st_find(&b->m->st, name);
    if (!t) {
        fail(b, "missing tensor '%s'", name);
        return NULL;
    }
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == dims[i];
    if (!ok) {
        char got[96], want[96];
        vx_fmt_shape(got, sizeof got, t->shape, t->ndim);
        vx_fmt_shape(want, sizeof want, dims, ndim);
        fail_shape(b, "tensor '%s' has shape %s but params.json implies %s", name, got, want);
        return NULL;
    }
    return t;
}

/* A matrix [rows, cols] (a 3-D conv weight is viewed as [out, in*k]). */
static int bind_matrix(binder *b, vx_weight *w, int ndim, const int64_t *dims, const char *fmt, ...) {
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const vx_st_tensor *t = find_shaped(b, name, ndim, dims);
    if (!t) return -1;
    if (t->dtype != VX_DT_BF16 && t->dtype != VX_DT_F32 && t->dtype != VX_DT_F16 &&
        !vx_dt_is_block(t->dtype))
        return fail_shape(b, "tensor '%s' has dtype %s; weights must be BF16, F16, F32, Q8 or Q4",
                          name, vx_dtype_name(t->dtype));
    if (vx_dt_is_block(t->dtype)) {
        const char *lay = b->m->st.q_layout;
        if (ndim != 2)
            return fail(b, "tensor '%s' is %s with %d dims; only 2-D matrices may be Q8/Q4", name,
                        vx_dtype_name(t->dtype), ndim);
        if (!lay || strcmp(lay, VX_Q_LAYOUT) != 0)
            return fail(b,
                        "tensor '%s' is %s in an older voxd block layout (the file's metadata "
                        "has no \"voxd_q_layout\": \"%s\"); run `voxd quantize` again from "
                        "the BF16 model",
                        name, vx_dtype_name(t->dtype), VX_Q_LAYOUT);
    }
    w->dtype = t->dtype;
    w->rows = dims[0];
    w->cols = 1;
    for (int i = 1; i < ndim; i++) w->cols *= dims[i];
    w->data = t->data;
    if (vx_row_bytes(w->dtype, w->cols) * (size_t)w->rows != t->nbytes)
        return fail_shape(b, "tensor '%s': %zu bytes do not fit shape and dtype %s", name,
                          t->nbytes, vx_dtype_name(t->dtype));
    b->m->weight_bytes += (int64_t)t->nbytes;
    if (vx_dt_is_block(w->dtype) && w->cols > b->q_cols) b->q_cols = w->cols;
    return 0;
}

/* A vector of n values, copied to float (norms and biases are small). */
static float *bind_vector(binder *b, int64_t n, const char *fmt, ...) {
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const vx_st_tensor *t = find_shaped(b, name, 1, &n);
    if (!t) return NULL;
    if (t->dtype != VX_DT_BF16 && t->dtype != VX_DT_F32 && t->dtype != VX_DT_F16) {
        fail_shape(b, "tensor '%s' has dtype %s; vectors must be BF16, F16 or F32", name,
                   vx_dtype_name(t->dtype));
        return NULL;
    }
    float *out = malloc(sizeof(float) * (size_t)n);
    if (!out) {
        fail_status(b, VX_ERR_NOMEM, "out of memory");
        return NULL;
    }
    vx_row_to_f32(t->dtype, t->data, 0, n, out);
    b->m->weight_bytes += (int64_t)t->nbytes;
    return out;
}

static int bind_stack(binder *b, const vx_tf_params *p, vx_layer *layers, const char *prefix,
                      int encoder, int ada_dim) {
    const int64_t dim = p->dim, qd = (int64_t)p->n_heads * p->head_dim,
                  kvd = (int64_t)p->n_kv_heads * p->head_dim, hid = p->hidden_dim;
    for (int i = 0; i < p->n_layers; i++) {
        vx_layer *L = &layers[i];
        const char *pre = prefix;
        if (bind_matrix(b, &L->wq, 2, (int64_t[]){qd, dim}, "%slayers.%d.attention.wq.weight", pre, i) ||
            bind_matrix(b, &L->wk, 2, (int64_t[]){kvd, dim}, "%slayers.%d.attention.wk.weight", pre, i) ||
            bind_matrix(b, &L->wv, 2, (int64_t[]){kvd, dim}, "%slayers.%d.attention.wv.weight", pre, i) ||
            bind_matrix(b, &L->wo, 2, (int64_t[]){dim, qd}, "%slayers.%d.attention.wo.weight", pre, i) ||
            bind_matrix(b, &L->w1, 2, (int64_t[]){hid, dim}, "%slayers.%d.feed_forward.w1.weight", pre, i) ||
            bind_matrix(b, &L->w3, 2, (int64_t[]){hid, dim}, "%slayers.%d.feed_forward.w3.weight", pre, i) ||
            bind_matrix(b, &L->w2, 2, (int64_t[]){dim, hid}, "%slayers.%d.feed_forward.w2.weight", pre, i))
            return -1;
        if (!(L->attn_norm = bind_vector(b, dim, "%slayers.%d.attention_norm.weight", pre, i)) ||
            !(L->ffn_norm = bind_vector(b, dim, "%slayers.%d.ffn_norm.weight", pre, i)))
            return -1;
        if (encoder) {
            if (!(L->bq = bind_vector(b, qd, "%slayers.%d.attention.wq.bias", pre, i)) ||
                !(L->bv = bind_vector(b, kvd, "%slayers.%d.attention.wv.bias", pre, i)) ||
                !(L->bo = bind_vector(b, dim, "%slayers.%d.attention.wo.bias", pre, i)) ||
                !(L->b2 = bind_vector(b, dim, "%slayers.%d.feed_forward.w2.bias", pre, i)))
                return -1;
        } else {
            if (bind_matrix(b, &L->ada_down, 2, (int64_t[]){ada_dim, dim},
                            "%slayers.%d.ada_rms_norm_t_cond.0.weight", pre, i) ||
                bind_matrix(b, &L->ada_up, 2, (int64_t[]){dim, ada_dim},
                            "%slayers.%d.ada_rms_norm_t_cond.2.weight", pre, i))
                return -1;
        }
    }
    return 0;
}

static void free_layers(vx_layer *layers, int n) {
    if (!layers) return;
    for (int i = 0; i < n; i++) {
        free(layers[i].bq);
        free(layers[i].bv);
        free(layers[i].bo);
        free(layers[i].b2);
        free(layers[i].attn_norm);
        free(layers[i].ffn_norm);
    }
    free(layers);
}

void vx_model_free(vx_model *m) {
    if (!m) return;
#ifdef VX_HAVE_CUDA
    if (m->dev && m->dev != vx_device_cpu()) vx_device_cuda_close(m->dev);
#endif
    vx_pool_free(m->pool);
    vx_actbuf_free(m->act);
    free_layers(m->enc_layers, m->p.enc.n_layers);
    free_layers(m->dec_layers, m->p.dec.n_layers);
    free(m->conv0_b);
    free(m->conv1_b);
    free(m->enc_norm);
    free(m->dec_norm);
    vx_mel_tables_free(m);
    vx_tok_free(&m->tok);
    vx_st_close(&m->st);
    free(m->dir);
    free(m);
}

static int bind_all(binder *b) {
    vx_model *m = b->m;
    const vx_params *p = &m->p;
    const int64_t ed = p->enc.dim, d = p->dec.dim;
    m->enc_layers = calloc((size_t)p->enc.n_layers, sizeof(vx_layer));
    m->dec_layers = calloc((size_t)p->dec.n_layers, sizeof(vx_layer));
    if (!m->enc_layers || !m->dec_layers) return fail_status(b, VX_ERR_NOMEM, "out of memory");
    if (bind_matrix(b, &m->conv0, 3, (int64_t[]){ed, p->n_mels, 3},
                    E "whisper_encoder.conv_layers.0.conv.weight") ||
        bind_matrix(b, &m->conv1, 3, (int64_t[]){ed, ed, 3},
                    E "whisper_encoder.conv_layers.1.conv.weight") ||
        !(m->conv0_b = bind_vector(b, ed, E "whisper_encoder.conv_layers.0.conv.bias")) ||
        !(m->conv1_b = bind_vector(b, ed, E "whisper_encoder.conv_layers.1.conv.bias")))
        return -1;
    if (bind_stack(b, &p->enc, m->enc_layers, E "whisper_encoder.transformer.", 1, 0)) return -1;
    if (!(m->enc_norm = bind_vector(b, ed, E "whisper_encoder.transformer.norm.weight"))) return -1;
    if (bind_matrix(b, &m->adapt0, 2, (int64_t[]){d, ed * p->downsample},
                    E "audio_language_projection.0.weight") ||
        bind_matrix(b, &m->adapt2, 2, (int64_t[]){d, d}, E "audio_language_projection.2.weight") ||
        bind_matrix(b, &m->tok_emb, 2, (int64_t[]){p->vocab_size, d}, E "tok_embeddings.weight"))
        return -1;
    if (bind_stack(b, &p->dec, m->dec_layers, "", 0, p->ada_dim)) return -1;
    if (!(m->dec_norm = bind_vector(b, d, "norm.weight"))) return -1;
    return 0;
}

/* backend "cuda" or "auto": the CUDA device when device 0 is usable and
 * the model fits its free memory; "cuda" fails saying why otherwise, "auto"
 * keeps the CPU device and notes why. */
static vx_status choose_device(vx_model *m, int required, char *err, size_t err_len) {
#ifdef VX_HAVE_CUDA
    char desc[160], why[320];
    if (vx_cuda_probe(m->weight_bytes, desc, sizeof desc, why, sizeof why) == 0) {
        const vx_device *d = vx_device_cuda_open(m, why, sizeof why);
        if (d) {
            m->dev = d;
            snprintf(m->dev_note, sizeof m->dev_note, "%s", desc);
            return VX_OK;
        }
    }
    if (required) {
        snprintf(err, err_len, "backend \"cuda\": no usable CUDA device: %s", why);
        return VX_ERR_ARG;
    }
    snprintf(m->dev_note, sizeof m->dev_note, "%s", why);
#else
    if (required) {
        snprintf(err, err_len, "backend \"cuda\": this engine was built without CUDA (no nvcc "
                 "at build time, or VX_CUDA=OFF); rebuild it with a CUDA toolkit");
        return VX_ERR_ARG;
    }
    snprintf(m->dev_note, sizeof m->dev_note, "engine built without CUDA");
#endif
    return VX_OK;
}

#ifndef VX_HAVE_CUDA
double vx_cuda_membw(size_t bytes, int reps, char *err, size_t err_len) {
    snprintf(err, err_len, "engine built without CUDA");
    return -1;
}
#endif

/* Whether a model file can be read; if not, err says why: missing (asking
 * whether dir is a model directory, when given), or the reason (a directory
 * closed to this user: the service's model read by another one). */
static int model_file_readable(const char *path, const char *dir, char *err, size_t err_len) {
    if (access(path, R_OK) == 0) return 1;
    if ((errno == ENOENT || errno == ENOTDIR) && dir)
        snprintf(err, err_len, "%s: missing (is '%s' a Voxtral model directory?)", path, dir);
    else if (errno == ENOENT || errno == ENOTDIR)
        snprintf(err, err_len, "%s: missing", path);
    else
        snprintf(err, err_len, "%s: cannot read it (%s)", path, strerror(errno));
    return 0;
}

vx_status vx_model_load(const char *dir, const vx_model_options *opt, vx_model **out, char *err,
                        size_t err_len) {
    char path[4096], file_err[1024];
    char scratch_err[8];
    if (!err || err_len == 0) {
        err = scratch_err;
        err_len = sizeof scratch_err;
    }
    err[0] = 0;
    if (!out) return VX_ERR_ARG;
    *out = NULL;
    if (!dir || !*dir) {
        snprintf(err, err_len, "no model directory given");
        return VX_ERR_ARG;
    }
    vx_model *m = calloc(1, sizeof *m);
    if (!m || !(m->dir = strdup(dir))) {
        free(m);
        snprintf(err, err_len, "out of memory");
        return VX_ERR_NOMEM;
    }
    vx_status st = VX_ERR_FORMAT;

    snprintf(path, sizeof path, "%s/params.json", dir);
    if (!model_file_readable(path, dir, err, err_len)) {
        st = VX_ERR_IO;
        goto fail;
    }
    if (vx_params_load(path, &m->p, err, err_len) != 0) goto fail;

    snprintf(path, sizeof path, "%s/consolidated.safetensors", dir);
    if (!model_file_readable(path, NULL, err, err_len)) {
        st = VX_ERR_IO;
        goto fail;
    }
    if (vx_st_open(path, &m->st, err, err_len) != 0) goto fail;

    binder b = {m, path, file_err, sizeof file_err, VX_OK, 0};
    if (bind_all(&b) != 0) {
        snprintf(err, err_len, "%s", file_err);
        st = b.status;
        goto fail;
    }
    if (b.q_cols > 0 && !(m->act = vx_actbuf_new(b.q_cols))) {
        snprintf(err, err_len, "out of memory for the activation buffer");
        st = VX_ERR_NOMEM;
        goto fail;
    }

    snprintf(path, sizeof path, "%s/tekken.json", dir);
    if (!model_file_readable(path, NULL, err, err_len)) {
        st = VX_ERR_IO;
        goto fail;
    }
    if (vx_tok_load(path, m->p.vocab_size, &m->tok, err, err_len) != 0) goto fail;
    int id;
    m->bos_id = (id = vx_tok_special_id(&m->tok, "<s>")) >= 0 ? id : 1;
    m->eos_id = (id = vx_tok_special_id(&m->tok, "</s>")) >= 0 ? id : 2;
    m->pad_id = (id = vx_tok_special_id(&m->tok, "[STREAMING_PAD]")) >= 0 ? id : 32;

    if (vx_mel_tables_init(m) != 0) {
        snprintf(err, err_len, "out of memory for the mel tables");
        st = VX_ERR_NOMEM;
        goto fail;
    }
    const char *req = opt && opt->backend ? opt->backend : "";
    const int want_cuda = strcmp(req, "cuda") == 0, want_auto = strcmp(req, "auto") == 0;
    m->dev = vx_device_cpu();
    m->be = vx_backend_select(want_cuda || want_auto ? NULL : req, err, err_len);
    if (!m->be) {
        st = VX_ERR_ARG;
        goto fail;
    }
    if ((want_cuda || want_auto) && (st = choose_device(m, want_cuda, err, err_len)) != VX_OK)
        goto fail;
    /* the CPU reads every weight at every decoder step: from anonymous huge
     * pages when they fit (a GPU keeps its own copies; its host mapping
     * stays). Unlike the file's pages, the copy cannot be dropped under
     * memory pressure, so it leaves the runtime's share and as much again
     * for the rest of the system: where free memory barely holds the
     * weights they stay mapped, where the kernel can evict them (slow)
     * rather than kill the daemon. */
    if (m->dev->host_visible)
        vx_st_into_memory(&m->st, 2 * VX_RUNTIME_BYTES, m->mem_note, sizeof m->mem_note);
    else snprintf(m->mem_note, sizeof m->mem_note, "weights on the %s device", m->dev->name);
    int threads = opt && opt->n_threads > 0 ? opt->n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (threads < 1) threads = 1;
    if (threads > 256) threads = 256;
    m->pool = vx_pool_new(threads);
    if (!m->pool) {
        snprintf(err, err_len, "cannot start %d worker threads", threads);
        st = VX_ERR_NOMEM;
        goto fail;
    }
    m->n_threads = threads;
    *out = m;
    return VX_OK;
fail:
    vx_model_free(m);
    return st;
}

void vx_model_get_info(const vx_model *m, vx_model_info *o) {
    memset(o, 0, sizeof *o);
    const vx_params *p = &m->p;
    o->dim = p->dec.dim;
    o->n_layers = p->dec.n_layers;
    o->n_heads = p->dec.n_heads;
    o->n_kv_heads = p->dec.n_kv_heads;
    o->head_dim = p->dec.head_dim;
    o->hidden_dim = p->dec.hidden_dim;
    o->vocab_size = p->vocab_size;
    o->sliding_window = p->dec.window;
    o->enc_dim = p->enc.dim;
    o->enc_layers = p->enc.n_layers;
    o->enc_heads = p->enc.n_heads;
    o->enc_kv_heads = p->enc.n_kv_heads;
    o->enc_head_dim = p->enc.head_dim;
    o->enc_hidden_dim = p->enc.hidden_dim;
    o->enc_window = p->enc.window;
    o->n_mels = p->n_mels;
    o->downsample = p->downsample;
    o->sample_rate = p->sample_rate;
    o->hop_length = p->hop;
    o->window_size = p->window_size;
    o->n_special = m->tok.n_special;
    o->bos_id = m->bos_id;
    o->eos_id = m->eos_id;
    o->pad_id = m->pad_id;
    o->weight_bytes = m->weight_bytes;
    o->backend = m->be->name;
    o->n_threads = m->n_threads;
    o->device = m->dev->name;
    o->device_note = m->dev_note;
    o->weights_note = m->mem_note;
}

const char *vx_model_token_bytes(const vx_model *m, int id, int *len) {
    const unsigned char *b = vx_tok_bytes(&m->tok, id, len);
    if (!b) *len = 0;
    return (const char *)b;
}

const char *vx_status_name(vx_status st) {
    switch (st) {
    case VX_OK: return "ok";
    case VX_ERR_IO: return "io error";
    case VX_ERR_FORMAT: return "format error";
    case VX_ERR_SHAPE: return "shape error";
    case VX_ERR_ARG: return "bad argument";
    case VX_ERR_STATE: return "bad state";
    case VX_ERR_NOMEM: return "out of memory";
    }
    return "unknown status";
}

/* -- non-finite weights ------------------------------------------------------
 * NaN or Inf in a weight makes every output that reads it NaN: the decoder
 * then emits nothing. Non-finite is an all-ones exponent, tested on the bit
 * patterns (no conversion). Q8/Q4 values are finite integers times their
 * block's fp16 scale, so the scales are what is checked there. */

typedef struct {
    int64_t count, first; /* non-finite values, flat index of the first */
} nf_tally;

static void nf_add(nf_tally *t, int64_t index, int64_t n) {
    if (t->count == 0) t->first = index;
    t->count += n;
}

#define NF_CHUNK 4096

/* Elements [e0, e0 + n) of a tensor of plain floats (F32, F16, BF16, F64).
 * Each chunk is counted first (a loop the compiler vectorises) and searched
 * element by element only when it holds something. */
static void nf_scan_plain(vx_dtype dt, const uint8_t *data, int64_t e0, int64_t n, nf_tally *t) {
    const size_t es = vx_dtype_size(dt);
    for (int64_t c0 = 0; c0 < n; c0 += NF_CHUNK) {
        const int64_t len = n - c0 < NF_CHUNK ? n - c0 : NF_CHUNK;
        const uint8_t *p = data + (size_t)(e0 + c0) * es;
        int64_t bad = 0;
        switch (dt) {
        case VX_DT_F32:
            for (int64_t i = 0; i < len; i++) {
                uint32_t u;
                memcpy(&u, p + 4 * i, 4);
                bad += (u & 0x7f800000u) == 0x7f800000u;
            }
            break;
        case VX_DT_F16:
        case VX_DT_BF16: {
            const uint16_t mask = dt == VX_DT_F16 ? 0x7c00u : 0x7f80u;
            for (int64_t i = 0; i < len; i++) {
                uint16_t u;
                memcpy(&u, p + 2 * i, 2);
                bad += (u & mask) == mask;
            }
            break;
        }
        case VX_DT_F64:
            for (int64_t i = 0; i < len; i++) {
                uint64_t u;
                memcpy(&u, p + 8 * i, 8);
                bad += (u & 0x7ff0000000000000ull) == 0x7ff0000000000000ull;
            }
            break;
        default:
            return;
        }
        if (!bad) continue;
        int64_t at = 0;
        for (; at < len; at++) { /* the first one in this chunk */
            uint64_t u = 0;
            memcpy(&u, p + (size_t)at * es, es); /* little-endian: the value's low bytes */
            const int hit = dt == VX_DT_F32    ? (u & 0x7f800000u) == 0x7f800000u
                            : dt == VX_DT_F16  ? (u & 0x7c00u) == 0x7c00u
                            : dt == VX_DT_BF16 ? (u & 0x7f80u) == 0x7f80u
                                               : (u & 0x7ff0000000000000ull) == 0x7ff0000000000000ull;
            if (hit) break;
        }
        if (t->count == 0) t->first = e0 + c0 + at;
        t->count += bad;
    }
}

/* The block scales of row r of a Q8/Q4 [rows, cols] tensor: a non-finite
 * scale makes the block's 32 values non-finite. */
static void nf_scan_qrow(const vx_st_tensor *t, int64_t rows, int64_t cols, int64_t r,
                         nf_tally *tl) {
    const vx_qrow q = vx_q_row(t->dtype, t->data, rows, cols, r);
    for (int64_t b = 0; b < cols / VX_QBLOCK; b++) {
        uint16_t u;
        memcpy(&u, q.scale + (size_t)b * q.stride, 2);
        if ((u & 0x7c00u) == 0x7c00u) nf_add(tl, r * cols + b * VX_QBLOCK, VX_QBLOCK);
    }
}

/* One tensor, viewed as [rows, cols] (cols = the last dim): all rows, or
 * max_rows of them spread evenly (first and last included) when max_rows > 0.
 * Integer tensors, and Q8/Q4 ones in a layout this build does not know, are
 * skipped. */
static nf_tally nf_scan_tensor(const vx_safetensors *st, const vx_st_tensor *t, int64_t max_rows) {
    nf_tally tl = {0, -1};
    const int block = vx_dt_is_block(t->dtype);
    const int plain = t->dtype == VX_DT_F32 || t->dtype == VX_DT_F16 || t->dtype == VX_DT_BF16 ||
                      t->dtype == VX_DT_F64;
    if (!block && !plain) return tl;
    if (block && (!st->q_layout || strcmp(st->q_layout, VX_Q_LAYOUT) != 0)) return tl;
    const int64_t cols = t->ndim > 0 ? t->shape[t->ndim - 1] : 1;
    int64_t rows = 1;
    for (int i = 0; i + 1 < t->ndim; i++) rows *= t->shape[i];
    if (rows <= 0 || cols <= 0) return tl;
    const int64_t pick = max_rows > 0 && rows > max_rows ? max_rows : rows;
    for (int64_t i = 0; i < pick; i++) {
        const int64_t r = pick == rows ? i : pick == 1 ? 0 : i * (rows - 1) / (pick - 1);
        if (block)
            nf_scan_qrow(t, rows, cols, r, &tl);
        else
            nf_scan_plain(t->dtype, (const uint8_t *)t->data, r * cols, cols, &tl);
    }
    return tl;
}

static int64_t nf_find(const vx_safetensors *st, int64_t max_rows, vx_nonfinite *out, size_t max) {
    int64_t found = 0;
    for (int i = 0; i < st->n_tensors; i++) {
        const nf_tally tl = nf_scan_tensor(st, &st->tensors[i], max_rows);
        if (tl.count == 0) continue;
        if (out && (size_t)found < max) {
            vx_nonfinite *o = &out[found];
            snprintf(o->tensor, sizeof o->tensor, "%s", st->tensors[i].name);
            o->count = tl.count;
            o->first = tl.first;
        }
        found++;
    }
    return found;
}

int64_t vx_model_find_nonfinite(const vx_model *m, int full, vx_nonfinite *out, size_t max) {
    if (!m) return 0;
    return nf_find(&m->st, full ? 0 : VX_NONFINITE_SAMPLE_ROWS, out, max);
}

vx_status vx_weights_find_nonfinite(const char *path, vx_nonfinite *out, size_t max,
                                    int64_t *n_found, char *err, size_t err_len) {
    char scratch_err[8];
    if (!err || err_len == 0) {
        err = scratch_err;
        err_len = sizeof scratch_err;
    }
    err[0] = 0;
    if (!path || !n_found) {
        snprintf(err, err_len, "no file or result given");
        return VX_ERR_ARG;
    }
    *n_found = 0;
    vx_safetensors st;
    memset(&st, 0, sizeof st);
    if (vx_st_open(path, &st, err, err_len) != 0) return VX_ERR_FORMAT;
    *n_found = nf_find(&st, 0, out, max);
    vx_st_close(&st);
    return VX_OK;
}
