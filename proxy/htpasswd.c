/* htpasswd files: parsing and lookup (htpasswd.h). Entries are kept sorted by user name for a
 * binary search; one allocation holds every name and hash. Messages never contain a hash, nor
 * any byte of a line that is not a user name: a line that does not parse may be a password
 * someone pasted in. */
#include "proxy/htpasswd.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"

typedef struct entry {
    const char *user; /* points into text */
    const char *hash; /* points into text; HTPASSWD_HASH_LEN bytes + NUL */
    size_t line;
} entry_t;

struct htpasswd {
    entry_t *entries; /* sorted by user */
    size_t n;
    char *text; /* "user\0hash\0" for every entry */
    size_t text_len;
};

/* ---- Messages ------------------------------------------------------------------------ */

/* A user name in a message: printable ASCII kept, anything else as '?', long names cut. */
static const char *shown_user(char *buf, size_t cap, const char *s, size_t n)
{
    size_t o = 0, room = cap - 6; /* quotes, "...", NUL */
    buf[o++] = '"';
    for (size_t i = 0; i < n && i < room; i++) {
        unsigned char ch = (unsigned char)s[i];
        buf[o++] = (ch >= 0x20 && ch < 0x7f && ch != '"') ? (char)ch : '?';
    }
    if (n > room) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

/* memset that the compiler may not drop before free(). */
static void wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    while (n--)
        *v++ = 0;
}

static int fail(char *err, size_t errlen, const char *origin, size_t line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static int fail(char *err, size_t errlen, const char *origin, size_t line, const char *fmt, ...)
{
    if (!err || !errlen)
        return WE_CONFIG;
    int n = line ? snprintf(err, errlen, "%s:%zu: ", origin, line)
                 : snprintf(err, errlen, "%s: ", origin);
    if (n >= 0 && (size_t)n < errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return WE_CONFIG;
}

/* ---- Grammar ------------------------------------------------------------------------- */

static bool is_b64(char ch)
{
    return ch == '.' || ch == '/' || (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
           (ch >= '0' && ch <= '9');
}

/* NULL when h[0..n) is a bcrypt hash; else a reason without any byte of it. */
static const char *bcrypt_problem(const char *h, size_t n)
{
    if (n >= 6 && memcmp(h, "$apr1$", 6) == 0)
        return "an MD5 (apr1) hash; winch accepts bcrypt only (htpasswd -B)";
    if (n >= 5 && memcmp(h, "{SHA}", 5) == 0)
        return "a SHA-1 hash; winch accepts bcrypt only (htpasswd -B)";
    if (n >= 3 && h[0] == '$' && (h[1] == '5' || h[1] == '6') && h[2] == '$')
        return "a SHA-crypt hash; winch accepts bcrypt only (htpasswd -B)";
    if (n < 4 || h[0] != '$' || h[1] != '2' || (h[2] != 'y' && h[2] != 'b' && h[2] != 'a') ||
        h[3] != '$')
        return "not a bcrypt hash ($2y$, $2b$ or $2a$); winch accepts bcrypt only "
               "(htpasswd -B)";
    if (n != HTPASSWD_HASH_LEN)
        return "a bcrypt hash must be 60 characters";
    if (h[4] < '0' || h[4] > '3' || h[5] < '0' || h[5] > '9' || h[6] != '$')
        return "bad bcrypt cost (want two digits, 04..31)";
    int cost = (h[4] - '0') * 10 + (h[5] - '0');
    if (cost < 4 || cost > 31)
        return "bad bcrypt cost (want 04..31)";
    for (size_t i = 7; i < n; i++)
        if (!is_b64(h[i]))
            return "a bcrypt hash holds only [./A-Za-z0-9] after its cost";
    return NULL;
}

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const entry_t *)a)->user, ((const entry_t *)b)->user);
}

/* One line (without its newline): an entry appended to h, or a message. */
static int parse_line(htpasswd_t *h, const char *s, size_t n, size_t lineno, const char *origin,
                      char *err, size_t errlen)
{
    char who[96];
    if (n > 0 && s[n - 1] == '\r')
        n--;
    size_t lead = 0;
    while (lead < n && (s[lead] == ' ' || s[lead] == '\t'))
        lead++;
    if (lead == n || s[lead] == '#')
        return 0;
    if (memchr(s, '\0', n))
        return fail(err, errlen, origin, lineno, "contains a NUL byte");
    const char *colon = memchr(s, ':', n);
    if (!colon)
        return fail(err, errlen, origin, lineno, "not USER:HASH (no ':')");
    size_t ulen = (size_t)(colon - s);
    if (ulen == 0)
        return fail(err, errlen, origin, lineno, "empty user name");
    if (ulen > HTPASSWD_USER_MAX)
        return fail(err, errlen, origin, lineno, "user name longer than %d bytes",
                    HTPASSWD_USER_MAX);
    for (size_t i = 0; i < ulen; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch == 0x7f)
            return fail(err, errlen, origin, lineno, "control character in the user name");
    }
    const char *hash = colon + 1;
    size_t hlen = n - ulen - 1;
    while (hlen > 0 && (hash[hlen - 1] == ' ' || hash[hlen - 1] == '\t'))
        hlen--;
    const char *why = bcrypt_problem(hash, hlen);
    if (why)
        return fail(err, errlen, origin, lineno, "user %s: %s",
                    shown_user(who, sizeof who, s, ulen), why);
    if (h->n >= HTPASSWD_MAX_USERS)
        return fail(err, errlen, origin, lineno, "more than %u users", HTPASSWD_MAX_USERS);
    entry_t *e = &h->entries[h->n++];
    char *dst = h->text + h->text_len;
    memcpy(dst, s, ulen);
    dst[ulen] = '\0';
    memcpy(dst + ulen + 1, hash, HTPASSWD_HASH_LEN);
    dst[ulen + 1 + HTPASSWD_HASH_LEN] = '\0';
    h->text_len += ulen + HTPASSWD_HASH_LEN + 2;
    *e = (entry_t){.user = dst, .hash = dst + ulen + 1, .line = lineno};
    return 0;
}

