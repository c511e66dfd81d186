/* CPU kernels for decoding GPT-2: weight-streaming linears (fp32, int8, int4) and a whole single-token step.

   Decoding one token reads every weight once, so its speed is memory bandwidth plus whatever else runs per
   token. These kernels stream each weight row once for all rows of the batch, and `gpt2_decode_step` runs the
   whole model for one new token per row in one call, so nothing per operation (Python, dispatch) is paid.
   gpt2kit/kernels/__init__.py compiles this file on first use; gpt2kit/inference.py says why it exists.

   Weight formats, row-major (out, in) as nn.Linear's:
     KIND_F32   weight float[out][in]
     KIND_INT8  weight int8[out][in], scale float[out]:                 w = q * scale[o]
     KIND_INT4  weight uint8[out][in/2], scale and offset bf16[out][in/32]: w = q * scale + offset, q in 0..15;
                within a group of 32 weights, byte j holds weight j (low nibble) and weight j + 16 (high nibble).
   Activations stay fp32 throughout. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { KIND_F32 = 0, KIND_INT8 = 1, KIND_INT4 = 2 };
enum { ACT_GELU_TANH = 0, ACT_GELU_ERF = 1, ACT_RELU = 2 };
#define GROUP 32
/* rows at or below this stream their int8/int4 weights straight into the dot products; above it each weight row
   is dequantized once into fp32 and shared by all rows */
#define FUSED_ROWS 2

typedef struct {
    int64_t kind, in, out;
    const void *weight;
    const void *scale;
    const void *offset;
    const float *bias;
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

#if defined(__AVX512F__)
#include <immintrin.h>

/* Several accumulators per dot product: one FMA chain would be latency-bound below the memory's pace. */
static float dot_f32(const float *restrict w, const float *restrict x, int64_t n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 32), _mm512_loadu_ps(x + i + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 48), _mm512_loadu_ps(x + i + 48), a3);
    }
    float acc = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    for (; i < n; i++) acc += w[i] * x[i];
    return acc;
}

static inline __m512 int8_lanes(const int8_t *w) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)w)));
}

static float dot_int8(const int8_t *restrict w, const float *restrict x, int64_t n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_fmadd_ps(int8_lanes(w + i), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(int8_lanes(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
        a2 = _mm512_fmadd_ps(int8_lanes(w + i + 32), _mm512_loadu_ps(x + i + 32), a2);
        a3 = _mm512_fmadd_ps(int8_lanes(w + i + 48), _mm512_loadu_ps(x + i + 48), a3);
    }
    float acc = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    for (; i < n; i++) acc += (float)w[i] * x[i];
    return acc;
}

/* sum_i w_i x_i over int4 groups: sum_g scale_g * (sum_j q_j x_j) + offset_g * xsum_g */
static float dot_int4(const uint8_t *restrict q, const uint16_t *restrict scale, const uint16_t *restrict offset,
                      const float *restrict x, const float *restrict xsum, int64_t n) {
    const __m512i low = _mm512_set1_epi32(15);
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    float shifted = 0.f;
    const int64_t groups = n / GROUP;
    int64_t g = 0;
    for (; g + 2 <= groups; g += 2) {
        const __m512i v0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + g * 16)));
        const __m512i v1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + g * 16 + 16)));
        const float *x0 = x + g * GROUP, *x1 = x0 + GROUP;
        __m512 t0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_and_epi32(v0, low)), _mm512_loadu_ps(x0));
        __m512 t1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_and_epi32(v1, low)), _mm512_loadu_ps(x1));
        t0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(v0, 4)), _mm512_loadu_ps(x0 + 16), t0);
        t1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(v1, 4)), _mm512_loadu_ps(x1 + 16), t1);
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(bf16_to_float(scale[g])), t0, a0);
        a1 = _mm512_fmadd_ps(_mm512_set1_ps(bf16_to_float(scale[g + 1])), t1, a1);
        shifted += bf16_to_float(offset[g]) * xsum[g] + bf16_to_float(offset[g + 1]) * xsum[g + 1];
    }
    float acc = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + shifted;
    for (; g < groups; g++) {
        float s = 0.f;
        for (int j = 0; j < 16; j++)
            s += (float)(q[g * 16 + j] & 15) * x[g * GROUP + j] + (float)(q[g * 16 + j] >> 4) * x[g * GROUP + j + 16];
        acc += bf16_to_float(scale[g]) * s + bf16_to_float(offset[g]) * xsum[g];
    }
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

static float dot_int8(const int8_t *restrict w, const float *restrict x, int64_t n) {
    float acc = 0.f;
    #pragma omp simd reduction(+:acc)
    for (int64_t i = 0; i < n; i++) acc += (float)w[i] * x[i];
    return acc;
}

static float dot_int4(const uint8_t *restrict q, const uint16_t *restrict scale, const uint16_t *restrict offset,
                      const float *restrict x, const float *restrict xsum, int64_t n) {
    float lanes[16] = {0};
    float shifted = 0.f;
    for (int64_t g = 0; g < n / GROUP; g++) {
        const uint8_t *qg = q + g * (GROUP / 2);
        const float *xg = x + g * GROUP;
        const float s = bf16_to_float(scale[g]);
        #pragma omp simd
        for (int j = 0; j < 16; j++)
            lanes[j] += s * ((float)(qg[j] & 15) * xg[j] + (float)(qg[j] >> 4) * xg[j + 16]);
        shifted += bf16_to_float(offset[g]) * xsum[g];
    }
    float acc = shifted;
    for (int j = 0; j < 16; j++) acc += lanes[j];
    return acc;
}

