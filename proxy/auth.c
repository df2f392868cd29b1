/* Upstream authentication without I/O: challenge parsing (RFC 7235 section 2.1, RFC 6750
 * section 3), the token endpoint's URL and answer (distribution's docs/spec/auth/token.md),
 * RFC 3339 times, Basic credentials (RFC 7617), scopes and the token cache.
 *
 * Everything parsed here comes from the network, so every loop is bounded by its input and
 * every output by its buffer; malformed input is refused, never repaired.
 */
#include "proxy/auth.h"

#include <errno.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/err.h"
#include "common/sbuf.h"

/* ---- Challenges -------------------------------------------------------------------------- */

/* RFC 7230 tchar. */
static bool tchar(char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static size_t span_token(const char *p)
{
    size_t n = 0;
    while (tchar(p[n]))
        n++;
    return n;
}

/* RFC 7235 token68: 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=". */
static size_t span_token68(const char *p)
{
    size_t n = 0;
    while ((p[n] >= 'a' && p[n] <= 'z') || (p[n] >= 'A' && p[n] <= 'Z') ||
           (p[n] >= '0' && p[n] <= '9') || (p[n] != '\0' && strchr("-._~+/", p[n])))
        n++;
    if (n == 0)
        return 0;
    while (p[n] == '=')
        n++;
    return n;
}

static const char *ows(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

/* Reads a parameter value (token or quoted-string) at *pp into out[cap] (out may be NULL to
 * skip it) and advances *pp. Returns 0, 1 when the value did not fit (out holds a prefix), or
 * -1 on a syntax error. */
static int read_value(const char **pp, char *out, size_t cap)
{
    const char *p = *pp;
    size_t n = 0;
    bool over = false;
    if (*p == '"') {
        p++;
        for (;;) {
            char c = *p;
            if (c == '\0')
                return -1; /* unterminated */
            if (c == '"') {
                p++;
                break;
            }
            if (c == '\\') {
                /* quoted-pair: the next byte stands for itself (a quote, a backslash...). */
                p++;
                c = *p;
                if (c == '\0')
                    return -1;
            }
            if (((unsigned char)c < 0x20 && c != '\t') || c == 0x7f)
                return -1;
            if (out && n + 1 < cap)
                out[n++] = c;
            else
                over = true;
            p++;
        }
    } else {
        size_t k = span_token(p);
        if (out && k < cap) {
            memcpy(out, p, k);
            n = k;
        } else {
            over = true;
        }
        p += k;
    }
    if (out && cap > 0)
        out[n] = '\0';
    *pp = p;
    return over ? 1 : 0;
}

/* The parameter winch keeps for name, or NULL to skip it. seen records which were set: the
 * first occurrence of a parameter wins. */
static char *param_slot(auth_challenge_t *c, const char *name, size_t n, unsigned *seen,
                        size_t *cap)
{
    static const char *const names[] = {"realm", "service", "scope", "error"};
    for (unsigned i = 0; i < 4; i++) {
        if (strlen(names[i]) != n || strncasecmp(name, names[i], n) != 0)
            continue;
        if (*seen & (1u << i))
            return NULL;
        *seen |= 1u << i;
        switch (i) {
        case 0:
            *cap = sizeof c->realm;
            return c->realm;
        case 1:
            *cap = sizeof c->service;
            return c->service;
        case 2:
            *cap = sizeof c->scope;
            return c->scope;
        default:
            *cap = sizeof c->error;
            return c->error;
        }
    }
    return NULL;
}

int auth_challenge_parse(const char *value, auth_challenge_t *best)
{
    const char *p = value;
    int found = 0;
    auth_challenge_t cur;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (*p == '\0')
            break;
        size_t n = span_token(p);
        if (n == 0)
            goto bad;
        memset(&cur, 0, sizeof cur);
        if (n == 6 && strncasecmp(p, "bearer", 6) == 0)
            cur.scheme = AUTH_BEARER;
        else if (n == 5 && strncasecmp(p, "basic", 5) == 0)
            cur.scheme = AUTH_BASIC;
        p += n;
        if (*p != '\0' && *p != ' ' && *p != '\t' && *p != ',')
            goto bad;
        bool usable = true;
        unsigned seen = 0;
        p = ows(p);
        /* A token68 (e.g. "Negotiate abc==") stands alone before the next comma. */
        size_t t68 = span_token68(p);
        if (t68 > 0) {
            const char *q = ows(p + t68);
            if (*q == '\0' || *q == ',') {
                p = q;
                goto commit;
            }
        }
        for (;;) {
            p = ows(p);
            if (*p == '\0')
                break;
            if (*p == ',') {
                /* Either the next parameter or the next challenge: a parameter is a token
                 * followed by '='. */
                const char *q = p;
                while (*q == ',' || *q == ' ' || *q == '\t')
                    q++;
                size_t k = span_token(q);
                if (k == 0 || *ows(q + k) != '=')
                    break;
                p = q;
            }
            size_t k = span_token(p);
            if (k == 0)
                goto bad;
            const char *name = p;
            p = ows(p + k);
            if (*p != '=')
                goto bad;
            p = ows(p + 1);
            size_t cap = 0;
            char *slot = param_slot(&cur, name, k, &seen, &cap);
            int rc = read_value(&p, slot, cap);
            if (rc < 0)
                goto bad;
            if (rc > 0 && slot)
                usable = false; /* a cut realm or scope would send winch somewhere else */
            p = ows(p);
            if (*p != '\0' && *p != ',')
                goto bad;
        }
    commit:
        if (!usable)
            continue;
        if (cur.scheme == AUTH_BEARER && cur.realm[0]) {
            found++;
            if (best->scheme != AUTH_BEARER)
                *best = cur;
        } else if (cur.scheme == AUTH_BASIC) {
            found++;
            if (best->scheme == AUTH_NONE)
                *best = cur;
        }
    }
    return found;
bad:
    return found > 0 ? found : WE_INVALID;
}

/* ---- Scopes -------------------------------------------------------------------------------- */

typedef struct scope_ref {
    const char *p;
    size_t n;
} scope_ref_t;

/* Splits a space-separated scope list. Returns the count, or -1 over AUTH_MAX_SCOPES. */
static int split_scopes(const char *s, scope_ref_t *out)
{
    int n = 0;
    while (*s) {
        while (*s == ' ' || *s == '\t')
            s++;
        if (!*s)
            break;
        size_t k = strcspn(s, " \t");
        if (n == AUTH_MAX_SCOPES)
            return -1;
        out[n].p = s;
        out[n].n = k;
        n++;
        s += k;
    }
    return n;
}

static int cmp_scope(const void *a, const void *b)
{
    const scope_ref_t *x = a, *y = b;
    size_t m = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->p, y->p, m);
    if (c)
        return c;
    return x->n < y->n ? -1 : x->n > y->n;
}

