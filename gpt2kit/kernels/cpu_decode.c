/* CPU kernels for decoding GPT-2: weight-streaming linears (fp32, int8, int4) and a whole single-token step.

   Decoding one token reads every weight once, so its speed is memory bandwidth plus whatever else runs per
   token. These kernels stream each weight row once for all rows of the batch, and `gpt2_decode_step` runs the
   whole model for one new token per row in one call, so nothing per operation (Python, dispatch) is paid.
   gpt2kit/kernels/__init__.py compiles this file on first use; gpt2kit/inference.py says why it exists.

   Weight formats, row-major (out, in) as nn.Linear's:
     KIND_F32   weight float[out][in]
     KIND_INT8  weight int8[out][in], scale float[out]:                 w = q * scale[o]
     KIND_INT4  weight uint8[out][row bytes], scale and offset bf16[out][in/32]: w = q * scale + offset, q in
                0..15 per group of 32 weights; two groups share 32 bytes, byte j holding weight j of the first
                (low nibble) and of the second (high nibble); an odd last group has 32 bytes of its own.
   Activations are fp32 between the kernels. Where the CPU has AVX-512 VNNI, the int8 and int4 linears quantize
   each activation row to int8 inside the kernel (one scale per row) and multiply in integers. */

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* fp16 keys and values (the quantized models' caches, as llama.cpp keeps them: half the attention's memory
   traffic), converted by F16C; without it the caches stay fp32 */
#if defined(__F16C__)
#include <immintrin.h>
#define HALF_CACHES 1
static inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }
static inline uint16_t float_to_half(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }
#else
#define HALF_CACHES 0
static inline float half_to_float(uint16_t h) { (void)h; return 0.f; } /* never called: no half caches */
static inline uint16_t float_to_half(float f) { (void)f; return 0; }
#endif

enum { KIND_F32 = 0, KIND_INT8 = 1, KIND_INT4 = 2 };
enum { ACT_GELU_TANH = 0, ACT_GELU_ERF = 1, ACT_RELU = 2 };
#define GROUP 32
/* rows at or below this stream their int8/int4 weights straight into the dot products; above it each weight row
   is dequantized once into fp32 and shared by all rows */
#define FUSED_ROWS 2
/* int4 weight rows the integer kernel prefetches ahead: it computes enough per byte that the hardware prefetcher
   alone left the memory idle; 6 rows took the output layer from 2.3-2.9 to 1.8-2.4 ms (alternating runs) */
#define PREFETCH_ROWS 6

typedef struct {
    int64_t kind, in, out;
    const void *weight;
    const void *scale;
    const void *offset;
    const float *bias;
    const int32_t *row_sums; /* int8: sum of each row's q, for the integer dot products' unsigned shift */
} Linear;

typedef struct {
    const float *ln_1_weight, *ln_1_bias;
    Linear c_attn, attn_c_proj;
    const float *ln_2_weight, *ln_2_bias;
    Linear c_fc, mlp_c_proj;
    float attn_scale;
} Layer;

typedef struct {
    int64_t n_layer, n_head, n_embd, mlp_width, activation;
    float eps;
    const float *wte, *wpe, *ln_f_weight, *ln_f_bias;
    Linear head;
    const Layer *layers;
} Model;

static inline float bf16_to_float(uint16_t v) {
    union { uint32_t u; float f; } c = { (uint32_t)v << 16 };
    return c.f;
}

/* bytes of one int4 row: pairs of groups in 32 bytes, an odd last group in 32 of its own */
static inline int64_t int4_row_bytes(int64_t in) { return (in / GROUP + 1) / 2 * 32; }

static inline int int4_weight(const uint8_t *restrict q, int64_t groups, int64_t g, int j) {
    const uint8_t *pair = q + (g & ~(int64_t)1) * 16;
    if ((g | 1) < groups) return g & 1 ? pair[j] >> 4 : pair[j] & 15;
    return pair[j] & 15;
}

static float dot_int4(const uint8_t *restrict q, const uint16_t *restrict scale, const uint16_t *restrict offset,
                      const float *restrict x, const float *restrict xsum, int64_t n) {
    float acc = 0.f;
    for (int64_t g = 0; g < n / GROUP; g++) {
        float s = 0.f;
        #pragma omp simd reduction(+:s)
        for (int j = 0; j < GROUP; j++) s += (float)int4_weight(q, n / GROUP, g, j) * x[g * GROUP + j];
        acc += bf16_to_float(scale[g]) * s + bf16_to_float(offset[g]) * xsum[g];
    }
    return acc;
}

