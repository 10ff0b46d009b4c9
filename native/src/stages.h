/* stages.h - the model's stages as functions of (model, their own state,
 * scratch): a pass takes its input rows and writes its output rows, and
 * knows nothing of streams. stream.c alone schedules the passes, captures
 * their rows (debug dumps) and times them; a test or a benchmark can run a
 * pass on its own. */
#ifndef VX_STAGES_H
#define VX_STAGES_H

#include "engine.h"

#define VX_POS_FRAMES 8      /* mel frames per text position */
#define VX_POS_ENC_FRAMES 4  /* encoder frames per text position (conv stride 2) */
#define VX_ENC_BATCH 64      /* encoder frames per transformer pass */
#define VX_DEC_BATCH 32      /* decoder positions per prefill pass */

/* ---- the stack over several streams' rows (transformer.c) ---- */

/* One segment of a stacked pass: n consecutive rows of one stream, at
 * positions [pos0, pos0+n) over its own cache kv, with its own ada-norm
 * scales (NULL: none). A pass stacks the segments' rows in the matrix
 * products (one read of the weights for all of them); RoPE, the cache and
 * attention work per segment, so each segment's results are bitwise what it
 * gives alone. More than one segment needs a device with host_visible. */
typedef struct {
    float **ada;
    vx_kv *kv;
    int n;
    int64_t pos0;
} vx_stack_seg;

/* Scratch for the segments' rows and their caches' slots. 0 or -1 (out of
 * memory, a batch too large for a cache, or nseg > 1 on a device that is
 * not host_visible). */
int vx_stack_reserve_segs(const vx_model *m, const vx_tf_params *p, const vx_stack_seg *seg,
                          int nseg, vx_scratch *s);
/* The layers over s->x, the segments' rows in order (vx_stack_layers for
 * one segment). */
void vx_stack_layers_segs(const vx_model *m, const vx_tf_params *p, const vx_layer *layers,
                          const vx_stack_seg *seg, int nseg, vx_scratch *s);

/* ---- encoder (encoder.c): conv stem, encoder stack, adapter ---- */

/* What the encoder carries from one pass to the next. */
typedef struct {
    float *mel_hist; /* [2, n_mels] the two mel frames before the next pass's */
    float *c0_last;  /* [enc_dim] last (odd) output of the first conv */
    int64_t pos;     /* next encoder frame */
    vx_kv kv;        /* rolling KV cache of the encoder stack */
} vx_enc_state;

/* A fresh state (zero history, position 0); kv_f16 as vx_kv_init. 0 or -1. */
int vx_enc_state_init(vx_enc_state *e, const vx_model *m, int kv_f16);
void vx_enc_state_free(vx_enc_state *e);
/* dst = src (both initialised for m), keeping dst's buffers. 0 or -1. */
int vx_enc_state_copy(vx_enc_state *dst, const vx_enc_state *src, const vx_model *m);

/* One encoder pass over n_pos whole positions: mel [n_pos * VX_POS_FRAMES,
 * n_mels] through the causal conv stem, the encoder stack (VX_ENC_BATCH
 * frames at a time) and its final norm into enc [n_pos * VX_POS_ENC_FRAMES,
 * enc_dim], then the adapter into out [n_pos, dim]. Returns the number of
 * stack passes run, or -1 when memory runs out. */
int vx_encoder_pass(const vx_model *m, vx_enc_state *e, vx_scratch *s, const float *mel,
                    int n_pos, float *enc, float *out);

/* One stream's part of a grouped encoder pass: vx_encoder_pass's arguments. */
typedef struct {
    vx_enc_state *es;
    const float *mel;
    int n_pos;
    float *enc;
    float *out;
} vx_enc_job;

/* Several streams' encoder passes as one: each conv stem on its own (it
 * carries per-stream state), then the encoder stack with every stream's
 * frames stacked in the matrix products (VX_ENC_BATCH rows per stacked pass:
 * one read of the encoder weights, and one packing of them by the int8
 * kernels, for all the streams; RoPE, cache and attention per stream), and
 * the adapter over all their positions. Each stream's enc and out are
 * bitwise its vx_encoder_pass's (rows never influence each other's
 * arithmetic, and a stream's frames may be split at any row). One pass each
 * on a device that cannot stack. Returns the number of stack passes, or -1
 * when memory runs out; *segs: the streams' shares of them (their sum over
 * the passes). */
int vx_encoder_pass_jobs(const vx_model *m, vx_enc_job *job, int njob, vx_scratch *s,
                         int *segs);

/* ---- decoder (decoder.c): stack with ada-norm, final norm, output head ---- */

/* The decoder's conditioning on a delay of delay_pos positions: per layer
 * the ada-norm scale 1 + s [n_layers][dim]. NULL when memory runs out. */
float **vx_decoder_ada_new(const vx_model *m, int delay_pos);
void vx_decoder_ada_free(const vx_model *m, float **ada);

/* One decoder pass: positions [pos0, pos0+n) with input rows x [n, dim]
 * over the cache kv. When logits is non-NULL every row's logits are written
 * there ([n, vocab]). 0, or -1 when memory runs out. */
int vx_decoder_pass(const vx_model *m, float **ada, vx_kv *kv, vx_scratch *s, const float *x,
                    int n, int64_t pos0, float *logits);

/* One decoder pass over the rows of several streams (segments, see
 * vx_stack_seg), x [sum of n, dim] in segment order; the logits of the
 * first n_logits rows are written to logits ([n_logits, vocab]). A stream's
 * results are bitwise those of its own vx_decoder_pass. 0, or -1 (as
 * vx_stack_reserve_segs). */
int vx_decoder_pass_segs(const vx_model *m, const vx_stack_seg *seg, int nseg, vx_scratch *s,
                         const float *x, int n_logits, float *logits);
/* 1 when the model's device runs passes of several segments. */
int vx_decoder_can_stack(const vx_model *m);
#endif
