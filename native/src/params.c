/* params.c - read params.json: every dimension of the model comes from here. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "json.h"
#include "util.h"

/* Required positive integer at obj.key; names the path in the message. */
static int get_int(const json_value *obj, const char *where, const char *key, int *out,
                   const char *path, char *err, size_t err_len) {
    const json_value *v = json_get(obj, key);
    long long x;
    if (!v) {
        vx_errf(err, err_len, path, "missing key %s%s", where, key);
        return -1;
    }
    if (json_as_int(v, &x) != 0 || x <= 0 || x > (1LL << 30)) {
        vx_errf(err, err_len, path, "%s%s must be a positive integer", where, key);
        return -1;
    }
    *out = (int)x;
    return 0;
}

static int get_num(const json_value *obj, const char *where, const char *key, double def,
                   double *out, const char *path, char *err, size_t err_len) {
    const json_value *v = json_get(obj, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (v->type != JSON_NUMBER || !(v->number > 0)) {
        vx_errf(err, err_len, path, "%s%s must be a positive number", where, key);
        return -1;
    }
    *out = v->number;
    return 0;
}

static int read_stack(const json_value *o, const char *where, vx_tf_params *t, int window_required,
                      const char *path, char *err, size_t err_len) {
    if (get_int(o, where, "dim", &t->dim, path, err, err_len) ||
        get_int(o, where, "n_layers", &t->n_layers, path, err, err_len) ||
        get_int(o, where, "n_heads", &t->n_heads, path, err, err_len) ||
        get_int(o, where, "n_kv_heads", &t->n_kv_heads, path, err, err_len) ||
        get_int(o, where, "head_dim", &t->head_dim, path, err, err_len) ||
        get_int(o, where, "hidden_dim", &t->hidden_dim, path, err, err_len))
        return -1;
    if (json_get(o, "sliding_window") || window_required) {
        if (get_int(o, where, "sliding_window", &t->window, path, err, err_len)) return -1;
    } else {
        t->window = 1 << 30; /* no window: full causal attention */
    }
    if (get_num(o, where, "norm_eps", 1e-5, &t->norm_eps, path, err, err_len) ||
        get_num(o, where, "rope_theta", 1e6, &t->rope_theta, path, err, err_len))
        return -1;
    if (t->n_heads % t->n_kv_heads != 0) {
        vx_errf(err, err_len, path, "%sn_heads (%d) must be a multiple of n_kv_heads (%d)",
                where, t->n_heads, t->n_kv_heads);
        return -1;
    }
    if (t->head_dim % 2 != 0) {
        vx_errf(err, err_len, path, "%shead_dim (%d) must be even for RoPE", where,
                t->head_dim);
        return -1;
    }
    return 0;
}

int vx_params_load(const char *path, vx_params *p, char *err, size_t err_len) {
    json_value *root = NULL;
    int rc = -1;
    if (json_load_file(path, &root, err, err_len) != 0) goto out;
    memset(p, 0, sizeof *p);
    if (read_stack(root, "", &p->dec, 0, path, err, err_len)) goto out;
    if (get_int(root, "", "vocab_size", &p->vocab_size, path, err, err_len)) goto out;
    p->ada_dim = 32;
    if (json_get(root, "ada_rms_norm_t_cond_dim") &&
        get_int(root, "", "ada_rms_norm_t_cond_dim", &p->ada_dim, path, err, err_len))
        goto out;

    const char *wma = "multimodal.whisper_model_args.";
    const json_value *enc = json_path(root, "multimodal.whisper_model_args.encoder_args");
    if (!enc || enc->type != JSON_OBJECT) {
        vx_errf(err, err_len, path, "missing object %sencoder_args", wma);
        goto out;
    }
    if (read_stack(enc, "encoder_args.", &p->enc, 0, path, err, err_len)) goto out;
    const json_value *audio = json_get(enc, "audio_encoding_args");
    if (!audio || audio->type != JSON_OBJECT) {
        vx_errf(err, err_len, path, "missing object encoder_args.audio_encoding_args");
        goto out;
    }
    const char *aw = "encoder_args.audio_encoding_args.";
    if (get_int(audio, aw, "num_mel_bins", &p->n_mels, path, err, err_len) ||
        get_int(audio, aw, "sampling_rate", &p->sample_rate, path, err, err_len) ||
        get_int(audio, aw, "hop_length", &p->hop, path, err, err_len) ||
        get_int(audio, aw, "window_size", &p->window_size, path, err, err_len) ||
        get_num(audio, aw, "global_log_mel_max", 1.5, &p->log_mel_max, path, err, err_len))
        goto out;
    const json_value *ds = json_path(root, "multimodal.whisper_model_args.downsample_args");
    p->downsample = 4;
    if (ds && get_int(ds, "downsample_args.", "downsample_factor", &p->downsample, path, err,
                      err_len))
        goto out;
    /* The streaming schedule is built around these: say so instead of misbehaving. */
    if (p->sample_rate != 16000 || p->hop != 160 || p->window_size != 400) {
        vx_errf(err, err_len, path,
                "audio_encoding_args must be sampling_rate 16000, hop_length 160, "
                "window_size 400 (got %d, %d, %d)",
                p->sample_rate, p->hop, p->window_size);
        goto out;
    }
    /* 1 text position = 2 * downsample mel frames = 1280 samples. */
    if (p->downsample != 4) {
        vx_errf(err, err_len, path, "downsample_factor must be 4 (got %d)", p->downsample);
        goto out;
    }
    rc = 0;
out:
    json_free(root);
    return rc;
}