/* int8 without VNNI: each weight converted to fp32, as the compiler vectorizes it */
static float dot_int8(const int8_t *restrict w, const float *restrict x, int64_t n) {
    float acc = 0.f;
    #pragma omp simd reduction(+:acc)
    for (int64_t i = 0; i < n; i++) acc += (float)w[i] * x[i];
    return acc;
}

#if defined(__AVX512F__)
#include <immintrin.h>

/* Several accumulators per dot product: one FMA chain would be latency-bound below the memory's pace. w is
   prefetched 4 KB ahead, into the rows that follow it: a matrix-vector product streamed 53 GB/s so, 51 without
   (a plain sum over the same memory: 56). */
static float dot_f32(const float *restrict w, const float *restrict x, int64_t n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        for (int line = 0; line < 4; line++) _mm_prefetch((const char *)(w + i + 1024 + 16 * line), _MM_HINT_T0);
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 32), _mm512_loadu_ps(x + i + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 48), _mm512_loadu_ps(x + i + 48), a3);
    }
    float acc = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    for (; i < n; i++) acc += w[i] * x[i];
    return acc;
}

/* out[b] = dot(w, x + b * n) for b < rows (rows <= 8): w is loaded once per chunk for all rows. */
static void dot_rows_f32(const float *restrict w, const float *restrict x, int64_t n, int64_t rows,
                         float *restrict out) {
    __m512 acc[8];
    for (int64_t b = 0; b < rows; b++) acc[b] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 wv = _mm512_loadu_ps(w + i);
        for (int64_t b = 0; b < rows; b++) acc[b] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + b * n + i), acc[b]);
    }
    for (int64_t b = 0; b < rows; b++) {
        float s = _mm512_reduce_add_ps(acc[b]);
        for (int64_t j = i; j < n; j++) s += w[j] * x[b * n + j];
        out[b] = s;
    }
}
#else
static float dot_f32(const float *restrict w, const float *restrict x, int64_t n) {
    float acc = 0.f;
    #pragma omp simd reduction(+:acc)
    for (int64_t i = 0; i < n; i++) acc += w[i] * x[i];
    return acc;
}

static void dot_rows_f32(const float *restrict w, const float *restrict x, int64_t n, int64_t rows,
                         float *restrict out) {
    for (int64_t b = 0; b < rows; b++) out[b] = dot_f32(w, x + b * n, n);
}
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define INTEGER_DOTS 1
/* With VNNI the quantized linears quantize each activation row to int8 (one scale per row, as fbgemm's dynamic
   linear does per tensor) and multiply in integers: 64 weights per instruction, so that the kernels stay at the
   memory's pace where converting every weight to fp32 was compute-bound (measured 26 int8 weights/ns a core). */

static inline __m512 bf16_lanes(__m256i bits) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

/* sum_i (xq_i + 128) w_i for n (1, 4 or 8) activation rows shifted to unsigned, int8 w; the caller removes
   128 * sum(w). Each 64 weights are loaded once for all n rows. */
static inline __attribute__((always_inline)) void idot_int8_rows(const int n, const int8_t *restrict w,
                                                                 const uint8_t *restrict xu, int64_t in,
                                                                 int32_t *restrict out) {
    __m512i acc[8];
    for (int b = 0; b < n; b++) acc[b] = _mm512_setzero_si512();
    int64_t i = 0;
    for (; i + 64 <= in; i += 64) {
        const __m512i wv = _mm512_loadu_si512(w + i);
        for (int b = 0; b < n; b++) acc[b] = _mm512_dpbusd_epi32(acc[b], _mm512_loadu_si512(xu + b * in + i), wv);
    }
    for (int b = 0; b < n; b++) {
        int32_t s = _mm512_reduce_add_epi32(acc[b]);
        for (int64_t j = i; j < in; j++) s += (int32_t)xu[b * in + j] * w[j];
        out[b] = s;
    }
}

/* n (1, 4 or 8) activation rows against one int4 weight row, complete but for the bias: each pair of groups is
   unpacked once and serves all n, and the offsets' term is summed in the same registers before the one reduction per row. */
