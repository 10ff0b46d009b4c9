/* mel.c - the log-mel front end (spec section 4): periodic Hann window of
 * 400, 201-bin power spectrum by a direct DFT (400 is no power of two, and at
 * 100 frames/s a table DFT costs ~16 M multiply-adds per second), Slaney mel
 * filters with area normalisation, log10 clamp and scaling. Framing for the
 * stream lives in stream.c; this file turns one 400-sample window into one
 * frame. */
#include <math.h>
#include <stdlib.h>

#include "engine.h"

static double hz_to_mel(double f) {
    const double f_sp = 200.0 / 3.0, brk = 1000.0, logstep = log(6.4) / 27.0;
    return f < brk ? f / f_sp : brk / f_sp + log(f / brk) / logstep;
}

static double mel_to_hz(double mel) {
    const double f_sp = 200.0 / 3.0, brk = 1000.0, logstep = log(6.4) / 27.0;
    const double min_log_mel = brk / f_sp;
    return mel < min_log_mel ? f_sp * mel : brk * exp(logstep * (mel - min_log_mel));
}

int vx_mel_tables_init(vx_model *m) {
    const int n_fft = m->p.window_size, n_freq = n_fft / 2 + 1, n_mels = m->p.n_mels;
    const double pi = 3.14159265358979323846, fmax = m->p.sample_rate / 2.0;
    m->n_fft = n_fft;
    m->n_freq = n_freq;
    m->hann = malloc(sizeof(double) * (size_t)n_fft);
    m->dft_cos = malloc(sizeof(double) * (size_t)n_fft * n_freq);
    m->dft_sin = malloc(sizeof(double) * (size_t)n_fft * n_freq);
    m->mel_fb = calloc((size_t)n_mels * n_freq, sizeof(float));
    double *pts = malloc(sizeof(double) * (size_t)(n_mels + 2));
    if (!m->hann || !m->dft_cos || !m->dft_sin || !m->mel_fb || !pts) {
        free(pts);
        return -1;
    }
    for (int k = 0; k < n_fft; k++) m->hann[k] = 0.5 - 0.5 * cos(2.0 * pi * k / n_fft);
    for (int f = 0; f < n_freq; f++)
        for (int k = 0; k < n_fft; k++) {
            /* reduce f*k mod n_fft first so the angle stays small and exact */
            double a = 2.0 * pi * (double)((long)f * k % n_fft) / n_fft;
            m->dft_cos[(size_t)f * n_fft + k] = cos(a);
            m->dft_sin[(size_t)f * n_fft + k] = sin(a);
        }
    double mlo = hz_to_mel(0.0), mhi = hz_to_mel(fmax);
    for (int i = 0; i < n_mels + 2; i++) pts[i] = mel_to_hz(mlo + (mhi - mlo) * i / (n_mels + 1));
    for (int i = 0; i < n_mels; i++) {
        double lo = pts[i], c = pts[i + 1], hi = pts[i + 2], norm = 2.0 / (hi - lo);
        for (int f = 0; f < n_freq; f++) {
            double hz = fmax * f / (n_freq - 1);
            double up = (hz - lo) / (c - lo), down = (hi - hz) / (hi - c);
            double w = up < down ? up : down;
            if (w > 0) m->mel_fb[(size_t)i * n_freq + f] = (float)(w * norm);
        }
    }
    free(pts);
    return 0;
}

void vx_mel_tables_free(vx_model *m) {
    free(m->hann);
    free(m->dft_cos);
    free(m->dft_sin);
    free(m->mel_fb);
    m->hann = m->dft_cos = m->dft_sin = NULL;
    m->mel_fb = NULL;
}

void vx_mel_frame(const vx_model *m, const float *samples, float *out) {
    const int n_fft = m->n_fft, n_freq = m->n_freq, n_mels = m->p.n_mels;
    double xw[512], power[257];
    for (int k = 0; k < n_fft; k++) xw[k] = m->hann[k] * samples[k];
    for (int f = 0; f < n_freq; f++) {
        const double *c = m->dft_cos + (size_t)f * n_fft, *s = m->dft_sin + (size_t)f * n_fft;
        double re = 0, im = 0;
        for (int k = 0; k < n_fft; k++) {
            re += xw[k] * c[k];
            im += xw[k] * s[k];
        }
        power[f] = re * re + im * im;
    }
    const double floor_v = m->p.log_mel_max - 8.0;
    for (int i = 0; i < n_mels; i++) {
        const float *w = m->mel_fb + (size_t)i * n_freq;
        double e = 0;
        for (int f = 0; f < n_freq; f++) e += w[f] * power[f];
        double l = log10(e > 1e-10 ? e : 1e-10);
        if (l < floor_v) l = floor_v;
        out[i] = (float)((l + 4.0) / 4.0);
    }
}
