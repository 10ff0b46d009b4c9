/* tokenizer.c - Tekken decoding (id -> bytes) from tekken.json, and a
 * streaming UTF-8 assembler for text deltas.
 *
 * tekken.json: {"config": {"default_num_special_tokens": 1000, ...},
 *               "vocab": [{"rank": 0, "token_bytes": "<base64>", ...}, ...],
 *               "special_tokens": [{"rank": 0, "token_str": "<unk>", ...}, ...]}
 * Id t < n_special is a control token; id t >= n_special is vocab[t - n_special]. */
#include "tokenizer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "util.h"

/* ---- base64 (RFC 4648, standard alphabet, padded, canonical) ---- */

static int b64_val(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Decode s[0..n) into out (may be NULL to only validate and measure).
 * Returns the decoded length, or -1 if s is not valid base64: length not a
 * multiple of 4, a character outside the alphabet, '=' anywhere but the last
 * one or two places, or non-zero bits under the padding. */
static long b64_decode(const char *s, size_t n, unsigned char *out) {
    if (n % 4 != 0) return -1;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        int last = i + 4 == n;
        int pad = 0;
        if (last && s[i + 3] == '=') pad = s[i + 2] == '=' ? 2 : 1;
        int v[4] = {0, 0, 0, 0};
        for (int k = 0; k < 4 - pad; k++) {
            v[k] = b64_val((unsigned char)s[i + (size_t)k]);
            if (v[k] < 0) return -1;
        }
        uint32_t w = ((uint32_t)v[0] << 18) | ((uint32_t)v[1] << 12) | ((uint32_t)v[2] << 6) |
                     (uint32_t)v[3];
        if ((pad == 1 && (w & 0xFF)) || (pad == 2 && (w & 0xFFFF))) return -1;
        if (out) {
            out[o] = (unsigned char)(w >> 16);
            if (pad < 2) out[o + 1] = (unsigned char)(w >> 8);
            if (pad < 1) out[o + 2] = (unsigned char)w;
        }
        o += (size_t)(3 - pad);
    }
    return (long)o;
}

/* ---- loading ---- */

/* The text tokens: count entries of vocab decoded into one allocation. */
static int load_vocab(vx_tokenizer *t, const json_value *vocab, size_t count, const char *path,
                      char *err, size_t err_len) {
    /* Pass 1: validate and measure, so all pieces fit one allocation. */
    size_t total = 0;
    for (size_t i = 0; i < count; i++) {
        const json_value *e = &vocab->items[i];
        const json_value *tb = json_get(e, "token_bytes");
        if (!tb || tb->type != JSON_STRING) {
            vx_errf(err, err_len, path, "vocab[%zu] has no \"token_bytes\" string", i);
            return -1;
        }
        /* Ids are positions in the array: a rank that disagrees means the
         * file is not in rank order and the ids would be wrong. */
        const json_value *rk = json_get(e, "rank");
        long long r;
        if (rk && json_as_int(rk, &r) != 0) {
            vx_errf(err, err_len, path, "vocab[%zu]: rank is not an integer", i);
            return -1;
        }
        if (rk && r != (long long)i) {
            vx_errf(err, err_len, path, "vocab[%zu] has rank %lld (entries must be in rank order)", i, r);
            return -1;
        }
        long dl = b64_decode(tb->str, tb->str_len, NULL);
        if (dl < 0) {
            vx_errf(err, err_len, path, "vocab[%zu]: token_bytes \"%.40s\" is not valid base64", i,
                    tb->str);
            return -1;
        }
        if ((size_t)dl > SIZE_MAX - total || dl > 0x7fffffff) {
            vx_errf(err, err_len, path, "vocab[%zu]: token too long", i);
            return -1;
        }
        total += (size_t)dl;
    }

    /* Pointer array followed by the bytes: freeing t->bytes frees all. */
    if (total > SIZE_MAX - 1 || count > (SIZE_MAX - 1 - total) / sizeof(unsigned char *)) {
        vx_errf(err, err_len, path, "vocab too large");
        return -1;
    }
    t->bytes = malloc(count * sizeof(unsigned char *) + total + 1);
    t->lens = malloc((count ? count : 1) * sizeof(int));
    if (!t->bytes || !t->lens) {
        vx_errf(err, err_len, path, "out of memory for %zu tokens", count);
        return -1;
    }
    unsigned char *blob = (unsigned char *)(t->bytes + count);
    size_t off = 0;
    for (size_t i = 0; i < count; i++) {
        const json_value *tb = json_get(&vocab->items[i], "token_bytes");
        long dl = b64_decode(tb->str, tb->str_len, blob + off);
        t->bytes[i] = blob + off;
        t->lens[i] = (int)dl;
        if ((int)dl > t->max_token_len) t->max_token_len = (int)dl;
        off += (size_t)dl;
    }
    return 0;
}