static inline __attribute__((always_inline)) void int4_rows(
    const int n, const uint8_t *restrict q, const uint16_t *restrict scale, const uint16_t *restrict offset,
    const int8_t *restrict xq, const float *restrict steps, const float *restrict xsum, int64_t groups, int64_t in,
    float *restrict out) {
    const __m256i nibble = _mm256_set1_epi8(15);
    const __m512i upper = _mm512_set1_epi32((int)0xFFFF0000u);
    __m512 acc[8];
    for (int b = 0; b < n; b++) acc[b] = _mm512_setzero_ps();
    int64_t g = 0;
    for (; g + 2 <= groups; g += 2) {
        const __m256i bytes = _mm256_loadu_si256((const __m256i *)(q + g * 16));
        const __m256i first = _mm256_and_si256(bytes, nibble);
        const __m256i second = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), nibble);
        const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(first), second, 1);
        int32_t pair;
        memcpy(&pair, scale + g, sizeof pair);
        const __m512i both = _mm512_set1_epi32(pair);
        const __m512 scales = _mm512_castsi512_ps(_mm512_mask_slli_epi32(_mm512_and_si512(both, upper), 0x00FF, both, 16));
        for (int b = 0; b < n; b++) {
            const __m512i sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), v, _mm512_loadu_si512(xq + b * in + g * GROUP));
            acc[b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scales, acc[b]);
        }
    }
    float tail[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (g < groups)
        for (int b = 0; b < n; b++) {
            int32_t s = 0;
            for (int j = 0; j < GROUP; j++) s += (int32_t)(q[g * 16 + j] & 15) * xq[b * in + g * GROUP + j];
            tail[b] = bf16_to_float(scale[g]) * (float)s;
        }
    for (int b = 0; b < n; b++) acc[b] = _mm512_mul_ps(acc[b], _mm512_set1_ps(steps[b]));
    for (int64_t h = 0; h < groups; h += 16) {
        const __mmask16 m = groups - h >= 16 ? 0xFFFF : (__mmask16)((1u << (groups - h)) - 1);
        const __m512 offsets = bf16_lanes(_mm256_maskz_loadu_epi16(m, offset + h));
        for (int b = 0; b < n; b++)
            acc[b] = _mm512_fmadd_ps(offsets, _mm512_maskz_loadu_ps(m, xsum + b * groups + h), acc[b]);
    }
    for (int b = 0; b < n; b++) out[b] = _mm512_reduce_add_ps(acc[b]) + tail[b] * steps[b];
}

/* xq = round(x / step) with step = max|x| / 127, per row; returns the step */
static float quantize_activations(const float *restrict x, int64_t n, int8_t *restrict xq) {
    __m512 top = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) top = _mm512_max_ps(top, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
    float peak = _mm512_reduce_max_ps(top);
    for (int64_t j = i; j < n; j++) peak = fmaxf(peak, fabsf(x[j]));
    const float step = peak > 0.f ? peak / 127.f : 1.f;
    const __m512 inverse = _mm512_set1_ps(1.f / step);
    for (i = 0; i + 16 <= n; i += 16)
        _mm_storeu_si128((__m128i *)(xq + i),
                         _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), inverse))));
    for (; i < n; i++) xq[i] = (int8_t)lrintf(x[i] / step);
    return step;
}
#else
#define INTEGER_DOTS 0
#endif

#if defined(__AVX512F__)
/* y[b][o..o+3] for four weight rows against four activation rows: 16 accumulators, so that each loaded chunk
   serves four products (a batch of decoding rows is compute-bound in fp32, where one row is memory-bound). */
static void tile_f32_4x4(const float *restrict w, const float *restrict x, int64_t n, float out[4][4],
                         const float *next) {
    __m512 acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int b = 0; b < 4; b++) acc[r][b] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 w0 = _mm512_loadu_ps(w + i), w1 = _mm512_loadu_ps(w + n + i);
        const __m512 w2 = _mm512_loadu_ps(w + 2 * n + i), w3 = _mm512_loadu_ps(w + 3 * n + i);
        if (next) /* the next four weight rows, a line each, while these compute: DRAM latency hidden */
            for (int r = 0; r < 4; r++) _mm_prefetch((const char *)(next + r * n + i), _MM_HINT_T0);
        for (int b = 0; b < 4; b++) {
            __m512 xv = _mm512_loadu_ps(x + b * n + i);
            __asm__("" : "+v"(xv)); /* one load into a register, not one folded into each of the four FMAs */
            acc[0][b] = _mm512_fmadd_ps(w0, xv, acc[0][b]);
            acc[1][b] = _mm512_fmadd_ps(w1, xv, acc[1][b]);
            acc[2][b] = _mm512_fmadd_ps(w2, xv, acc[2][b]);
            acc[3][b] = _mm512_fmadd_ps(w3, xv, acc[3][b]);
        }
    }
    for (int r = 0; r < 4; r++)
        for (int b = 0; b < 4; b++) {
            float v = _mm512_reduce_add_ps(acc[r][b]);
            for (int64_t j = i; j < n; j++) v += w[r * n + j] * x[b * n + j];
            out[r][b] = v;
        }
}