int auth_token_key(const auth_challenge_t *c, char *out, size_t cap)
{
    scope_ref_t sc[AUTH_MAX_SCOPES];
    int n = split_scopes(c->scope, sc);
    if (n < 0)
        return WE_INVALID;
    qsort(sc, (size_t)n, sizeof sc[0], cmp_scope);
    sbuf_t b;
    sbuf_init(&b, out, cap);
    sbuf_puts(&b, c->realm);
    sbuf_add(&b, "\n", 1);
    sbuf_puts(&b, c->service);
    sbuf_add(&b, "\n", 1);
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (i > 0 && cmp_scope(&sc[i], &sc[i - 1]) == 0)
            continue;
        if (k++ > 0)
            sbuf_add(&b, " ", 1);
        sbuf_add(&b, sc[i].p, sc[i].n);
    }
    return b.overflow ? WE_TOOBIG : 0;
}

static void add_encoded(sbuf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            sbuf_add(b, &s[i], 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            sbuf_add(b, e, 3);
        }
    }
}

int auth_token_url(const auth_challenge_t *c, char *out, size_t cap)
{
    scope_ref_t sc[AUTH_MAX_SCOPES];
    int n = split_scopes(c->scope, sc);
    if (n < 0 || strchr(c->realm, '#'))
        return WE_INVALID;
    sbuf_t b;
    sbuf_init(&b, out, cap);
    sbuf_puts(&b, c->realm);
    size_t rl = strlen(c->realm);
    const char *sep = "?";
    if (strchr(c->realm, '?'))
        sep = (rl > 0 && (c->realm[rl - 1] == '?' || c->realm[rl - 1] == '&')) ? "" : "&";
    if (c->service[0]) {
        sbuf_puts(&b, sep);
        sbuf_puts(&b, "service=");
        add_encoded(&b, c->service, strlen(c->service));
        sep = "&";
    }
    for (int i = 0; i < n; i++) {
        sbuf_puts(&b, sep);
        sbuf_puts(&b, "scope=");
        add_encoded(&b, sc[i].p, sc[i].n);
        sep = "&";
    }
    return b.overflow ? WE_TOOBIG : 0;
}

