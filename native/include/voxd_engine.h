/*
 * voxd_engine.h - the public C API of voxd's Voxtral Realtime engine.
 *
 * A model is loaded once (weights read-only: copied into anonymous huge
 * pages where they fit in free memory, else memory-mapped; weights_note in
 * vx_model_info says which) and may be shared by any number of streams. A stream turns 16 kHz mono float audio
 * into token events as the audio arrives.
 *
 * Concurrency:
 *   - vx_model_* calls other than vx_model_free may run concurrently.
 *   - Different streams of one model may be used from different threads at
 *     the same time.
 *   - One stream must not be used from two threads at once (no locking).
 *   - vx_model_free only after every stream of the model is freed.
 *
 * Errors: every call that can fail returns a vx_status; VX_OK is 0. The
 * message of the last failure is kept in the stream (vx_stream_error) or
 * written to the caller's buffer (vx_model_load). Nothing in the engine
 * exits the process or asserts on input.
 */
#ifndef VOXD_ENGINE_H
#define VOXD_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define VX_API_VERSION 1

#if defined(__GNUC__)
#define VX_EXPORT __attribute__((visibility("default")))
#else
#define VX_EXPORT
#endif

typedef enum {
    VX_OK = 0,
    VX_ERR_IO = 1,      /* file missing, unreadable, mmap failed */
    VX_ERR_FORMAT = 2,  /* malformed safetensors / JSON / tokenizer */
    VX_ERR_SHAPE = 3,   /* tensor shape or dtype disagrees with params.json */
    VX_ERR_ARG = 4,     /* bad argument: NaN samples, delay out of range ... */
    VX_ERR_STATE = 5,   /* call not allowed now (e.g. feed after finish) */
    VX_ERR_NOMEM = 6    /* allocation failed */
} vx_status;

typedef struct vx_model vx_model;
typedef struct vx_stream vx_stream;

typedef struct {
    int n_threads;        /* worker threads for matrix work; 0 = all cores */
    /* NULL or "" = best for this CPU; "portable", "avx2", "neon";
     * "cuda" = the CUDA device (the load fails, saying why, when there is no
     * usable one); "auto" = the CUDA device when one is usable and the model
     * fits its free memory, else the best CPU backend (device_note says why). */
    const char *backend;
} vx_model_options;

typedef struct {
    /* decoder */
    int dim, n_layers, n_heads, n_kv_heads, head_dim, hidden_dim, vocab_size;
    int sliding_window;
    /* encoder */
    int enc_dim, enc_layers, enc_heads, enc_kv_heads, enc_head_dim, enc_hidden_dim;
    int enc_window, n_mels, downsample;
    int sample_rate, hop_length, window_size;
    int n_special;        /* ids below this are control tokens */
    int bos_id, eos_id, pad_id;
    int64_t weight_bytes; /* bytes of all the model's tensors */
    const char *backend;  /* kernel backend in use */
    int n_threads;
    const char *device;      /* where the transformer stacks run: "cpu" or "cuda" */
    const char *device_note; /* why that device (the GPU, or why not a GPU); may be "" */
    const char *weights_note; /* where the weights live: copied into memory (with how much
                                 of it in huge pages), or mapped from the file and why */
} vx_model_info;

/* Read bandwidth of CUDA device 0 in GB/s, from a streaming-read kernel
 * over a buffer of `bytes` (16-byte loads, reps timed passes after one
 * warm-up); -1 with err saying why when there is no usable device or the
 * engine was built without CUDA. What `voxd bench --backend cuda` reports
 * as the GPU's bandwidth. */
VX_EXPORT double vx_cuda_membw(size_t bytes, int reps, char *err, size_t err_len);

/* Load a model directory (consolidated.safetensors, params.json, tekken.json).
 * On failure *out is NULL and err holds a message naming the file and what is
 * wrong. */
VX_EXPORT vx_status vx_model_load(const char *dir, const vx_model_options *opt, vx_model **out,
                        char *err, size_t err_len);
VX_EXPORT void vx_model_free(vx_model *m);
VX_EXPORT void vx_model_get_info(const vx_model *m, vx_model_info *out);
/* Bytes of token id's text (no NUL); NULL with *len 0 for control ids. */
VX_EXPORT const char *vx_model_token_bytes(const vx_model *m, int id, int *len);

/* Non-finite (NaN or Inf) weights: they load without complaint but make the
 * decoder emit nothing, so callers check for them and warn. */
#define VX_TENSOR_NAME_MAX 192
#define VX_NONFINITE_SAMPLE_ROWS 4 /* rows of each matrix the quick check reads */
typedef struct {
    char tensor[VX_TENSOR_NAME_MAX]; /* the tensor's name (cut short if longer) */
    int64_t count; /* non-finite values in the part scanned (Q8/Q4: 32 per block
                    * whose fp16 scale is not finite) */
    int64_t first; /* flat element index of the first of them */
} vx_nonfinite;