/* fp32 linear for several rows: 4 x 4 tiles, the edges one product at a time */
static void linear_f32_rows(const Linear *L, const float *restrict x, int64_t rows, float *restrict y) {
    const int64_t in = L->in, out = L->out, full_rows = rows / 4 * 4;
    const float *weight = (const float *)L->weight;
    #pragma omp parallel for schedule(static)
    for (int64_t o0 = 0; o0 < out; o0 += 4) {
        if (o0 + 4 <= out) {
            float tile[4][4];
            for (int64_t b0 = 0; b0 < full_rows; b0 += 4) {
                const float *next = b0 == 0 && o0 + 8 <= out ? weight + (o0 + 4) * in : NULL;
                tile_f32_4x4(weight + o0 * in, x + b0 * in, in, tile, next);
                for (int r = 0; r < 4; r++)
                    for (int b = 0; b < 4; b++)
                        y[(b0 + b) * out + o0 + r] = tile[r][b] + (L->bias ? L->bias[o0 + r] : 0.f);
            }
        }
        for (int64_t o = o0; o < o0 + 4 && o < out; o++)
            for (int64_t b = o0 + 4 <= out ? full_rows : 0; b < rows; b++)
                y[b * out + o] = dot_f32(weight + o * in, x + b * in, in) + (L->bias ? L->bias[o] : 0.f);
    }
}
#endif

/* the sum of each group of GROUP activations, per row (int4's offsets multiply them): malloc'd, rows x in/GROUP */
static float *group_sums(const float *restrict x, int64_t rows, int64_t in) {
    const int64_t groups = in / GROUP;
    float *sums = malloc(sizeof(float) * rows * groups);
    for (int64_t b = 0; b < rows; b++)
        for (int64_t g = 0; g < groups; g++) {
            float s = 0.f;
            for (int j = 0; j < GROUP; j++) s += x[b * in + g * GROUP + j];
            sums[b * groups + g] = s;
        }
    return sums;
}

static void dequantize_row(const Linear *L, int64_t o, float *restrict row) {
    const int64_t in = L->in;
    if (L->kind == KIND_INT8) {
        const int8_t *w = (const int8_t *)L->weight + o * in;
        const float s = ((const float *)L->scale)[o];
        #pragma omp simd
        for (int64_t i = 0; i < in; i++) row[i] = (float)w[i] * s;
        return;
    }
    const int64_t groups = in / GROUP;
    const uint8_t *q = (const uint8_t *)L->weight + o * int4_row_bytes(in);
    const uint16_t *scale = (const uint16_t *)L->scale + o * groups;
    const uint16_t *offset = (const uint16_t *)L->offset + o * groups;
    for (int64_t g = 0; g < groups; g++) {
        const float s = bf16_to_float(scale[g]), m = bf16_to_float(offset[g]);
        for (int j = 0; j < GROUP; j++) row[g * GROUP + j] = (float)int4_weight(q, groups, g, j) * s + m;
    }
}

#if INTEGER_DOTS
static void linear_integer(const Linear *L, const float *restrict x, int64_t rows, float *restrict y) {
    const int64_t in = L->in, out = L->out, groups = in / GROUP;
    int8_t *xq = malloc(rows * in);
    float *steps = malloc(sizeof(float) * rows), *xsum = NULL;
    for (int64_t b = 0; b < rows; b++) {
        steps[b] = quantize_activations(x + b * in, in, xq + b * in);
        if (L->kind == KIND_INT8)
            for (int64_t i = 0; i < in; i++) xq[b * in + i] ^= (int8_t)0x80; /* + 128: unsigned for dpbusd */
    }
    if (L->kind == KIND_INT4) xsum = group_sums(x, rows, in);
    #pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < out; o++) {
        const float bias = L->bias ? L->bias[o] : 0.f;
        if (L->kind == KIND_INT8) {
            const int8_t *w = (const int8_t *)L->weight + o * in;
            const float s = ((const float *)L->scale)[o];
            const int32_t shift = 128 * L->row_sums[o];
            int32_t dots[8];
            for (int64_t b = 0, n; b < rows; b += n) {
                n = rows - b >= 8 ? 8 : rows - b >= 4 ? 4 : 1; /* constants, so each call unrolls for its n */
                const uint8_t *xu = (const uint8_t *)xq + b * in;
                if (n == 8) idot_int8_rows(8, w, xu, in, dots);
                else if (n == 4) idot_int8_rows(4, w, xu, in, dots);
                else idot_int8_rows(1, w, xu, in, dots);
                for (int k = 0; k < n; k++) y[(b + k) * out + o] = (float)(dots[k] - shift) * s * steps[b + k] + bias;
            }
        } else {
            const int64_t row_bytes = int4_row_bytes(in);
            const uint8_t *q = (const uint8_t *)L->weight + o * row_bytes;
            const uint16_t *scale = (const uint16_t *)L->scale + o * groups;
            const uint16_t *offset = (const uint16_t *)L->offset + o * groups;
            if (o + PREFETCH_ROWS < out) { /* see PREFETCH_ROWS */
                const char *ahead = (const char *)(q + PREFETCH_ROWS * row_bytes);
                for (int64_t line = 0; line < row_bytes; line += 64) _mm_prefetch(ahead + line, _MM_HINT_T0);
                _mm_prefetch((const char *)(scale + PREFETCH_ROWS * groups), _MM_HINT_T0);
                _mm_prefetch((const char *)(offset + PREFETCH_ROWS * groups), _MM_HINT_T0);
            }
            float dots[8];
            for (int64_t b = 0, n; b < rows; b += n) {
                n = rows - b >= 8 ? 8 : rows - b >= 4 ? 4 : 1;
                const int8_t *xb = xq + b * in;
                const float *sb = steps + b, *xs = xsum + b * groups;
                if (n == 8) int4_rows(8, q, scale, offset, xb, sb, xs, groups, in, dots);
                else if (n == 4) int4_rows(4, q, scale, offset, xb, sb, xs, groups, in, dots);
                else int4_rows(1, q, scale, offset, xb, sb, xs, groups, in, dots);
                for (int k = 0; k < n; k++) y[(b + k) * out + o] = dots[k] + bias;
            }
        }
    }
    free(xq);
    free(steps);
    free(xsum);
}
#endif

