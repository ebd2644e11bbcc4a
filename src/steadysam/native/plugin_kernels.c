/* Stable-SAM plugin kernels for CPU inference: each fuses a chain of full-size passes over the
 * B x h x w x C image tokens (channels-last, float32, contiguous) into one pass per token, so
 * the intermediates stay in L1 instead of travelling to memory and back.
 *
 *   offset_head: k x k depthwise conv -> LayerNorm -> GELU (erf) -> linear to 2 offsets
 *   route_mlp:   the router's small MLP and softmax
 *   sample_mix:  bilinear sampling at cell centre + offset (grid_sample, border padding,
 *                align_corners False) -> lerp with the regular tokens -> + positional encoding
 *
 * The PyTorch expressions they replace are in steadysam/models/deformable_sampling.py and
 * stable_plugin.py; tests/test_native_kernels.py compares the two. Built and loaded by
 * steadysam/native/build.py with OpenMP (PyTorch's own runtime) and SIMD reductions.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* erf for float: a rational approximation on [-4, 4] (|erf| rounds to 1 beyond), odd
 * numerator of degree 13 over an even denominator of degree 8; max error ~1e-7 on the
 * float grid (checked in the tests against torch.erf). Branch-free, so loops vectorise. */
static inline float erf_approx(float x) {
    x = x > 4.0f ? 4.0f : (x < -4.0f ? -4.0f : x);
    const float x2 = x * x;
    float p = -2.72614225801306e-10f;
    p = p * x2 + 2.77068142495902e-08f;
    p = p * x2 + -2.10102402082508e-06f;
    p = p * x2 + -5.69250639462346e-05f;
    p = p * x2 + -7.34990630326855e-04f;
    p = p * x2 + -2.95459980854025e-03f;
    p = p * x2 + -1.60960333262415e-02f;
    float q = -1.45660718464996e-05f;
    q = q * x2 + -2.13374055278905e-04f;
    q = q * x2 + -1.68282697438203e-03f;
    q = q * x2 + -7.37332916720468e-03f;
    q = q * x2 + -1.42647390514189e-02f;
    return x * p / q;
}

/* y = gelu(x) elementwise (the erf form), as the head computes it: for tests. */
void gelu(const float *restrict x, float *restrict y, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++)
        y[i] = 0.5f * x[i] * (1.0f + erf_approx(x[i] * 0.70710678118654752f));
}

/* out[j] = ob[j] + sum_c ow[j, c] * gelu(layer_norm(row))[c] for one token's C channels:
 * LayerNorm, GELU and the 2-output linear in one pass over the row (in L1). */
static inline void norm_gelu_head_row(const float *restrict row, int64_t C,
                                      const float *restrict ln_w, const float *restrict ln_b,
                                      float eps, const float *restrict ow,
                                      const float *restrict ob, float *restrict out) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < C; c++) sum += row[c];
    const float mean = sum / (float)C;
    float var = 0.0f;
#pragma omp simd reduction(+ : var)
    for (int64_t c = 0; c < C; c++) {
        const float d = row[c] - mean;
        var += d * d;
    }
    const float rstd = 1.0f / sqrtf(var / (float)C + eps);
    float o0 = 0.0f, o1 = 0.0f;
#pragma omp simd reduction(+ : o0, o1)
    for (int64_t c = 0; c < C; c++) {
        const float v = (row[c] - mean) * rstd * ln_w[c] + ln_b[c];
        const float g = 0.5f * v * (1.0f + erf_approx(v * 0.70710678118654752f));
        o0 += ow[c] * g;
        o1 += ow[C + c] * g;
    }
    out[0] = ob[0] + o0;
    out[1] = ob[1] + o1;
}

/* 16 floats: one AVX-512 register (two AVX2 or four SSE ones elsewhere). */
typedef float v16 __attribute__((vector_size(64)));

static inline v16 load16(const float *p) {
    v16 v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}

static inline void store16(float *p, v16 v) { __builtin_memcpy(p, &v, sizeof v); }

/* Row y of the 5 x 5 depthwise conv (zero padding 2), channels [c0, c0 + 16): the 25 weight
 * vectors are loaded once per row, and away from the left / right border four outputs are
 * computed together, so that each input vector is loaded once for the up to four outputs that
 * use it (a quarter of the loads of one output at a time, four independent sums). */
