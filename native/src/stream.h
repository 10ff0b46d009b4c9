/* stream.h - the state of one stream (internal). Everything that changes as
 * audio is transcribed lives in vx_state, so that the state reached after the
 * left padding can be saved once and restored at every utterance start. */
#ifndef VX_STREAM_H
#define VX_STREAM_H

#include "stages.h"

#define VX_POS_SAMPLES 1280  /* one text position = 80 ms */
#define VX_LEFT_PAD_POS 32   /* positions of zero audio in front of every stream */

typedef struct {
    /* audio samples of the padded stream; smp[0] is absolute sample smp_base */
    float *smp;
    int64_t smp_len, smp_cap, smp_base;
    int64_t mel_next;          /* next mel frame to compute */
    float *mel_pend;           /* [n_mel_pend, n_mels] frames waiting for the conv stem */
    int n_mel_pend, mel_pend_cap;
    vx_enc_state enc;          /* the encoder's carried state */
    float *adq;                /* [adq_n, dim] adapter rows for positions adq_base.. */
    int64_t adq_base, adq_n, adq_cap;
    int64_t dec_pos;           /* next decoder position */
    int last_token;
    int pad_run;               /* consecutive STREAMING_PAD outputs just produced */
    int eos;                   /* the model ended the utterance */
    vx_kv dec_kv;
    int64_t utt_samples;       /* utterance audio fed since the left padding */
} vx_state;

typedef struct {
    float *data;
    int64_t rows, cols, cap_rows;
} vx_capture;

struct vx_stream {
    vx_model *m;
    int delay_pos;             /* delay in positions */
    int prompt_len;            /* 1 + 32 + delay_pos */
    int interval_frames;       /* mel frames to batch before running the encoder */
    int max_spec;              /* positions per speculative decoder pass */
    float **ada;               /* [dec layers][dim] = 1 + s_layer */
    vx_state st;               /* live state */
    vx_state snap;             /* state after the left padding */
    int have_snap;
    int finished;
    /* In a group call the encoder waits so that the streams' passes run as
     * one: enc_defer set, run_audio only records the positions to run. */
    int enc_defer, enc_pending;
    vx_scratch enc_s, dec_s;
    /* decoder step buffers, sized once at stream creation */
    float *dec_x;              /* [VX_DEC_BATCH, dim] input rows */
    float *dec_emb;            /* [dim] one token embedding */
    float *pad_emb;            /* [dim] STREAMING_PAD's embedding (the guess) */
    float *dec_logits;         /* [max_spec, vocab] */
    vx_utf8_stream utf8;
    vx_event *events;
    size_t n_events, ev_head, ev_cap;
    int debug_kinds;
    vx_capture cap_mel, cap_enc, cap_adapt, cap_logits;
    vx_stream_stats stats;
    char err[512];
};

#endif