/* y[b][o] = sum_i x[b][i] w[o][i] + bias[o] for b < rows. Every weight row is read from memory once. */
void gpt2_linear(const Linear *L, const float *restrict x, int64_t rows, float *restrict y) {
#if INTEGER_DOTS
    if (L->kind != KIND_F32) {
        linear_integer(L, x, rows, y);
        return;
    }
#endif
#if defined(__AVX512F__)
    if (L->kind == KIND_F32 && rows >= 4) {
        linear_f32_rows(L, x, rows, y);
        return;
    }
#endif
    if (L->kind == KIND_F32 && rows == 1) { /* the plain loop: the general one below read 42 GB/s where this reads 53 */
        const float *weight = L->weight, *bias = L->bias;
        #pragma omp parallel for schedule(static)
        for (int64_t o = 0; o < L->out; o++) y[o] = dot_f32(weight + o * L->in, x, L->in) + (bias ? bias[o] : 0.f);
        return;
    }
    const int64_t in = L->in, out = L->out, groups = in / GROUP;
    float *xsum = L->kind == KIND_INT4 && rows <= FUSED_ROWS ? group_sums(x, rows, in) : NULL;
    const int shared_row = L->kind != KIND_F32 && rows > FUSED_ROWS;
    #pragma omp parallel
    {
        float *row = shared_row ? malloc(sizeof(float) * in) : NULL;
        #pragma omp for schedule(static)
        for (int64_t o = 0; o < out; o++) {
            const float bias = L->bias ? L->bias[o] : 0.f;
            if (L->kind == KIND_F32 || shared_row) {
                const float *w = (const float *)L->weight + o * in;
                if (shared_row) {
                    dequantize_row(L, o, row);
                    w = row;
                }
                float dots[8];
                for (int64_t b0 = 0; b0 < rows; b0 += 8) {
                    const int64_t n = rows - b0 < 8 ? rows - b0 : 8;
                    dot_rows_f32(w, x + b0 * in, in, n, dots);
                    for (int64_t b = 0; b < n; b++) y[(b0 + b) * out + o] = dots[b] + bias;
                }
            } else if (L->kind == KIND_INT8) {
                const int8_t *w = (const int8_t *)L->weight + o * in;
                const float s = ((const float *)L->scale)[o];
                for (int64_t b = 0; b < rows; b++) y[b * out + o] = dot_int8(w, x + b * in, in) * s + bias;
            } else {
                const uint8_t *q = (const uint8_t *)L->weight + o * int4_row_bytes(in);
                const uint16_t *scale = (const uint16_t *)L->scale + o * groups;
                const uint16_t *offset = (const uint16_t *)L->offset + o * groups;
                for (int64_t b = 0; b < rows; b++)
                    y[b * out + o] = dot_int4(q, scale, offset, x + b * in, xsum + b * groups, in) + bias;
            }
        }
        free(row);
    }
    free(xsum);
}

/* 1 when the quantized linears multiply in integers (AVX-512 VNNI): then they beat dequantizing for a matmul at
   any number of rows (measured up to 1024), where the fp32 fallback is only worth it for a few. */
int gpt2_integer_dots(void) { return INTEGER_DOTS; }

/* 1 when gpt2_decode_step takes fp16 caches (F16C) */
int gpt2_half_caches(void) { return HALF_CACHES; }