/* Look for non-finite values in a loaded model's weights. full = 0: the quick
 * check (every vector in full, VX_NONFINITE_SAMPLE_ROWS rows of each matrix
 * spread evenly, first and last included; Q8/Q4: those rows' block scales),
 * cheap enough for every start; full = 1: every value. Fills up to max
 * entries of out (may be NULL), in the file's tensor order, and returns how
 * many tensors hold non-finite values (possibly more than max). */
VX_EXPORT int64_t vx_model_find_nonfinite(const vx_model *m, int full, vx_nonfinite *out,
                                          size_t max);
/* The full scan of a safetensors file without loading a model (`voxd model
 * check`): *n_found as above. Fails (err says why) when the file cannot be
 * mapped or its header is invalid. */
VX_EXPORT vx_status vx_weights_find_nonfinite(const char *path, vx_nonfinite *out, size_t max,
                                              int64_t *n_found, char *err, size_t err_len);

typedef struct {
    int delay_ms;     /* 80..2400 in steps of 80; 0 = default 480 */
    int interval_ms;  /* audio to batch before running the encoder; 0 = 80 (every position) */
    /* Pad speculation: when several audio positions are waiting, guess that
     * the decoder outputs STREAMING_PAD for them and check up to this many
     * positions in one batched pass (one read of the weights), keeping tokens
     * up to the first wrong guess. Output is identical to one position per
     * pass. 0 = default (8), 1 = off. */
    int max_speculation;
    /* 0 = keys and values cached as fp16 (half the memory and attention
     * reads); 1 = float32, for checks against a float reference. */
    int kv_f32;
} vx_stream_options;

typedef enum {
    VX_EVENT_TOKEN = 0,          /* the decoder produced a token (control ids too) */
    VX_EVENT_UTTERANCE_END = 1,  /* flush() or finish() completed an utterance */
} vx_event_kind;

#define VX_EVENT_TEXT_MAX 256

typedef struct {
    int32_t kind;        /* vx_event_kind */
    int32_t token;       /* token id (VX_EVENT_TOKEN), -1 otherwise */
    int64_t position;    /* decoder position in the utterance */
    double audio_time;   /* seconds of utterance audio this position stands for */
    int32_t text_len;    /* bytes in text: only complete UTF-8 characters */
    char text[VX_EVENT_TEXT_MAX]; /* NUL-terminated */
} vx_event;

VX_EXPORT vx_status vx_stream_new(vx_model *m, const vx_stream_options *opt, vx_stream **out);
VX_EXPORT void vx_stream_free(vx_stream *s);

/* Feed n samples (float32, 16 kHz mono, in [-1, 1]). Runs as much of the
 * model as the audio allows. NaN or Inf samples are rejected with VX_ERR_ARG
 * and nothing of that call is used. */
VX_EXPORT vx_status vx_stream_feed(vx_stream *s, const float *samples, size_t n);

/* End of utterance, NOT terminal: pads the utterance as the model was trained
 * (zeros up to a whole position plus delay+1+10 positions), decodes every
 * pending position, emits the remaining tokens and one VX_EVENT_UTTERANCE_END,
 * then restores the state saved after the left padding so that the next audio
 * is transcribed as a fresh stream would. Flushing with no audio since the
 * last flush only emits the utterance end. */
VX_EXPORT vx_status vx_stream_flush(vx_stream *s);

/* vx_stream_flush when the last `silence` samples fed were silence after the
 * speech (an endpointer's hangover): they count toward the right padding, so
 * the decoder stops delay+1+10 positions past the end of the speech instead of
 * past the end of the silence, and the final comes that much sooner. Nothing
 * fed is dropped: where the silence is longer than the padding, the padding
 * only completes the last position. silence = 0 is vx_stream_flush; more
 * than the utterance's samples counts as all of them. When the silence is
 * exact zeros, the tokens are those of vx_stream_flush on the audio without
 * it. */
VX_EXPORT vx_status vx_stream_flush_after_silence(vx_stream *s, size_t silence);

/* Terminal flush: like vx_stream_flush, after which feed/flush return
 * VX_ERR_STATE until vx_stream_reset. */
VX_EXPORT vx_status vx_stream_finish(vx_stream *s);

/* Drop the utterance in progress and any unread events; the stream is ready
 * for new audio (also after finish). */
VX_EXPORT vx_status vx_stream_reset(vx_stream *s);

/* Compute the left padding now: the stream's first feed, flush or reset
 * otherwise does (the prompt's prefill, on the clock of its first audio).
 * A server readies a stream before a client's audio arrives with it; the
 * stream's output is the same either way. Nothing to do the second time. */
VX_EXPORT vx_status vx_stream_prepare(vx_stream *s);