static inline void dw_row_block16_k5(const float *restrict xs, int64_t b, int64_t y, int64_t h,
                                     int64_t w, int64_t C, const float *restrict dw_w,
                                     const float *restrict dw_b, int64_t c0,
                                     float *restrict trow) {
    v16 wr[25];
    for (int i = 0; i < 25; i++) wr[i] = load16(dw_w + i * C + c0);
    const v16 bias = load16(dw_b + c0);
    const int64_t ky0 = y < 2 ? 2 - y : 0, ky1 = y + 2 >= h ? 2 + (h - 1 - y) : 4;
    int64_t x = 0;
    for (; x < w; x++) {
        if (x >= 2 && x + 5 < w) { /* four interior outputs x .. x + 3 */
            v16 a0 = bias, a1 = bias, a2 = bias, a3 = bias;
            for (int64_t ky = ky0; ky <= ky1; ky++) {
                const float *in = xs + ((b * h + y + ky - 2) * w + x - 2) * C + c0;
                const v16 *wk = wr + ky * 5;
                v16 i[8];
                for (int j = 0; j < 8; j++) i[j] = load16(in + j * C);
                for (int j = 0; j < 5; j++) {
                    a0 += wk[j] * i[j];
                    a1 += wk[j] * i[j + 1];
                    a2 += wk[j] * i[j + 2];
                    a3 += wk[j] * i[j + 3];
                }
            }
            store16(trow + x * C + c0, a0);
            store16(trow + (x + 1) * C + c0, a1);
            store16(trow + (x + 2) * C + c0, a2);
            store16(trow + (x + 3) * C + c0, a3);
            x += 3;
            continue;
        }
        const int64_t kx0 = x < 2 ? 2 - x : 0, kx1 = x + 2 >= w ? 2 + (w - 1 - x) : 4;
        v16 acc = bias;
        for (int64_t ky = ky0; ky <= ky1; ky++)
            for (int64_t kx = kx0; kx <= kx1; kx++)
                acc += wr[ky * 5 + kx] *
                       load16(xs + ((b * h + y + ky - 2) * w + x + kx - 2) * C + c0);
        store16(trow + x * C + c0, acc);
    }
}

/* Row y of any odd k x k depthwise conv (zero padding k / 2) of xs (B x h x w x C), channels
 * [c0, c0 + n) with n <= 16, into trow (w x C): what the 5 x 5 blocks above do not cover. */
static inline void dw_row_generic(const float *restrict xs, int64_t b, int64_t y, int64_t h,
                                  int64_t w, int64_t C, const float *restrict dw_w,
                                  const float *restrict dw_b, int64_t k, int64_t c0, int64_t n,
                                  float *restrict trow) {
    const int64_t r = k / 2;
    const int64_t y0 = y - r < 0 ? 0 : y - r, y1 = y + r >= h ? h - 1 : y + r;
    for (int64_t x = 0; x < w; x++) {
        const int64_t x0 = x - r < 0 ? 0 : x - r, x1 = x + r >= w ? w - 1 : x + r;
        float acc[16];
        for (int64_t j = 0; j < n; j++) acc[j] = dw_b[c0 + j];
        for (int64_t yy = y0; yy <= y1; yy++) {
            for (int64_t xx = x0; xx <= x1; xx++) {
                const float *in = xs + ((b * h + yy) * w + xx) * C + c0;
                const float *wt = dw_w + ((yy - y + r) * k + (xx - x + r)) * C + c0;
                for (int64_t j = 0; j < n; j++) acc[j] += wt[j] * in[j];
            }
        }
        for (int64_t j = 0; j < n; j++) trow[x * C + c0 + j] = acc[j];
    }
}

/* offsets = the head (norm_gelu_head_row) of depthwise_conv(xs), xs B x h x w x C (channels
 * last): the conv's output lives one row at a time in a per-thread buffer (w x C) instead of a
 * full-size map written to memory and read back. dw_w: (k * k) x C, tap-major; dw_b: C;
 * out: B x h x w x 2. Returns 0, or 1 when the row buffers could not be allocated. */
int offset_head(const float *restrict xs, int64_t B, int64_t h, int64_t w, int64_t C,
                const float *restrict dw_w, const float *restrict dw_b, int64_t k,
                const float *restrict ln_w, const float *restrict ln_b, float eps,
                const float *restrict ow, const float *restrict ob, float *restrict out,
                int threads) {
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *trow = (float *)malloc((size_t)(w * C) * sizeof(float));
        failed = trow == NULL;
#pragma omp for schedule(static)
        for (int64_t row = 0; row < B * h; row++) {
            if (trow == NULL) continue;
            const int64_t b = row / h, y = row % h;
            int64_t c0 = 0;
            if (k == 5)
                for (; c0 + 16 <= C; c0 += 16)
                    dw_row_block16_k5(xs, b, y, h, w, C, dw_w, dw_b, c0, trow);
            for (; c0 < C; c0 += 16)
                dw_row_generic(xs, b, y, h, w, C, dw_w, dw_b, k, c0, C - c0 < 16 ? C - c0 : 16,
                               trow);
            for (int64_t x = 0; x < w; x++)
                norm_gelu_head_row(trow + x * C, C, ln_w, ln_b, eps, ow, ob,
                                   out + (row * w + x) * 2);
        }
        free(trow);
    }
    return failed;
}