bool auth_scopes_grant(const char *scopes, const char *want)
{
    const char *wc = strrchr(want, ':');
    if (!wc || wc == want)
        return false;
    size_t wres = (size_t)(wc - want); /* "repository:<name>" */
    const char *wact = wc + 1;
    size_t wal = strlen(wact);
    scope_ref_t sc[AUTH_MAX_SCOPES];
    int n = split_scopes(scopes, sc);
    for (int i = 0; i < n; i++) {
        /* The actions follow the last ':' (names never hold one; a type may, "repository(x)"). */
        const char *last = NULL;
        for (size_t j = 0; j < sc[i].n; j++)
            if (sc[i].p[j] == ':')
                last = sc[i].p + j;
        if (!last || (size_t)(last - sc[i].p) != wres || memcmp(sc[i].p, want, wres) != 0)
            continue;
        const char *a = last + 1, *end = sc[i].p + sc[i].n;
        while (a < end) {
            const char *comma = memchr(a, ',', (size_t)(end - a));
            size_t al = comma ? (size_t)(comma - a) : (size_t)(end - a);
            if ((al == wal && memcmp(a, wact, al) == 0) || (al == 1 && *a == '*'))
                return true;
            a += al + 1;
        }
    }
    return false;
}

int auth_repo_scope(const char *path, const char *base_path, char *out, size_t cap)
{
    size_t bl = base_path ? strlen(base_path) : 0;
    if (strncmp(path, base_path ? base_path : "", bl) != 0)
        return WE_NOTFOUND;
    const char *p = path + bl;
    if (strncmp(p, "/v2/", 4) != 0)
        return WE_NOTFOUND;
    p += 4;
    size_t n = strcspn(p, "?#");
    static const char tags[] = "/tags/list";
    size_t name_len;
    if (n > sizeof tags - 1 && memcmp(p + n - (sizeof tags - 1), tags, sizeof tags - 1) == 0) {
        name_len = n - (sizeof tags - 1);
    } else {
        /* <name>/<kind>/<ref>: the ref is the last component, the kind the one before. */
        const char *last = NULL, *prev = NULL;
        for (size_t i = 0; i < n; i++) {
            if (p[i] == '/') {
                prev = last;
                last = p + i;
            }
        }
        if (!last || !prev)
            return WE_NOTFOUND;
        size_t kl = (size_t)(last - prev - 1);
        const char *kind = prev + 1;
        if (!((kl == 9 && memcmp(kind, "manifests", 9) == 0) ||
              (kl == 5 && memcmp(kind, "blobs", 5) == 0) ||
              (kl == 9 && memcmp(kind, "referrers", 9) == 0)))
            return WE_NOTFOUND;
        name_len = (size_t)(prev - p);
    }
    if (name_len == 0)
        return WE_NOTFOUND;
    for (size_t i = 0; i < name_len; i++)
        if ((unsigned char)p[i] <= ' ' || p[i] == ':' || p[i] == ',' || p[i] == '"' ||
            (unsigned char)p[i] >= 0x7f)
            return WE_NOTFOUND;
    int k = snprintf(out, cap, "repository:%.*s:pull", (int)name_len, p);
    if (k < 0 || (size_t)k >= cap)
        return WE_TOOBIG;
    return 0;
}

/* ---- Time ------------------------------------------------------------------------------------ */

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static bool digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

