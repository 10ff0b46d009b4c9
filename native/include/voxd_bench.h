/*
 * voxd_bench.h - machine measurements for `voxd bench` (exported by
 * libvoxd_engine so the benchmark's ratios come from the same run, the same
 * compiler and the same threads as the engine it measures).
 *
 * Both functions are slow on purpose (tens to hundreds of milliseconds per
 * repetition), allocate nothing that outlives the call, and are safe to call
 * from any thread, but they measure the whole machine: run them while nothing
 * else (an engine stream included) is computing.
 */
#ifndef VOXD_BENCH_H
#define VOXD_BENCH_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef VX_EXPORT
#if defined(__GNUC__)
#define VX_EXPORT __attribute__((visibility("default")))
#else
#define VX_EXPORT
#endif
#endif

/* Sustained memory read bandwidth in GB/s (10^9 bytes per second).
 *
 * Allocates a buffer of `bytes` (rounded down to whole 4 KiB pages per
 * thread; at least 1 MiB in all), fills it, then has n_threads threads read
 * disjoint equal parts of it at once, summing it with wide integer loads
 * (AVX2 where the CPU has it, plain 64-bit words otherwise) so that the
 * arithmetic is never the bound. Each repetition is timed from a barrier that
 * starts every thread to the moment the last one finishes; the best of `reps`
 * is returned. Use a buffer much larger than the last-level cache (1 GiB).
 *
 * n_threads <= 0 means one per online CPU; reps <= 0 means 3.
 * Returns a negative value when the buffer or a thread cannot be had. */
VX_EXPORT double vx_measure_read_bandwidth(size_t bytes, int n_threads, int reps);

/* Peak float32 multiply-add throughput in GFLOP/s (one FMA = 2 FLOP), summed
 * over n_threads threads running at once: independent chains of 512-bit FMAs
 * (AVX-512 CPUs), 256-bit FMAs (AVX2+FMA), 128-bit FMAs (AArch64 NEON), or the compiler's rendering
 * of a plain multiply-add loop elsewhere. It is the same-run ceiling that the
 * engine's compute-bound stages (encoder, prefill) are compared with.
 *
 * n_threads <= 0 means one per online CPU. Best of 5 repetitions of about
 * 50 ms each. Returns a negative value when a thread cannot be started. */
VX_EXPORT double vx_measure_fma_peak(int n_threads);

/* Peak int8 dot-product throughput in GOP/s (a multiply-add counts 2, as an
 * FMA lane does), the instructions of the Q8/Q4 kernels: vpdpbusd on zmm
 * (AVX512-VNNI) or ymm (AVX-VNNI), vpmaddubsw + vpaddw (AVX2: the Q4
 * kernels' int16 accumulation; Q8's needs a vpmaddwd more), SDOT
 * (AArch64 with the dot-product extension); 12 independent chains per
 * thread, best of 5 repetitions. The compute roof of the int8 matrix work.
 * Returns a negative value where the CPU has none of these (or a thread
 * cannot be started). */
VX_EXPORT double vx_measure_int8_peak(int n_threads);

#ifdef __cplusplus
}
#endif
#endif /* VOXD_BENCH_H */