/* out[r][o] = w[o][:] dequantized, for rows o in [0, out): the weights in fp32 for a large matmul elsewhere. */
void gpt2_dequantize(const Linear *L, float *restrict out) {
    #pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < L->out; o++) dequantize_row(L, o, out + o * L->in);
}

static void layer_norm(const float *restrict x, const float *restrict weight, const float *restrict bias, float eps,
                       int64_t n, float *restrict y) {
    float mean = 0.f, var = 0.f;
    for (int64_t i = 0; i < n; i++) mean += x[i];
    mean /= n;
    for (int64_t i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    const float inv = 1.f / sqrtf(var / n + eps);
    for (int64_t i = 0; i < n; i++) y[i] = (x[i] - mean) * inv * weight[i] + bias[i];
}

static void activate(float *restrict x, int64_t n, int64_t activation) {
    if (activation == ACT_GELU_TANH) {
        #pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            const float v = x[i];
            x[i] = 0.5f * v * (1.f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
        }
    } else if (activation == ACT_GELU_ERF) {
        #pragma omp simd
        for (int64_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.f + erff(x[i] * 0.7071067811865476f));
    } else {
        #pragma omp simd
        for (int64_t i = 0; i < n; i++) x[i] = x[i] > 0.f ? x[i] : 0.f;
    }
}

/* The cache's element `index` (fp16 when `half`, else fp32) */
static inline float cached(const void *cache, int64_t index, int half) {
    return half ? half_to_float(((const uint16_t *)cache)[index]) : ((const float *)cache)[index];
}

#define MASKED(t) (keep && (t) != span - 1 && !keep[t])

/* s[t] = exp(s[t] - top), 0 where masked (see attend); returns their sum */
static inline float exponentiate(float *restrict s, int64_t span, const int64_t *restrict keep, float top) {
    float total = 0.f;
    #pragma omp simd reduction(+:total)
    for (int64_t t = 0; t < span; t++) {
        s[t] = MASKED(t) ? 0.f : expf(s[t] - top);
        total += s[t];
    }
    return total;
}

/* y = softmax(scale q.K^T) V for one row and head over positions 0..span-1 (position stride `step` in K and V,
   fp16 when `half`; s: room for span scores). keep: NULL, or 0 where a cached position is left padding; the last
   position, the new token's own, is always seen, as the model's mask lets it. No infinities: built -ffast-math. */
static inline __attribute__((always_inline)) void attend(const float *restrict q, const void *restrict K,
                                                         const void *restrict V, int64_t step, int64_t span,
                                                         const int64_t *restrict keep, float scale, int64_t D,
                                                         float *restrict s, float *restrict y, const int half) {
#if defined(__AVX512F__)
    if (D % 16 == 0 && D <= 128) { /* q and the output in registers: no store and reload per position */
#define CACHED16(P, index) \
    (half ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)(P) + (index)))) \
          : _mm512_loadu_ps((const float *)(P) + (index)))
        const int64_t chunks = D / 16;
        __m512 qv[8], even[8], odd[8];
        for (int64_t c = 0; c < chunks; c++) qv[c] = _mm512_mul_ps(_mm512_loadu_ps(q + 16 * c), _mm512_set1_ps(scale));
        float top = -FLT_MAX;
        for (int64_t t = 0; t < span; t++) {
            if (MASKED(t)) { /* left padding is never read: merged batches carry a lot of it */
                s[t] = 0.f;
                continue;
            }
            __m512 acc = _mm512_mul_ps(qv[0], CACHED16(K, t * step));
            for (int64_t c = 1; c < chunks; c++) acc = _mm512_fmadd_ps(qv[c], CACHED16(K, t * step + 16 * c), acc);
            s[t] = _mm512_reduce_add_ps(acc);
            if (s[t] > top) top = s[t];
        }
        const float total = exponentiate(s, span, keep, top);
        for (int64_t c = 0; c < chunks; c++) even[c] = odd[c] = _mm512_setzero_ps();
        int64_t t = 0;
        for (; t + 2 <= span; t += 2) { /* two sets of accumulators: half the FMA chain's latency per position */
            const __m512 p0 = _mm512_set1_ps(s[t]), p1 = _mm512_set1_ps(s[t + 1]);
            for (int64_t c = 0; c < chunks; c++) {
                if (s[t] != 0.f) even[c] = _mm512_fmadd_ps(p0, CACHED16(V, t * step + 16 * c), even[c]);
                if (s[t + 1] != 0.f) odd[c] = _mm512_fmadd_ps(p1, CACHED16(V, (t + 1) * step + 16 * c), odd[c]);
            }
        }
        if (t < span && s[t] != 0.f)
            for (int64_t c = 0; c < chunks; c++)
                even[c] = _mm512_fmadd_ps(_mm512_set1_ps(s[t]), CACHED16(V, t * step + 16 * c), even[c]);
        const __m512 inverse = _mm512_set1_ps(1.f / total);
        for (int64_t c = 0; c < chunks; c++) _mm512_storeu_ps(y + 16 * c, _mm512_mul_ps(_mm512_add_ps(even[c], odd[c]), inverse));