/* The names of the control ids, where the file lists them. */
static int load_specials(vx_tokenizer *t, const json_value *root, const char *path, char *err,
                         size_t err_len) {
    if (t->n_special > 0) {
        t->special_names = calloc((size_t)t->n_special, sizeof(char *));
        if (!t->special_names) {
            vx_errf(err, err_len, path, "out of memory");
            return -1;
        }
    }
    /* A missing list is fine: ids below n_special are then unnamed controls. */
    const json_value *sp = json_get(root, "special_tokens");
    if (sp && sp->type != JSON_NULL) {
        if (sp->type != JSON_ARRAY) {
            vx_errf(err, err_len, path, "\"special_tokens\" is not an array");
            return -1;
        }
        for (size_t i = 0; i < sp->n; i++) {
            const json_value *e = &sp->items[i];
            const json_value *rk = json_get(e, "rank");
            const json_value *ts = json_get(e, "token_str");
            long long r;
            if (!rk || json_as_int(rk, &r) != 0 || r < 0 || r >= t->n_special) {
                vx_errf(err, err_len, path,
                        "special_tokens[%zu]: rank must be an integer in 0..%d", i, t->n_special - 1);
                return -1;
            }
            if (!ts || ts->type != JSON_STRING) {
                vx_errf(err, err_len, path, "special_tokens[%zu]: missing \"token_str\" string", i);
                return -1;
            }
            if (t->special_names[r]) {
                vx_errf(err, err_len, path, "special_tokens[%zu]: rank %lld listed twice", i, r);
                return -1;
            }
            t->special_names[r] = malloc(ts->str_len + 1);
            if (!t->special_names[r]) {
                vx_errf(err, err_len, path, "out of memory");
                return -1;
            }
            memcpy(t->special_names[r], ts->str, ts->str_len + 1);
        }
    }
    return 0;
}

int vx_tok_load(const char *path, int vocab_size, vx_tokenizer *t, char *err, size_t err_len) {
    if (err && err_len) err[0] = 0;
    if (!t) return -1;
    memset(t, 0, sizeof *t);
    if (!path) return vx_errf(err, err_len, "(null)", "no path");
    if (vocab_size <= 0) return vx_errf(err, err_len, path, "vocab_size %d is not positive", vocab_size);

    json_value *root = NULL;
    int rc = -1;
    if (json_load_file(path, &root, err, err_len) != 0) goto out;
    if (root->type != JSON_OBJECT) {
        vx_errf(err, err_len, path, "top level is not a JSON object");
        goto out;
    }

    long long ns;
    const json_value *nsv = json_path(root, "config.default_num_special_tokens");
    if (!nsv) {
        vx_errf(err, err_len, path, "missing config.default_num_special_tokens");
        goto out;
    }
    if (json_as_int(nsv, &ns) != 0 || ns < 0 || ns > vocab_size) {
        vx_errf(err, err_len, path,
                "config.default_num_special_tokens must be an integer in 0..%d (vocab_size)",
                vocab_size);
        goto out;
    }
    t->n_special = (int)ns;
    t->vocab_size = vocab_size;
    size_t count = (size_t)(vocab_size - t->n_special);

    const json_value *vocab = json_get(root, "vocab");
    if (!vocab || vocab->type != JSON_ARRAY) {
        vx_errf(err, err_len, path, "missing \"vocab\" array");
        goto out;
    }
    if (vocab->n < count) {
        vx_errf(err, err_len, path,
                "vocab has %zu entries, but the model needs %zu (vocab_size %d - %d special ids)",
                vocab->n, count, vocab_size, t->n_special);
        goto out;
    }

    if (load_vocab(t, vocab, count, path, err, err_len) != 0 ||
        load_specials(t, root, path, err, err_len) != 0)
        goto out;
    rc = 0;
out:
    json_free(root);
    if (rc != 0) vx_tok_free(t);
    return rc;
}