/* Copy up to max pending events into out; returns how many were copied. */
VX_EXPORT size_t vx_stream_read_events(vx_stream *s, vx_event *out, size_t max);

/* Message of the last failed call on this stream ("" if none). */
VX_EXPORT const char *vx_stream_error(const vx_stream *s);

typedef struct {
    int64_t positions;        /* decoder positions completed (prefill included) */
    int64_t decoder_passes;   /* weight passes of the decoder (batched passes count once) */
    int64_t encoder_frames;   /* encoder frames computed */
    double mel_ms, encoder_ms, decoder_ms; /* CPU wall time spent in each stage */
    int64_t kv_positions;     /* decoder positions currently held in the KV cache */
    int64_t spec_guesses;     /* pad guesses checked by speculation */
    int64_t spec_accepted;    /* of which were right (their positions needed no extra pass) */
    /* The prompt's prefill (BOS, left padding, delay: no logits), batched at
     * the stream's start; a part of the decoder figures above, counted apart
     * because it is matrix-matrix work, not the bandwidth-bound step. */
    int64_t prompt_positions, prompt_passes;
    double prompt_ms;
    int64_t encoder_passes;   /* weight passes of the encoder (batched frames count once) */
} vx_stream_stats;
VX_EXPORT void vx_stream_get_stats(const vx_stream *s, vx_stream_stats *out);

/* Debug capture of intermediate tensors (for --dump and the reference tests).
 * Enable before feeding; each kind accumulates rows as they are computed. */
typedef enum {
    VX_DEBUG_MEL = 1,        /* [frames, n_mels] */
    VX_DEBUG_ENCODER = 2,    /* [enc frames, enc_dim] after the final norm */
    VX_DEBUG_ADAPTER = 4,    /* [positions, dim] */
    VX_DEBUG_LOGITS = 8      /* [decoder steps that produced a token, vocab] */
} vx_debug_kind;
VX_EXPORT vx_status vx_stream_debug_enable(vx_stream *s, int kinds);
/* Pointer to the captured rows (valid until the next feed/flush/reset/free). */
VX_EXPORT vx_status vx_stream_debug_get(const vx_stream *s, int kind, const float **data,
                              int64_t *rows, int64_t *cols);

VX_EXPORT const char *vx_status_name(vx_status st);

/* ---- several streams stepped together ----
 *
 * The decoder reads all its weights for every pass, however few rows it
 * computes, so a server with one stream per connection steps the ready
 * streams together: vx_group_feed feeds each stream its samples and then
 * runs the decoder passes of all of them at once, the rows of every stream
 * stacked in the matrix products (one read of the weights), attention and
 * the KV cache per stream. Each stream's events are exactly those it gives
 * on its own (vx_stream_feed, then vx_stream_flush_after_silence when asked),
 * whatever the other streams and however the audio arrives. Encoder passes
 * run per stream. A group belongs to one model and one thread at a time;
 * streams may join or leave from one call to the next (a stream is in no
 * group between calls, and may also be fed alone). */
typedef struct vx_group vx_group;

VX_EXPORT vx_status vx_group_new(vx_model *m, vx_group **out);
VX_EXPORT void vx_group_free(vx_group *g);

/* For each i < count: vx_stream_feed(streams[i], samples[i], n[i]) and,
 * where flush and flush[i] are non-zero, vx_stream_flush_after_silence(
 * streams[i], silence[i]) after it when the feed succeeded (its right padding
 * decodes in the same stacked passes). samples and n may be NULL (nothing to
 * feed; samples[i] may be NULL when n[i] is 0), flush may be NULL (no flush),
 * silence may be NULL (plain flushes). Streams must be distinct and of the
 * group's model (else VX_ERR_ARG and nothing is done). Each stream's status
 * goes to status[i] when status is non-NULL, its message to vx_stream_error;
 * a failing stream does not stop the others. Returns VX_OK when all
 * succeeded, else the first stream's failure. Read each stream's events
 * afterwards. */
VX_EXPORT vx_status vx_group_feed(vx_group *g, vx_stream *const *streams,
                                  const float *const *samples, const size_t *n, const int *flush,
                                  const size_t *silence, int count, vx_status *status);

typedef struct {
    int64_t calls;          /* vx_group_feed calls */
    int64_t passes;         /* decoder passes run: reads of the decoder weights */
    int64_t stream_passes;  /* the streams' own passes they stand for */
    int64_t rows;           /* decoder rows computed */
    int64_t max_streams;    /* most streams in one pass */
    int64_t encoder_passes; /* encoder stack passes in calls where some stacked streams */
    int64_t encoder_stream_passes; /* the streams' shares of them */
} vx_group_stats;
VX_EXPORT void vx_group_get_stats(const vx_group *g, vx_group_stats *out);

#ifdef __cplusplus
}
#endif
#endif /* VOXD_ENGINE_H */