#undef CACHED16
        return;
    }
#endif
    float top = -FLT_MAX;
    for (int64_t t = 0; t < span; t++) {
        if (MASKED(t)) {
            s[t] = 0.f;
            continue;
        }
        float dot = 0.f;
        for (int64_t d = 0; d < D; d++) dot += q[d] * cached(K, t * step + d, half);
        s[t] = dot * scale;
        if (s[t] > top) top = s[t];
    }
    const float total = exponentiate(s, span, keep, top);
    for (int64_t d = 0; d < D; d++) y[d] = 0.f;
    for (int64_t t = 0; t < span; t++) {
        if (s[t] == 0.f) continue; /* a masked position, or one whose weight underflowed */
        const float p = s[t] / total;
        for (int64_t d = 0; d < D; d++) y[d] += p * cached(V, t * step + d, half);
    }
#undef MASKED
}

/* One new token for each of `rows` sequences, through every layer and the output layer.
   tokens[r], positions[r]: the token and its position id. keys/values: the KV cache, indexed
   [layer][row][head][position][head_dim] with the element strides in cache_strides (layer, row, head, position;
   head_dim is contiguous); `length` positions are cached already and the new keys and values go to position
   `length`. mask: NULL (attend to every cached position) or int64[rows][mask_stride], 1 where row r attends to a
   cached position (0 for left padding); it covers positions 0..length. logits: float[rows][head.out]. */
void gpt2_decode_step(const Model *m, int64_t rows, const int64_t *tokens, const int64_t *positions,
                      const int64_t *mask, int64_t mask_stride, void *keys, void *values, int64_t half,
                      const int64_t *cache_strides, int64_t length, float *logits) {
    if (half && !HALF_CACHES) return; /* the caller checks gpt2_half_caches() */
    const int64_t size = half ? 2 : 4; /* bytes of a cached element */
    const int64_t C = m->n_embd, H = m->n_head, D = C / H, span = length + 1;
    const int64_t widest = m->mlp_width > 3 * C ? m->mlp_width : 3 * C;
    float *x = malloc(sizeof(float) * rows * C);
    float *h = malloc(sizeof(float) * rows * C);
    float *wide = malloc(sizeof(float) * rows * widest);
    float *scores = malloc(sizeof(float) * rows * H * span);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < C; i++) x[r * C + i] = m->wte[tokens[r] * C + i] + m->wpe[positions[r] * C + i];

    for (int64_t l = 0; l < m->n_layer; l++) {
        const Layer *L = &m->layers[l];
        for (int64_t r = 0; r < rows; r++) layer_norm(x + r * C, L->ln_1_weight, L->ln_1_bias, m->eps, C, h + r * C);
        gpt2_linear(&L->c_attn, h, rows, wide); /* each row: q | k | v */
        #pragma omp parallel for collapse(2) schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            for (int64_t hd = 0; hd < H; hd++) {
                const int64_t base = l * cache_strides[0] + r * cache_strides[1] + hd * cache_strides[2];
                char *K = (char *)keys + base * size, *V = (char *)values + base * size;
                const float *q = wide + r * 3 * C + hd * D, *k = q + C, *v = q + 2 * C;
                const int64_t at = length * cache_strides[3];
                if (half)
                    for (int64_t d = 0; d < D; d++) {
                        ((uint16_t *)K)[at + d] = float_to_half(k[d]);
                        ((uint16_t *)V)[at + d] = float_to_half(v[d]);
                    }
                else {
                    memcpy((float *)K + at, k, sizeof(float) * D);
                    memcpy((float *)V + at, v, sizeof(float) * D);
                }
                const int64_t *keep = mask ? mask + r * mask_stride : NULL;
                float *s = scores + (r * H + hd) * span, *y = h + r * C + hd * D;
                /* a literal `half`: attend is inlined, so each call compiles its own loads */
                if (half) attend(q, K, V, cache_strides[3], span, keep, L->attn_scale, D, s, y, 1);
                else attend(q, K, V, cache_strides[3], span, keep, L->attn_scale, D, s, y, 0);
            }
        }
        gpt2_linear(&L->attn_c_proj, h, rows, wide);
        for (int64_t i = 0; i < rows * C; i++) x[i] += wide[i];
        for (int64_t r = 0; r < rows; r++) layer_norm(x + r * C, L->ln_2_weight, L->ln_2_bias, m->eps, C, h + r * C);
        gpt2_linear(&L->c_fc, h, rows, wide);
        activate(wide, rows * m->mlp_width, m->activation);
        gpt2_linear(&L->mlp_c_proj, wide, rows, h);
        for (int64_t i = 0; i < rows * C; i++) x[i] += h[i];
    }
    for (int64_t r = 0; r < rows; r++) layer_norm(x + r * C, m->ln_f_weight, m->ln_f_bias, m->eps, C, h + r * C);
    gpt2_linear(&m->head, h, rows, logits);
    free(x);
    free(h);
    free(wide);
    free(scores);
}

