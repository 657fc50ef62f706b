/* A C99 port of two mpt-ref modules, MPT and the P-tuning MLP encoder (forward and backward, float32 and
 * float64), speaking the persistent protocol of spec/conform-protocol.md: it reads case directory paths on
 * stdin, one per line, writes output.safetensors / grads.safetensors there, and answers "ok" or "error ...".
 *
 * float32 cases are computed in float32: every product and sum is rounded to float (R() below; a float32
 * product or sum evaluated in double and rounded once is the IEEE float32 result). float16 cases: float16
 * storage (read and written as F16), float32 arithmetic inside (the "float32 accumulation" class).
 *
 * Planted porting bugs for mpt-ref's own tests, chosen with MPT_PORT_BUG=<name>:
 *   mpt_d_tail      MPT: output columns d >= 8 not multiplied by the task prompt (a SIMD loop with no tail)
 *   mpt_task_off    MPT: task ids off by one
 *   mpt_overwrite   MPT: dE scattered with = instead of += (repeated ids keep one contribution)
 *   mpt_batch_tail  MPT: batch rows b >= 4 never written
 *   keep_grads      both: gradient buffers never zeroed between calls (state kept)
 *   wrong_dtype     both: float64 output for a float32 case
 *   mlp_relu_grad   MLP: the ReLU mask forgotten in the backward of the second ReLU
 *   mlp_h_tail      MLP: bias units >= 4 of mlp_head.2 dropped (H > 4 only)
 *   mlp_bias_once   MLP: bias gradients from the first row only
 *   acc16           both, float16 cases: every product and partial sum rounded to float16 (a port of the
 *                   "float16 accumulation" class, judged by default as float32 accumulation)
 * Build: cc -std=c99 -O2 -o mpt_port mpt_port.c -lm */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int prec;  /* 64, 32 or 16: the case dtype */
static const char *bug = "";
static int BUG(const char *name) { return strcmp(bug, name) == 0; }

static double round_half(double x) {  /* the nearest float16 value (ties to even), as a double */
    int e;
    if (x == 0 || isnan(x) || isinf(x)) return x;
    frexp(x, &e);                                   /* |x| in [2^(e-1), 2^e): 11 significant bits */
    int q = e - 11 < -24 ? -24 : e - 11;            /* below 2^-14: subnormal quantum 2^-24 */
    double r = ldexp(nearbyint(ldexp(x, -q)), q);
    return fabs(r) > 65504 ? copysign(INFINITY, x) : r;
}
static double half_to_double(unsigned h) {
    int e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(m + 1024, e - 25);
    return (h & 0x8000) ? -v : v;
}
static unsigned double_to_half(double x) {
    unsigned sign = signbit(x) ? 0x8000 : 0;
    double a = fabs(round_half(x));
    int e;
    if (isnan(a)) return sign | 0x7e00;
    if (isinf(a)) return sign | 0x7c00;
    if (a < ldexp(1, -14)) return sign | (unsigned)ldexp(a, 24);  /* subnormal (or zero) */
    frexp(a, &e);
    return sign | (unsigned)(e + 14) << 10 | ((unsigned)ldexp(a, 11 - e) & 1023);
}
static double R(double x) {
    if (prec == 64) return x;
    return prec == 16 && BUG("acc16") ? round_half(x) : (double)(float)x;
}

static void *pool[256];  /* every allocation of one case, freed when the case is served */
static int npool;
static void *A(size_t n) { void *p = calloc(n ? n : 1, 1); if (npool < 256) pool[npool++] = p; return p; }
static void release(void) { while (npool) free(pool[--npool]); }

typedef struct { double *v; long n; long shape[4]; int rank; } Tensor;
typedef struct { unsigned char *buf; long len; char *hdr; long hlen; } File;

static unsigned char *slurp(const char *path, long *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END); *len = ftell(f); fseek(f, 0, SEEK_SET);
    unsigned char *b = A(*len + 1);
    if (fread(b, 1, *len, f) != (size_t)*len) { fclose(f); return NULL; }
    b[*len] = 0; fclose(f); return b;
}

static int open_st(File *f, const char *dir, const char *name) {
    char path[4096]; snprintf(path, sizeof path, "%s/%s", dir, name);
    if (!(f->buf = slurp(path, &f->len)) || f->len < 8) return -1;
    f->hlen = 0;
    for (int i = 7; i >= 0; i--) f->hlen = f->hlen * 256 + f->buf[i];
    f->hdr = A(f->hlen + 1); memcpy(f->hdr, f->buf + 8, f->hlen); f->hdr[f->hlen] = 0;
    return 0;
}