int auth_rfc3339_ms(const char *s, int64_t *ms)
{
    int Y, M, D, h, m, sec;
    if (!digits(s, 4, &Y) || s[4] != '-' || !digits(s + 5, 2, &M) || s[7] != '-' ||
        !digits(s + 8, 2, &D) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
        !digits(s + 11, 2, &h) || s[13] != ':' || !digits(s + 14, 2, &m) || s[16] != ':' ||
        !digits(s + 17, 2, &sec))
        return WE_INVALID;
    static const unsigned char mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (M < 1 || M > 12 || D < 1 || D > mdays[M - 1] || h > 23 || m > 59 || sec > 60)
        return WE_INVALID;
    bool leap = (Y % 4 == 0 && Y % 100 != 0) || Y % 400 == 0;
    if (M == 2 && D == 29 && !leap)
        return WE_INVALID;
    if (sec == 60)
        sec = 59; /* a leap second: close enough for an expiry */
    const char *p = s + 19;
    int frac_ms = 0;
    if (*p == '.') {
        p++;
        int nd = 0;
        while (*p >= '0' && *p <= '9') {
            if (nd < 3)
                frac_ms = frac_ms * 10 + (*p - '0');
            nd++;
            p++;
            if (nd > 12)
                return WE_INVALID;
        }
        if (nd == 0)
            return WE_INVALID;
        for (int i = nd; i < 3; i++)
            frac_ms *= 10;
    }
    int off_min = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om;
        if (!digits(p + 1, 2, &oh) || p[3] != ':' || !digits(p + 4, 2, &om) || oh > 23 || om > 59)
            return WE_INVALID;
        off_min = (oh * 60 + om) * (*p == '-' ? -1 : 1);
        p += 6;
    } else {
        return WE_INVALID;
    }
    if (*p != '\0')
        return WE_INVALID;
    int64_t days = days_from_civil(Y, (unsigned)M, (unsigned)D);
    int64_t secs = days * 86400 + h * 3600 + m * 60 + sec - (int64_t)off_min * 60;
    *ms = secs * 1000 + frac_ms;
    return 0;
}

/* ---- Token answers ------------------------------------------------------------------------- */

static bool token_chars_ok(const char *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)t[i] <= ' ' || (unsigned char)t[i] >= 0x7f)
            return false;
    return true;
}

int auth_token_parse(const char *body, size_t len, int64_t now_ms, char **token,
                     int64_t *expires_ms)
{
    int rc = WE_PROTO;
    json_error_t je;
    json_t *root = json_loadb(body, len, 0, &je);
    if (!json_is_object(root))
        goto fail;
    const char *t = json_string_value(json_object_get(root, "token"));
    if (!t || !*t)
        t = json_string_value(json_object_get(root, "access_token"));
    if (!t || !*t)
        goto fail;
    size_t tl = strlen(t);
    if (tl > AUTH_MAX_TOKEN || !token_chars_ok(t, tl))
        goto fail;
    int64_t secs = AUTH_MIN_EXPIRES_S;
    json_t *e = json_object_get(root, "expires_in");
    if (json_is_integer(e))
        secs = (int64_t)json_integer_value(e);
    else if (json_is_real(e) && json_real_value(e) > -1e9 && json_real_value(e) < 1e9)
        secs = (int64_t)json_real_value(e); /* in range both ways: the conversion is defined */
    if (secs < AUTH_MIN_EXPIRES_S)
        secs = AUTH_MIN_EXPIRES_S;
    if (secs > 366 * 86400)
        secs = 366 * 86400; /* no token is trusted for longer than a year */
    int64_t issued = now_ms;
    const char *ia = json_string_value(json_object_get(root, "issued_at"));
    int64_t parsed;
    if (ia && auth_rfc3339_ms(ia, &parsed) == 0 && parsed < now_ms)
        issued = parsed; /* a time in the future is clock skew: count from now */
    char *copy = strdup(t);
    if (!copy) {
        rc = -ENOMEM;
        goto fail;
    }
    *token = copy;
    *expires_ms = issued + secs * 1000;
    rc = 0;
fail:
    json_decref(root);
    return rc;
}

/* ---- Basic --------------------------------------------------------------------------------- */

