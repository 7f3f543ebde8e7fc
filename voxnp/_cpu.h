/* Run-time CPU dispatch: which kernel sets this CPU runs, and how a variant is compiled.
 *
 * voxnp is built for the x86-64 baseline (no -march=native), so one build runs on any
 * x86-64 CPU. Each kernel is compiled several times, once per instruction set, with the
 * target given by VOXNP_TARGET_BEGIN("...") ... VOXNP_TARGET_END around the variant's
 * code; the kernel set is chosen once at import (voxnp/cpu.py, VOXNP_CPU overrides) and
 * passed to each product, which switches to its variant.
 *
 * Kernel sets, lowest first (a set needs all the features of the ones it names):
 *   portable    plain C (any CPU; the same integer sums and float order as the SIMD sets)
 *   avx2        AVX2 + FMA (the floor of the SIMD sets)
 *   avxvnni     avx2 + AVX-VNNI (vpdpwssd on 256 bits: Alder Lake and later)
 *   avx512      AVX-512 F/BW/VL/DQ + avx2 (Skylake-SP and later, Zen 4)
 *   avx512vnni  avx512 + AVX512_VNNI (vpdpwssd on 512 bits: Cascade Lake and later)
 *   avx512bf16  avx512vnni + AVX512_BF16 (vdpbf16ps: Cooper Lake, Sapphire Rapids, Zen 4)
 *   amx         avx512bf16 + AMX-TILE/AMX-INT8 (tdpbusd on 16x64 tiles: Sapphire Rapids and
 *               later; Linux must grant the tile state, asked for once with arch_prctl)
 * Adding a kernel: see /work/notes or the README ("Speed and memory"): write its variants
 * between VOXNP_TARGET_BEGIN/END with the set's target string, and switch on the set.
 */
#ifndef VOXNP_CPU_H
#define VOXNP_CPU_H

#include <stdint.h>

enum {
    KSET_PORTABLE = 0,
    KSET_AVX2,
    KSET_AVXVNNI,
    KSET_AVX512,
    KSET_AVX512VNNI,
    KSET_AVX512BF16,
    KSET_AMX,
    KSET_COUNT
};

static const char *const kset_names[KSET_COUNT] = {
    "portable", "avx2", "avxvnni", "avx512", "avx512vnni", "avx512bf16", "amx"};

/* The compiler targets of each set's variants (strings for VOXNP_TARGET_BEGIN). */
#define VOXNP_T_AVX2 "avx,avx2,fma,f16c,bmi,bmi2,popcnt"
#define VOXNP_T_AVXVNNI VOXNP_T_AVX2 ",avxvnni"
#define VOXNP_T_AVX512 VOXNP_T_AVX2 ",avx512f,avx512bw,avx512vl,avx512dq,avx512cd"
#define VOXNP_T_AVX512VNNI VOXNP_T_AVX512 ",avx512vnni"
#define VOXNP_T_AVX512BF16 VOXNP_T_AVX512VNNI ",avx512bf16"
#define VOXNP_T_AMX VOXNP_T_AVX512BF16 ",amx-tile,amx-int8"

/* Everything defined between these two gets the target (GCC and clang). */
#define VOXNP_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define VOXNP_TARGET_BEGIN(t) VOXNP_PRAGMA(clang attribute push(__attribute__((target(t))), apply_to = function))
#define VOXNP_TARGET_END VOXNP_PRAGMA(clang attribute pop)
#else
#define VOXNP_TARGET_BEGIN(t) VOXNP_PRAGMA(GCC push_options) VOXNP_PRAGMA(GCC target(t))
#define VOXNP_TARGET_END VOXNP_PRAGMA(GCC pop_options)
#endif

#if defined(__x86_64__) || defined(__i386__)
#define VOXNP_X86 1
#include <cpuid.h>
#include <immintrin.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

static inline uint64_t cpu_xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

/* Linux hands out the AMX tile data state only on request (once per process, for all its
 * threads); 1 if granted. */
static int cpu_amx_granted(void)
{
#if defined(__linux__) && defined(SYS_arch_prctl)
    static int granted = -1;
    if (granted < 0)
        granted = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
    return granted;
#else
    return 0;
#endif
}

/* 1 if this CPU (and the operating system, which must save the wider registers) runs
 * kernel set `s`. */
static int cpu_runs_set(int s)
{
    unsigned a, b, c, d, b7 = 0, c7 = 0, d7 = 0, a71 = 0;
    if (s <= KSET_PORTABLE) return s == KSET_PORTABLE;
    if (s >= KSET_COUNT || !__get_cpuid(1, &a, &b, &c, &d)) return 0;
    int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    if (!(fma && osxsave && avx)) return 0;
    uint64_t xcr0 = cpu_xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return 0;                          /* SSE and AVX state */
    if (__get_cpuid_max(0, 0) >= 7) {
        __cpuid_count(7, 0, a, b7, c7, d7);
        __cpuid_count(7, 1, a71, b, c, d);
    }
    int avx2 = (b7 >> 5) & 1;
    int avx512 = ((b7 >> 16) & 1) && ((b7 >> 17) & 1) && ((b7 >> 28) & 1) && ((b7 >> 30) & 1) &&
                 ((b7 >> 31) & 1) && (xcr0 & 0xE0) == 0xE0;    /* F, DQ, CD, BW, VL; opmask, ZMM state */
    int avx512vnni = (c7 >> 11) & 1, avxvnni = (a71 >> 4) & 1, avx512bf16 = (a71 >> 5) & 1;
    int amx = ((d7 >> 24) & 1) && ((d7 >> 25) & 1) && (xcr0 & 0x60000) == 0x60000;  /* TILE, INT8; tile state */
    switch (s) {
    case KSET_AVX2: return avx2;
    case KSET_AVXVNNI: return avx2 && avxvnni;
    case KSET_AVX512: return avx2 && avx512;
    case KSET_AVX512VNNI: return avx2 && avx512 && avx512vnni;
    case KSET_AVX512BF16: return avx2 && avx512 && avx512vnni && avx512bf16;
    case KSET_AMX: return avx2 && avx512 && avx512vnni && avx512bf16 && amx && cpu_amx_granted();
    }
    return 0;
}

/* Floats below 2^-126 (subnormals) read as and written as zero (MXCSR DAZ and FTZ) on the
 * calling thread, until cpu_denormals_restore(the returned state). A softmax over peaked
 * scores has a tail of such weights, and each one costs a microcode assist otherwise: the
 * encoder's attention ran 24x slower on scores 30x the unit scale (measured). What is lost
 * is below 2^-126 per term, far under float32's rounding of any sum it joins. */
static inline unsigned cpu_denormals_flush(void)
{
    unsigned state = _mm_getcsr();
    _mm_setcsr(state | 0x8040);
    return state;
}
static inline void cpu_denormals_restore(unsigned state) { _mm_setcsr(state); }
#else
static int cpu_runs_set(int s) { return s == KSET_PORTABLE; }
static inline unsigned cpu_denormals_flush(void) { return 0; }
static inline void cpu_denormals_restore(unsigned state) { (void)state; }
#endif

#endif
