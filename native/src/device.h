/* device.h - the seam a compute device sits behind: the memory the layer
 * operations work on, and the operations of one transformer layer.
 *
 * transformer.c writes the order of a layer's operations once, in terms of
 * this table; a device implements each operation on memory it owns. The
 * activations of a pass, the attention scores and the KV caches are
 * vx_dbuf handles allocated through the device, so a device whose memory is
 * not the host's (a GPU) keeps them there across operations and passes with
 * no copy per kernel; rows cross to and from the host only through upload
 * and download, at the ends of a stage's pass. The model's constants (the
 * weight matrices, norm and bias vectors, a stream's ada-norm scales) are
 * read-only and named by their host descriptors (vx_weight, float *): a
 * device that keeps its own copies makes them once, before the first pass,
 * and finds them by those descriptors.
 *
 * The CPU device (device_cpu.c) is host memory, a vx_dbuf being a host
 * pointer, and runs the operations on the model's thread pool with the
 * CPU kernel table (vx_backend: portable, AVX2, NEON), keeping that table's
 * contract: results never depend on batching or threading. */
#ifndef VX_DEVICE_H
#define VX_DEVICE_H
#include "engine.h" /* vx_dbuf, vx_device, vx_weight, vx_tf_params, vx_kv */

struct vx_device {
    const char *name;
    /* 1 when a vx_dbuf is host memory (the CPU device): a stage may then
     * hand the device a host buffer as a handle (vx_dbuf_host) and skip a
     * copy, as the decoder does with its logits. */
    int host_visible;

    /* ---- memory: bytes, offsets in bytes ---- */
    vx_dbuf *(*alloc)(const vx_device *d, size_t bytes); /* NULL when out of memory */
    void (*release)(const vx_device *d, vx_dbuf *b);      /* NULL is allowed */
    void (*upload)(const vx_device *d, vx_dbuf *dst, size_t off, const void *src, size_t bytes);
    void (*download)(const vx_device *d, void *dst, const vx_dbuf *src, size_t off, size_t bytes);
    void (*copy)(const vx_device *d, vx_dbuf *dst, size_t dst_off, const vx_dbuf *src,
                 size_t src_off, size_t bytes);

    /* ---- one layer's operations; rows are float32, row-major, n of them.
     * m gives the device its model (thread pool, kernel table, constants). */

    /* cs[i] = (cos, sin) pairs of position pos0 + i ([n, head_dim]). */
    void (*rope_table)(const vx_model *m, vx_dbuf *cs, int n, int head_dim, int64_t pos0,
                       double theta);
    /* out[i] = RMSNorm(x[i]) * w, then * scale when scale is non-NULL. */
    void (*rmsnorm)(const vx_model *m, vx_dbuf *out, const vx_dbuf *x, const float *w,
                    const float *scale, int n, int dim, double eps);
    /* Y[p] = X W[p]^T (+ bias[p] where non-NULL) for nw <= VX_MATMUL_MAX
     * weights that read the same X ([n, W[p].cols] -> [n, W[p].rows]). */
    void (*matmul)(const vx_model *m, int nw, const vx_weight *const *W,
                   const vx_dbuf *X, int n, vx_dbuf *const *Y, const float *const *bias);
    /* RoPE (cs from rope_table) on q [n, heads * hd] and k [n, kv_heads *
     * hd], then k and v rows into their slots of layer `layer` of kv. */
    void (*rope_store)(const vx_model *m, const vx_tf_params *p, vx_kv *kv, int layer,
                       vx_dbuf *q, vx_dbuf *k, const vx_dbuf *v, const vx_dbuf *cs, int n,
                       int64_t pos0);
    /* Floats of scratch that attention needs for n rows from pos0. */
    size_t (*attention_scratch)(const vx_tf_params *p, int n, int64_t pos0);
    /* att[i] = sliding-window causal attention of query row i (position
     * pos0 + i) over layer `layer` of kv, which holds positions < pos0 + n. */
    void (*attention)(const vx_model *m, const vx_tf_params *p, const vx_kv *kv,
                      int layer, const vx_dbuf *q, vx_dbuf *att, vx_dbuf *scratch, int n,
                      int64_t pos0);
    /* h += x (count floats). */
    void (*add)(const vx_model *m, vx_dbuf *h, const vx_dbuf *x, size_t count);
    /* h1 = silu(h1) * h3 (count floats). */
    void (*swiglu)(const vx_model *m, vx_dbuf *h1, const vx_dbuf *h3, size_t count);
};

const vx_device *vx_device_cpu(void);

/* ---- the CUDA device (cuda/device_cuda.cu, built with VX_HAVE_CUDA) ----
 * Its handles are cudaMalloc'd device memory. Opening it for a loaded model
 * uploads the model's constants once (the stacks' matrices and the output
 * head as stored: BF16/F16/F32/Q8/Q4, each in its own allocation; the norm
 * and bias vectors as float), found afterwards by their host descriptors;
 * other host vectors a pass names (a stream's ada-norm scales) are uploaded
 * on first use and re-checked by a checksum, since their host memory may be
 * freed and reused. The encoder's convolutions, the adapter and the ada-norm
 * projections stay on the CPU, so the host mapping of the weights stays.
 * All work goes to one CUDA stream per model; download is the only
 * synchronisation (once per stage pass). */
#ifdef VX_HAVE_CUDA
/* 0 when device 0 can take a model of need_bytes of constants (present,
 * supported architecture, enough free memory), else -1 with why saying
 * which of those failed (the CUDA runtime's own message included). desc
 * gets a short description of the device either way, when there is one. */
int vx_cuda_probe(int64_t need_bytes, char *desc, size_t desc_len, char *why, size_t why_len);
/* The CUDA device for m (m->be and the weights bound), or NULL with err. */
const vx_device *vx_device_cuda_open(const vx_model *m, char *err, size_t err_len);
/* Frees what open made; ignores a device open did not make (NULL, the CPU). */
void vx_device_cuda_close(const vx_device *d);
#endif

/* Host memory p as a handle of d where d reads host memory, else NULL. */
static inline vx_dbuf *vx_dbuf_host(const vx_device *d, void *p) {
    return d->host_visible ? (vx_dbuf *)p : NULL;
}
#endif
