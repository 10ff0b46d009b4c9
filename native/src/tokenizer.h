/* tokenizer.h - Tekken (tekken.json) decoding: token id -> bytes, and a
 * streaming UTF-8 assembler that never splits a character across pieces. */
#ifndef VX_TOKENIZER_H
#define VX_TOKENIZER_H
#include <stddef.h>

typedef struct {
    int n_special;      /* config.default_num_special_tokens */
    int vocab_size;     /* ids 0 .. vocab_size-1 */
    int max_token_len;  /* longest text token in bytes */
    char **special_names; /* [n_special], NULL where the file names none */
    unsigned char **bytes; /* [vocab_size - n_special] decoded token_bytes */
    int *lens;
} vx_tokenizer;

/* Load tekken.json for a model with vocab_size ids. Text id t >= n_special is
 * vocab[t - n_special].token_bytes (base64). Fails (-1, message in err naming
 * the file) when the file is malformed or has fewer than vocab_size - n_special
 * vocab entries. A missing special_tokens list is allowed. */
int vx_tok_load(const char *path, int vocab_size, vx_tokenizer *t, char *err, size_t err_len);
void vx_tok_free(vx_tokenizer *t);
/* Id of a special token by its text (e.g. "[STREAMING_PAD]"), or -1. */
int vx_tok_special_id(const vx_tokenizer *t, const char *name);
/* Bytes of a text token; NULL (len 0) for control ids or ids out of range. */
const unsigned char *vx_tok_bytes(const vx_tokenizer *t, int id, int *len);

/* Streaming UTF-8: feed token bytes, get only complete characters out. A
 * partial character is kept for the next call; invalid sequences become
 * U+FFFD (EF BF BD). */
typedef struct { unsigned char pend[4]; int n_pend; } vx_utf8_stream;
/* Appends the complete characters of (pending + in) to out (NUL-terminated,
 * at most out_max-1 bytes); returns the number of bytes written. out_max must
 * be >= 3 * (n + 4) + 1 to be sure nothing is cut. */
size_t vx_utf8_push(vx_utf8_stream *u, const unsigned char *in, size_t n, char *out, size_t out_max);
/* End of utterance: whatever is pending is invalid and becomes U+FFFD. */
size_t vx_utf8_flush(vx_utf8_stream *u, char *out, size_t out_max);
#endif