static void dot_rows_f32(const float *restrict w, const float *restrict x, int64_t n, int64_t rows,
                         float *restrict out) {
    for (int64_t b = 0; b < rows; b++) out[b] = dot_f32(w, x + b * n, n);
}
#endif

static void dequantize_row(const Linear *L, int64_t o, float *restrict row) {
    const int64_t in = L->in;
    if (L->kind == KIND_INT8) {
        const int8_t *w = (const int8_t *)L->weight + o * in;
        const float s = ((const float *)L->scale)[o];
        #pragma omp simd
        for (int64_t i = 0; i < in; i++) row[i] = (float)w[i] * s;
        return;
    }
    const uint8_t *q = (const uint8_t *)L->weight + o * (in / 2);
    const uint16_t *scale = (const uint16_t *)L->scale + o * (in / GROUP);
    const uint16_t *offset = (const uint16_t *)L->offset + o * (in / GROUP);
    for (int64_t g = 0; g < in / GROUP; g++) {
        const float s = bf16_to_float(scale[g]), m = bf16_to_float(offset[g]);
        const uint8_t *qg = q + g * (GROUP / 2);
        float *r = row + g * GROUP;
        #pragma omp simd
        for (int j = 0; j < 16; j++) {
            r[j] = (float)(qg[j] & 15) * s + m;
            r[j + 16] = (float)(qg[j] >> 4) * s + m;
        }
    }
}

/* y[b][o] = sum_i x[b][i] w[o][i] + bias[o] for b < rows. Every weight row is read from memory once. */
void gpt2_linear(const Linear *L, const float *restrict x, int64_t rows, float *restrict y) {
    const int64_t in = L->in, out = L->out, groups = in / GROUP;
    float *xsum = NULL;
    if (L->kind == KIND_INT4 && rows <= FUSED_ROWS) {
        xsum = malloc(sizeof(float) * rows * groups);
        for (int64_t b = 0; b < rows; b++)
            for (int64_t g = 0; g < groups; g++) {
                float s = 0.f;
                for (int j = 0; j < GROUP; j++) s += x[b * in + g * GROUP + j];
                xsum[b * groups + g] = s;
            }
    }
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
                if (rows == 1) {
                    y[o] = dot_f32(w, x, in) + bias;
                    continue;
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
                const uint8_t *q = (const uint8_t *)L->weight + o * (in / 2);
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
    for (int64_t i = 0; i < n; i++) {
        const float v = x[i];
        if (activation == ACT_GELU_TANH)
            x[i] = 0.5f * v * (1.f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
        else if (activation == ACT_GELU_ERF)
            x[i] = 0.5f * v * (1.f + erff(v * 0.7071067811865476f));
        else
            x[i] = v > 0.f ? v : 0.f;
    }
}

/* One new token for each of `rows` sequences, through every layer and the output layer.
   tokens[r], positions[r]: the token and its position id. keys/values: the KV cache, indexed
   [layer][row][head][position][head_dim] with the element strides in cache_strides (layer, row, head, position;
   head_dim is contiguous); `length` positions are cached already and the new keys and values go to position
   `length`. mask: NULL (attend to every cached position) or int64[rows][mask_stride], 1 where row r attends to a
   cached position (0 for left padding); it covers positions 0..length. logits: float[rows][head.out]. */
void gpt2_decode_step(const Model *m, int64_t rows, const int64_t *tokens, const int64_t *positions,
                      const int64_t *mask, int64_t mask_stride, float *keys, float *values,
                      const int64_t *cache_strides, int64_t length, float *logits) {
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
        float *layer_keys = keys + l * cache_strides[0], *layer_values = values + l * cache_strides[0];
        #pragma omp parallel for collapse(2) schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            for (int64_t hd = 0; hd < H; hd++) {
                const int64_t base = r * cache_strides[1] + hd * cache_strides[2];
                float *K = layer_keys + base, *V = layer_values + base;
                const float *q = wide + r * 3 * C + hd * D;
                memcpy(K + length * cache_strides[3], q + C, sizeof(float) * D);
                memcpy(V + length * cache_strides[3], q + 2 * C, sizeof(float) * D);
                float *s = scores + (r * H + hd) * span;
                float top = -INFINITY;
                for (int64_t t = 0; t < span; t++) {
                    if (mask && !mask[r * mask_stride + t]) {
                        s[t] = -INFINITY;
                        continue;
                    }
                    s[t] = dot_f32(q, K + t * cache_strides[3], D) * L->attn_scale;
                    if (s[t] > top) top = s[t];
                }
                float total = 0.f;
                for (int64_t t = 0; t < span; t++) {
                    s[t] = s[t] == -INFINITY ? 0.f : expf(s[t] - top);
                    total += s[t];
                }
                float *y = h + r * C + hd * D;
                for (int64_t d = 0; d < D; d++) y[d] = 0.f;
                for (int64_t t = 0; t < span; t++) {
                    if (s[t] == 0.f) continue;
                    const float p = s[t] / total, *v = V + t * cache_strides[3];
                    #pragma omp simd
                    for (int64_t d = 0; d < D; d++) y[d] += p * v[d];
                }
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