void vx_tok_free(vx_tokenizer *t) {
    if (!t) return;
    if (t->special_names)
        for (int i = 0; i < t->n_special; i++) free(t->special_names[i]);
    free(t->special_names);
    free(t->bytes); /* the pieces live in the same block */
    free(t->lens);
    memset(t, 0, sizeof *t);
}

int vx_tok_special_id(const vx_tokenizer *t, const char *name) {
    if (!t || !name || !t->special_names) return -1;
    for (int i = 0; i < t->n_special; i++)
        if (t->special_names[i] && strcmp(t->special_names[i], name) == 0) return i;
    return -1;
}

const unsigned char *vx_tok_bytes(const vx_tokenizer *t, int id, int *len) {
    if (len) *len = 0;
    if (!t || !t->bytes || id < t->n_special || id >= t->vocab_size) return NULL;
    int k = id - t->n_special;
    if (len) *len = t->lens[k];
    return t->bytes[k];
}

/* ---- streaming UTF-8 ----
 * pend holds a valid prefix of one multi-byte character (lead byte first).
 * Invalid input follows the Unicode "maximal subpart" practice: each maximal
 * valid-but-truncated prefix, or each lone bad byte, becomes one U+FFFD. */

/* Bytes a sequence with this lead needs (2..4), or 0 for a byte that cannot
 * start one (ASCII is handled before). */
static int utf8_need(unsigned char c) {
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) return 3;
    if (c >= 0xF0 && c <= 0xF4) return 4;
    return 0; /* 80..BF continuation, C0/C1 overlong, F5..FF out of range */
}

/* Is c valid as byte number pos (1..3) after lead? The second byte is
 * narrowed to exclude overlongs (E0, F0), surrogates (ED), > U+10FFFF (F4). */
static int utf8_cont_ok(unsigned char lead, int pos, unsigned char c) {
    unsigned char lo = 0x80, hi = 0xBF;
    if (pos == 1) {
        if (lead == 0xE0) lo = 0xA0;
        else if (lead == 0xED) hi = 0x9F;
        else if (lead == 0xF0) lo = 0x90;
        else if (lead == 0xF4) hi = 0x8F;
    }
    return c >= lo && c <= hi;
}

typedef struct {
    char *out;
    size_t max, n;
} sink;

/* Write k bytes if they fit whole (a character is never cut). */
static void put(sink *s, const unsigned char *b, size_t k) {
    if (s->max == 0 || s->n + k > s->max - 1) return;
    memcpy(s->out + s->n, b, k);
    s->n += k;
}

static const unsigned char REPL[3] = {0xEF, 0xBF, 0xBD};

size_t vx_utf8_push(vx_utf8_stream *u, const unsigned char *in, size_t n, char *out, size_t out_max) {
    sink s = {out, out ? out_max : 0, 0};
    if (u->n_pend < 0 || u->n_pend > 3) u->n_pend = 0; /* not a state we produce */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = in[i];
        if (u->n_pend > 0) {
            if (utf8_cont_ok(u->pend[0], u->n_pend, c)) {
                u->pend[u->n_pend++] = c;
                if (u->n_pend == utf8_need(u->pend[0])) {
                    put(&s, u->pend, (size_t)u->n_pend);
                    u->n_pend = 0;
                }
                continue;
            }
            /* truncated character: one U+FFFD, then c starts afresh */
            put(&s, REPL, 3);
            u->n_pend = 0;
        }
        if (c < 0x80) {
            put(&s, &c, 1);
        } else if (utf8_need(c)) {
            u->pend[0] = c;
            u->n_pend = 1;
        } else {
            put(&s, REPL, 3);
        }
    }
    if (out && out_max) out[s.n] = 0;
    return s.n;
}

size_t vx_utf8_flush(vx_utf8_stream *u, char *out, size_t out_max) {
    sink s = {out, out ? out_max : 0, 0};
    if (u->n_pend != 0) put(&s, REPL, 3);
    u->n_pend = 0;
    if (out && out_max) out[s.n] = 0;
    return s.n;
}