/* The tensor under `key` as doubles: the JSON header searched for "key", then its dtype, shape, offsets. */
static int get(File *f, const char *key, Tensor *t) {
    char pat[256]; snprintf(pat, sizeof pat, "\"%s\"", key);
    char *p = strstr(f->hdr, pat), *q;
    if (!p) return -1;
    char *d = strstr(p, "\"dtype\":\"") + 9, *s = strstr(p, "\"shape\":[") + 9, *o = strstr(p, "\"data_offsets\":[") + 16;
    t->rank = 0; t->n = 1;
    while (*s != ']') { long v = strtol(s, &q, 10); if (q == s) break; t->shape[t->rank++] = v; t->n *= v; s = q; if (*s == ',') s++; }
    long off = strtol(o, &q, 10);
    const unsigned char *data = f->buf + 8 + f->hlen + off;
    t->v = A(sizeof(double) * t->n);
    for (long i = 0; i < t->n; i++) {
        if (!strncmp(d, "F32", 3)) { float x; memcpy(&x, data + 4 * i, 4); t->v[i] = x; }
        else if (!strncmp(d, "F16", 3)) { unsigned short x; memcpy(&x, data + 2 * i, 2); t->v[i] = half_to_double(x); }
        else if (!strncmp(d, "F64", 3)) memcpy(&t->v[i], data + 8 * i, 8);
        else if (!strncmp(d, "I64", 3)) { long long x; memcpy(&x, data + 8 * i, 8); t->v[i] = (double)x; }
        else return -1;
    }
    return 0;
}