int auth_basic_header(const char *user, const char *pass, char *out, size_t cap)
{
    static const char prefix[] = "Authorization: Basic ";
    size_t ul = strlen(user), pl = strlen(pass);
    if (strchr(user, ':'))
        return WE_INVALID;
    for (const char *s = user; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return WE_INVALID;
    for (const char *s = pass; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return WE_INVALID;
    if (ul + pl > 1024)
        return WE_TOOBIG;
    size_t n = ul + 1 + pl;
    size_t b64 = 4 * ((n + 2) / 3);
    if (sizeof prefix - 1 + b64 + 1 > cap)
        return WE_TOOBIG;
    unsigned char plain[1026];
    memcpy(plain, user, ul);
    plain[ul] = ':';
    memcpy(plain + ul + 1, pass, pl);
    memcpy(out, prefix, sizeof prefix - 1);
    EVP_EncodeBlock((unsigned char *)out + sizeof prefix - 1, plain, (int)n);
    OPENSSL_cleanse(plain, sizeof plain);
    return 0;
}

/* ---- Token cache --------------------------------------------------------------------------- */

typedef struct entry {
    char *key;
    char *token;
    int64_t expires_ms;
    uint64_t gen;
    bool proactive;
} entry_t;

struct auth_cache {
    entry_t *e;
    size_t n, max;
    uint64_t next_gen;
};

int auth_cache_create(auth_cache_t **out, size_t max)
{
    auth_cache_t *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->max = max ? max : 1;
    c->e = calloc(c->max, sizeof *c->e);
    if (!c->e) {
        free(c);
        return -ENOMEM;
    }
    c->next_gen = 1;
    *out = c;
    return 0;
}

static void entry_clear(entry_t *e)
{
    if (e->token)
        OPENSSL_cleanse(e->token, strlen(e->token));
    free(e->token);
    free(e->key);
    memset(e, 0, sizeof *e);
}

static void remove_at(auth_cache_t *c, size_t i)
{
    entry_clear(&c->e[i]);
    c->e[i] = c->e[c->n - 1];
    memset(&c->e[c->n - 1], 0, sizeof c->e[0]);
    c->n--;
}

void auth_cache_free(auth_cache_t *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++)
        entry_clear(&c->e[i]);
    free(c->e);
    free(c);
}

static bool usable(const entry_t *e, int64_t now_ms)
{
    return now_ms < e->expires_ms - AUTH_EXPIRY_MARGIN_MS;
}

const char *auth_cache_get(const auth_cache_t *c, const char *key, int64_t now_ms, uint64_t *gen)
{
    for (size_t i = 0; i < c->n; i++) {
        const entry_t *e = &c->e[i];
        if (strcmp(e->key, key) == 0) {
            if (!usable(e, now_ms))
                return NULL;
            *gen = e->gen;
            return e->token;
        }
    }
    return NULL;
}

const char *auth_cache_find_scope(const auth_cache_t *c, const char *want, int64_t now_ms,
                                  uint64_t *gen)
{
    const entry_t *best = NULL;
    for (size_t i = 0; i < c->n; i++) {
        const entry_t *e = &c->e[i];
        if (!e->proactive || !usable(e, now_ms))
            continue;
        const char *scopes = strrchr(e->key, '\n');
        if (!scopes || !auth_scopes_grant(scopes + 1, want))
            continue;
        /* Several may grant it: the one that lives longest. */
        if (!best || e->expires_ms > best->expires_ms)
            best = e;
    }
    if (!best)
        return NULL;
    *gen = best->gen;
    return best->token;
}

int auth_cache_put(auth_cache_t *c, const char *key, bool proactive, const char *token,
                   int64_t expires_ms, uint64_t *gen)
{
    char *k = strdup(key), *t = strdup(token);
    if (!k || !t) {
        free(k);
        free(t);
        return -ENOMEM;
    }
    for (size_t i = 0; i < c->n; i++) {
        if (strcmp(c->e[i].key, key) == 0) {
            remove_at(c, i);
            break;
        }
    }
    if (c->n == c->max) {
        /* Full: the entry that expires first goes (an expired one, if any). */
        size_t victim = 0;
        for (size_t i = 1; i < c->n; i++)
            if (c->e[i].expires_ms < c->e[victim].expires_ms)
                victim = i;
        remove_at(c, victim);
    }
    entry_t *e = &c->e[c->n++];
    e->key = k;
    e->token = t;
    e->expires_ms = expires_ms;
    e->proactive = proactive;
    e->gen = c->next_gen++;
    *gen = e->gen;
    return 0;
}

void auth_cache_drop(auth_cache_t *c, uint64_t gen)
{
    for (size_t i = 0; i < c->n; i++) {
        if (c->e[i].gen == gen) {
            remove_at(c, i);
            return;
        }
    }
}

size_t auth_cache_size(const auth_cache_t *c)
{
    return c->n;
}