/* Sampling's full-vocabulary passes, one row per thread: PyTorch's argmax, logsumexp and topk over a 50257-wide
   row are not vectorized on CPU (0.7-0.9 ms each for 16 rows here, a few percent of a decoding step).
   Logits may be -inf (masked tokens): every comparison below is a hardware one, and exp never sees -inf. */

/* For each row of n logits (rows `stride` floats apart): the first index of its largest value, and log sum exp. */
void gpt2_argmax_logsumexp(const float *restrict x, int64_t rows, int64_t n, int64_t stride, int64_t *restrict argmax,
                           float *restrict logsumexp) {
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *row = x + r * stride;
        float top = row[0];
        int64_t best = 0, i = 1;
#if defined(__AVX512F__)
        if (n >= 16) { /* each lane keeps its first largest; then the smallest index among the lanes that hold the max */
            __m512 lane_top = _mm512_loadu_ps(row);
            __m512i lane_index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            __m512i index = lane_index;
            const __m512i sixteen = _mm512_set1_epi32(16);
            for (i = 16; i + 16 <= n; i += 16) {
                index = _mm512_add_epi32(index, sixteen);
                const __m512 v = _mm512_loadu_ps(row + i);
                const __mmask16 greater = _mm512_cmp_ps_mask(v, lane_top, _CMP_GT_OQ);
                lane_top = _mm512_mask_mov_ps(lane_top, greater, v);
                lane_index = _mm512_mask_mov_epi32(lane_index, greater, index);
            }
            float tops[16];
            int32_t indices[16];
            _mm512_storeu_ps(tops, lane_top);
            _mm512_storeu_si512(indices, lane_index);
            top = tops[0], best = indices[0];
            for (int lane = 1; lane < 16; lane++)
                if (tops[lane] > top || (tops[lane] == top && indices[lane] < best)) top = tops[lane], best = indices[lane];
        }
#endif
        for (; i < n; i++)
            if (row[i] > top) top = row[i], best = i;
        argmax[r] = best;
        if (!(top > -FLT_MAX)) { /* every logit is -inf */
            logsumexp[r] = top;
            continue;
        }
        float total = 0.f;
        #pragma omp simd reduction(+:total)
        for (int64_t j = 0; j < n; j++) total += expf(fmaxf(row[j] - top, -104.f)); /* exp(-104) is 0 in fp32 */
        logsumexp[r] = top + logf(total);
    }
}

/* For each row of n logits: its k largest values in descending order and their indices (ties: the earlier first),
   for k <= n. A vectorized pass compares 16 logits at a time with the k-th largest so far; the few that beat it are
   inserted into the sorted list. */
void gpt2_top_k(const float *restrict x, int64_t rows, int64_t n, int64_t stride, int64_t k, float *restrict values,
                int64_t *restrict indices) {
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *row = x + r * stride;
        float *top = values + r * k;
        int64_t *where = indices + r * k, kept = 0;
#define OFFER(j)                                                                                      \
    do {                                                                                              \
        const float v = row[j];                                                                       \
        if (kept == k && !(v > top[k - 1])) break;                                                    \
        int64_t at = kept < k ? kept++ : k - 1;                                                       \
        for (; at > 0 && v > top[at - 1]; at--) top[at] = top[at - 1], where[at] = where[at - 1];     \
        top[at] = v, where[at] = (j);                                                                 \
    } while (0)
        int64_t i = 0;
        for (; i < n && kept < k; i++) OFFER(i);
#if defined(__AVX512F__)
        for (; i + 16 <= n; i += 16) {
            __mmask16 above = _mm512_cmp_ps_mask(_mm512_loadu_ps(row + i), _mm512_set1_ps(top[k - 1]), _CMP_GT_OQ);
            while (above) {
                OFFER(i + __builtin_ctz(above));
                above &= above - 1;
            }
        }
#endif
        for (; i < n; i++) OFFER(i);
#undef OFFER
    }
}