int htpasswd_parse(htpasswd_t **out, const char *text, size_t len, const char *origin, char *err,
                   size_t errlen)
{
    *out = NULL;
    if (len > HTPASSWD_MAX_BYTES)
        return fail(err, errlen, origin, 0, "larger than %u bytes", HTPASSWD_MAX_BYTES);
    size_t lines = 1;
    for (size_t i = 0; i < len; i++)
        lines += text[i] == '\n';
    htpasswd_t *h = calloc(1, sizeof *h);
    /* Each entry stores its name and a 60-byte hash from a line at least that long, plus two
     * NULs: the text's length plus two bytes a line bounds it. */
    if (h) {
        h->entries =
            calloc(lines < HTPASSWD_MAX_USERS ? lines : HTPASSWD_MAX_USERS, sizeof *h->entries);
        h->text = malloc(len + 2 * lines + 1);
    }
    int rc = -ENOMEM;
    if (!h || !h->entries || !h->text) {
        if (err && errlen)
            snprintf(err, errlen, "%s: out of memory", origin);
        goto fail;
    }
    size_t lineno = 0;
    for (size_t pos = 0; pos < len;) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - (text + pos)) : len - pos;
        if ((rc = parse_line(h, text + pos, n, ++lineno, origin, err, errlen)) < 0)
            goto fail;
        pos += n + 1;
    }
    qsort(h->entries, h->n, sizeof *h->entries, cmp_entry);
    for (size_t i = 1; i < h->n; i++) {
        if (strcmp(h->entries[i - 1].user, h->entries[i].user) == 0) {
            const entry_t *a = &h->entries[i - 1], *b = &h->entries[i];
            size_t first = a->line < b->line ? a->line : b->line;
            size_t again = a->line < b->line ? b->line : a->line;
            char who[96];
            rc = fail(err, errlen, origin, again, "user %s appears again (first on line %zu)",
                      shown_user(who, sizeof who, a->user, strlen(a->user)), first);
            goto fail;
        }
    }
    *out = h;
    return 0;
fail:
    htpasswd_free(h);
    return rc;
}

int htpasswd_load(htpasswd_t **out, const char *path, char *err, size_t errlen)
{
    *out = NULL;
    int rc;
    char *buf = NULL;
    size_t n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return fail(err, errlen, path, 0, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        rc = fail(err, errlen, path, 0, "not a regular file");
        goto out;
    }
    /* Read one byte past the bound to tell "too big" from "exactly the bound"; the size from
     * fstat is only a hint (the file may be rewritten while it is read). */
    size_t cap = (size_t)st.st_size < HTPASSWD_MAX_BYTES ? (size_t)st.st_size + 1
                                                         : HTPASSWD_MAX_BYTES + 1;
    buf = malloc(cap);
    if (!buf) {
        rc = fail(err, errlen, path, 0, "out of memory");
        goto out;
    }
    for (;;) {
        if (n == cap) {
            if (cap > HTPASSWD_MAX_BYTES) {
                rc = fail(err, errlen, path, 0, "larger than %u bytes", HTPASSWD_MAX_BYTES);
                goto out;
            }
            size_t ncap = cap * 2 > HTPASSWD_MAX_BYTES + 1 ? HTPASSWD_MAX_BYTES + 1 : cap * 2;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                rc = fail(err, errlen, path, 0, "out of memory");
                goto out;
            }
            buf = nb;
            cap = ncap;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = fail(err, errlen, path, 0, "cannot read: %s", strerror(errno));
            goto out;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    rc = htpasswd_parse(out, buf, n, path, err, errlen);
out:
    if (buf) {
        wipe(buf, cap);
        free(buf);
    }
    close(fd);
    return rc;
}

const char *htpasswd_hash(const htpasswd_t *h, const char *user)
{
    if (!h || !user)
        return NULL;
    size_t lo = 0, hi = h->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(user, h->entries[mid].user);
        if (c == 0)
            return h->entries[mid].hash;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *htpasswd_any_hash(const htpasswd_t *h)
{
    return h && h->n ? h->entries[0].hash : NULL;
}

size_t htpasswd_count(const htpasswd_t *h)
{
    return h ? h->n : 0;
}

void htpasswd_free(htpasswd_t *h)
{
    if (!h)
        return;
    if (h->text)
        wipe(h->text, h->text_len);
    free(h->text);
    free(h->entries);
    free(h);
}