/* Write tensors (name, data, shape) as safetensors in the case dtype (or float64 for the wrong_dtype bug). */
static int save_st(const char *dir, const char *fname, int count, const char **names, Tensor *ts) {
    int bits = BUG("wrong_dtype") ? 64 : prec, size = bits / 8;
    const char *dt = bits == 64 ? "F64" : bits == 32 ? "F32" : "F16";
    char hdr[65536]; long pos = 0, off = 0;
    pos += sprintf(hdr + pos, "{");
    for (int i = 0; i < count; i++) {
        pos += sprintf(hdr + pos, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", i ? "," : "", names[i], dt);
        for (int r = 0; r < ts[i].rank; r++) pos += sprintf(hdr + pos, "%s%ld", r ? "," : "", ts[i].shape[r]);
        pos += sprintf(hdr + pos, "],\"data_offsets\":[%ld,%ld]}", off, off + ts[i].n * size);
        off += ts[i].n * size;
    }
    pos += sprintf(hdr + pos, "}");
    while (pos % 8) hdr[pos++] = ' ';
    char path[4096]; snprintf(path, sizeof path, "%s/%s", dir, fname);
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    unsigned char len[8]; for (int i = 0; i < 8; i++) len[i] = (unsigned char)((unsigned long long)pos >> (8 * i));
    fwrite(len, 1, 8, f); fwrite(hdr, 1, pos, f);
    for (int i = 0; i < count; i++)
        for (long j = 0; j < ts[i].n; j++) {
            if (bits == 64) fwrite(&ts[i].v[j], 8, 1, f);
            else if (bits == 32) { float x = (float)ts[i].v[j]; fwrite(&x, 4, 1, f); }
            else { unsigned short x = (unsigned short)double_to_half(ts[i].v[j]); fwrite(&x, 2, 1, f); }
        }
    return fclose(f);
}

static Tensor zeros_like(const Tensor *t) {
    Tensor z = *t; z.v = A(sizeof(double) * t->n); return z;
}

static double kept[1 << 20];  /* the keep_grads bug's buffer: dE lives here and is never zeroed */
static Tensor grad_buffer(const Tensor *t) {
    if (!BUG("keep_grads") || t->n > (1 << 20)) return zeros_like(t);
    Tensor z = *t; z.v = kept; return z;
}

/* ---- MPT: out[b,t] = E[idx[b,t]] * (C[k] @ Rw[k])[t], k = task_ids[b] -------------------------------- */
static int mpt(File *pf, File *inf, const char *dir, int grads) {
    Tensor C, Rw, E, idx, tid, g;
    if (get(pf, "prefix_task_cols", &C) || get(pf, "prefix_task_rows", &Rw) || get(pf, "embedding.weight", &E) ||
        get(inf, "indices", &idx) || get(inf, "task_ids", &tid) || get(inf, "grad_output", &g)) return -1;
    long K = C.shape[0], T = C.shape[1], Rk = C.shape[2], D = Rw.shape[2], B = idx.shape[0];
    double *P = A(sizeof(double) * K * T * D);
    for (long k = 0; k < K; k++) for (long t = 0; t < T; t++) for (long d = 0; d < D; d++) {
        double acc = 0;
        for (long r = 0; r < Rk; r++) acc = R(acc + R(C.v[(k * T + t) * Rk + r] * Rw.v[(k * Rk + r) * D + d]));
        P[(k * T + t) * D + d] = acc;
    }
    Tensor out = g; out.v = A(sizeof(double) * B * T * D);
    Tensor dC = zeros_like(&C), dR = zeros_like(&Rw), dE = grad_buffer(&E);
    double *dP = A(sizeof(double) * K * T * D);
    for (long b = 0; b < B; b++) {
        long k = (long)tid.v[tid.n == 1 ? 0 : b];
        if (BUG("mpt_task_off")) k = (k + 1) % K;
        for (long t = 0; t < T; t++) {
            long i = (long)idx.v[b * T + t];
            for (long d = 0; d < D; d++) {
                double e = E.v[i * D + d], p = P[(k * T + t) * D + d], gg = g.v[(b * T + t) * D + d];
                if (!(BUG("mpt_batch_tail") && b >= 4)) out.v[(b * T + t) * D + d] = (BUG("mpt_d_tail") && d >= 8) ? e : R(e * p);
                double de = R(gg * p);
                dE.v[i * D + d] = BUG("mpt_overwrite") ? de : R(dE.v[i * D + d] + de);
                dP[(k * T + t) * D + d] = R(dP[(k * T + t) * D + d] + R(gg * e));
            }
        }
    }
    for (long k = 0; k < K; k++) for (long t = 0; t < T; t++) for (long r = 0; r < Rk; r++) {
        double acc = 0;
        for (long d = 0; d < D; d++) acc = R(acc + R(dP[(k * T + t) * D + d] * Rw.v[(k * Rk + r) * D + d]));
        dC.v[(k * T + t) * Rk + r] = acc;
    }
    for (long k = 0; k < K; k++) for (long r = 0; r < Rk; r++) for (long d = 0; d < D; d++) {
        double acc = 0;
        for (long t = 0; t < T; t++) acc = R(acc + R(C.v[(k * T + t) * Rk + r] * dP[(k * T + t) * D + d]));
        dR.v[(k * Rk + r) * D + d] = acc;
    }
    const char *on[] = {"output"}, *gn[] = {"prefix_task_cols", "prefix_task_rows", "embedding.weight"};
    Tensor gt[] = {dC, dR, dE};
    return save_st(dir, "output.safetensors", 1, on, &out) || (grads && save_st(dir, "grads.safetensors", 3, gn, gt));
}

/* ---- MLP encoder: Linear(D,H) ReLU Linear(H,H) ReLU Linear(H,D) on E[idx] ------------------------------ */
static void linear(long N, long I, long O, const double *x, const double *W, const double *b, double *y) {
    for (long n = 0; n < N; n++) for (long o = 0; o < O; o++) {
        double acc = 0;
        for (long i = 0; i < I; i++) acc = R(acc + R(x[n * I + i] * W[o * I + i]));
        y[n * O + o] = R(acc + b[o]);
    }
}

static void linear_back(long N, long I, long O, const double *x, const double *W, const double *dy, double *dx,
                        double *dW, double *db) {
    for (long o = 0; o < O; o++) {
        for (long i = 0; i < I; i++) {
            double acc = 0;
            for (long n = 0; n < N; n++) acc = R(acc + R(dy[n * O + o] * x[n * I + i]));
            dW[o * I + i] = acc;
        }
        double acc = 0;
        for (long n = 0; n < (BUG("mlp_bias_once") ? 1 : N); n++) acc = R(acc + dy[n * O + o]);
        db[o] = acc;
    }
    for (long n = 0; n < N; n++) for (long i = 0; i < I; i++) {
        double acc = 0;
        for (long o = 0; o < O; o++) acc = R(acc + R(dy[n * O + o] * W[o * I + i]));
        dx[n * I + i] = acc;
    }
}

static int mlp(File *pf, File *inf, const char *dir, int grads) {
    Tensor E, W[3], b[3], idx, g;
    const char *pn[] = {"embedding.weight", "mlp_head.0.weight", "mlp_head.0.bias", "mlp_head.2.weight",
                        "mlp_head.2.bias", "mlp_head.4.weight", "mlp_head.4.bias"};
    if (get(pf, pn[0], &E) || get(inf, "indices", &idx) || get(inf, "grad_output", &g)) return -1;
    for (int j = 0; j < 3; j++) if (get(pf, pn[1 + 2 * j], &W[j]) || get(pf, pn[2 + 2 * j], &b[j])) return -1;
    if (BUG("mlp_h_tail")) for (long o = 4; o < b[1].n; o++) b[1].v[o] = 0;
    long N = idx.n, D = E.shape[1], H = W[0].shape[0], width[4] = {D, H, H, D};
    double *a[4], *z[3], *da = A(sizeof(double) * N * (D > H ? D : H)), *dz = A(sizeof(double) * N * (D > H ? D : H));
    a[0] = A(sizeof(double) * N * D);
    for (long n = 0; n < N; n++) for (long d = 0; d < D; d++) a[0][n * D + d] = E.v[(long)idx.v[n] * D + d];
    for (int j = 0; j < 3; j++) {
        z[j] = A(sizeof(double) * N * width[j + 1]); a[j + 1] = A(sizeof(double) * N * width[j + 1]);
        linear(N, width[j], width[j + 1], a[j], W[j].v, b[j].v, z[j]);
        for (long m = 0; m < N * width[j + 1]; m++) a[j + 1][m] = (j < 2 && z[j][m] < 0) ? 0 : z[j][m];
    }
    Tensor out = g; out.v = a[3];
    Tensor gt[7]; gt[0] = grad_buffer(&E);
    memcpy(dz, g.v, sizeof(double) * N * D);
    for (int j = 2; j >= 0; j--) {
        gt[1 + 2 * j] = zeros_like(&W[j]); gt[2 + 2 * j] = zeros_like(&b[j]);
        linear_back(N, width[j], width[j + 1], a[j], W[j].v, dz, da, gt[1 + 2 * j].v, gt[2 + 2 * j].v);
        for (long m = 0; m < N * width[j]; m++)
            dz[m] = (j > 0 && z[j - 1][m] <= 0 && !(BUG("mlp_relu_grad") && j == 2)) ? 0 : da[m];
    }
    for (long n = 0; n < N; n++) for (long d = 0; d < D; d++) {
        long i = (long)idx.v[n];
        gt[0].v[i * D + d] = R(gt[0].v[i * D + d] + dz[n * D + d]);
    }
    const char *on[] = {"output"};
    return save_st(dir, "output.safetensors", 1, on, &out) || (grads && save_st(dir, "grads.safetensors", 7, pn, gt));
}

static const char *serve(const char *dir) {
    char path[4096]; long len; snprintf(path, sizeof path, "%s/case.json", dir);
    char *js = (char *)slurp(path, &len);
    if (!js) return "cannot read case.json";
    char *m = strstr(js, "\"module\": \""), *d = strstr(js, "\"dtype\": \"");
    if (!m || !d) return "case.json without module or dtype";
    prec = !strncmp(d + 10, "float16", 7) ? 16 : !strncmp(d + 10, "float32", 7) ? 32 : 64;
    int grads = strstr(js, "\"gradients\": true") != NULL;
    File pf, inf;
    if (open_st(&pf, dir, "params.safetensors") || open_st(&inf, dir, "inputs.safetensors")) return "cannot read inputs";
    int rc;
    if (!strncmp(m + 11, "mpt\"", 4)) rc = mpt(&pf, &inf, dir, grads);
    else if (!strncmp(m + 11, "mlp_encoder\"", 12)) rc = mlp(&pf, &inf, dir, grads);
    else return "this port implements mpt and mlp_encoder only";
    return rc ? "failed to read a tensor or write a result" : NULL;
}

int main(int argc, char **argv) {
    char line[4096];
    bug = getenv("MPT_PORT_BUG") ? getenv("MPT_PORT_BUG") : "";
    if (argc > 1) { const char *err = serve(argv[1]); if (err) fprintf(stderr, "%s\n", err); return err != NULL; }
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\r\n")] = 0;
        const char *err = serve(line);
        release();
        if (err) printf("error %s\n", err); else printf("ok\n");
        fflush(stdout);
    }
    return 0;
}