/* Stable-SAM's router for B tokens (B x C): softmax(fc2(gelu(layer_norm(fc1(token))))) -> out
 * B x 2. w1: H x C, b1, ln_w, ln_b: H; w2: 2 x H; b2: 2. A few thousand multiply-adds: one
 * thread, no allocation (the PyTorch ops cost ~20x more in dispatch than in arithmetic). */
void route_mlp(const float *restrict token, int64_t B, int64_t C, const float *restrict w1,
               const float *restrict b1, int64_t H, const float *restrict ln_w,
               const float *restrict ln_b, float eps, const float *restrict w2,
               const float *restrict b2, float *restrict out) {
    float hid[H];
    for (int64_t b = 0; b < B; b++) {
        const float *restrict x = token + b * C;
        for (int64_t j = 0; j < H; j++) {
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int64_t c = 0; c < C; c++) acc += w1[j * C + c] * x[c];
            hid[j] = b1[j] + acc;
        }
        float o[2];
        norm_gelu_head_row(hid, H, ln_w, ln_b, eps, w2, b2, o);
        const float m = o[0] > o[1] ? o[0] : o[1];
        const float e0 = expf(o[0] - m), e1 = expf(o[1] - m);
        out[2 * b] = e0 / (e0 + e1);
        out[2 * b + 1] = e1 / (e0 + e1);
    }
}

/* torch.lerp(start, end, weight) for a scalar weight, exactly as ATen computes it (so a
 * weight of 0 or 1 returns start or end bit for bit). */
static inline float lerp(float s, float e, float wt) {
    return fabsf(wt) < 0.5f ? s + wt * (e - s) : e - (e - s) * (1.0f - wt);
}

/* For each token i of batch b on the h x w grid, with (dx, dy) = off[b, i]:
 *   sampled  = bilinear sample of src (B x hw x C) at (x + dx, y + dy), border padding
 *   values   = lerp(keys[b, i], sampled, alpha[b])
 *   keys_out = values + pe[i]                                         (deformed_pe == 0)
 *            = values + lerp(pe[i], bilinear sample of pe, alpha[b])  (deformed_pe == 1)
 * keys: B x hw x C; pe: hw x C (one map shared by the batch) or B x hw x C (pe_batched);
 * off: B x hw x 2 (dx, dy) in cells; alpha: B; values, keys_out: B x hw x C. */
void sample_mix(const float *restrict src, const float *restrict keys, const float *restrict pe,
                int pe_batched, int deformed_pe, const float *restrict off,
                const float *restrict alpha, int64_t B, int64_t h, int64_t w, int64_t C,
                float *restrict values, float *restrict keys_out, int threads) {
    const int64_t hw = h * w;
    const int64_t n = B * hw;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; i++) {
        const int64_t b = i / hw, p = i % hw;
        const float px = fminf(fmaxf((float)(p % w) + off[2 * i], 0.0f), (float)(w - 1));
        const float py = fminf(fmaxf((float)(p / w) + off[2 * i + 1], 0.0f), (float)(h - 1));
        const float x0 = floorf(px), y0 = floorf(py);
        const float lx = px - x0, ly = py - y0, mx = 1.0f - lx, my = 1.0f - ly;
        const int64_t i00 = (int64_t)y0 * w + (int64_t)x0;
        const int64_t i01 = i00 + (x0 < (float)(w - 1) ? 1 : 0);
        const int64_t sy = y0 < (float)(h - 1) ? w : 0;
        const float w00 = my * mx, w01 = my * lx, w10 = ly * mx, w11 = ly * lx;
        const float *restrict base = src + b * hw * C;
        const float *restrict s00 = base + i00 * C, *restrict s01 = base + i01 * C;
        const float *restrict s10 = base + (i00 + sy) * C, *restrict s11 = base + (i01 + sy) * C;
        const float *restrict kr = keys + i * C;
        const float *restrict pbase = pe + (pe_batched ? b * hw * C : 0);
        const float *restrict pr = pbase + p * C;
        float *restrict vo = values + i * C;
        float *restrict ko = keys_out + i * C;
        const float a = alpha[b];
        if (!deformed_pe) {
#pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                const float s = w00 * s00[c] + w01 * s01[c] + w10 * s10[c] + w11 * s11[c];
                const float v = lerp(kr[c], s, a);
                vo[c] = v;
                ko[c] = v + pr[c];
            }
        } else {
            const float *restrict q00 = pbase + i00 * C, *restrict q01 = pbase + i01 * C;
            const float *restrict q10 = pbase + (i00 + sy) * C;
            const float *restrict q11 = pbase + (i01 + sy) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                const float s = w00 * s00[c] + w01 * s01[c] + w10 * s10[c] + w11 * s11[c];
                const float q = w00 * q00[c] + w01 * q01[c] + w10 * q10[c] + w11 * q11[c];
                const float v = lerp(kr[c], s, a);
                vo[c] = v;
                ko[c] = v + lerp(pr[c], q, a);
            }
        }
    }
}
