/* tar archives (tar.h): the ustar header block, pax extended headers and GNU long names.
 *
 * A header block (512 bytes) holds, among others: name[0..100), mode[100..108),
 * size[124..136), mtime[136..148), chksum[148..156), typeflag[156], magic[257..263),
 * version[263..265), prefix[345..500) (POSIX ustar only). Numbers are octal text, or, for a
 * size too big for 11 octal digits, GNU's base-256 (first byte 0x80, big-endian). A pax 'x'
 * entry before a file carries "LEN key=value\n" records that override its path and size; a
 * GNU 'L' entry carries the next entry's long name. */
#include "common/tar.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

#define OCTAL_SIZE_MAX 077777777777ULL /* 11 octal digits: 8 GiB - 1 */

/* ---- Writing ------------------------------------------------------------------------------ */

static void put_octal(char *field, size_t width, uint64_t v)
{
    /* width - 1 digits, zero-padded, then NUL. */
    snprintf(field, width, "%0*llo", (int)(width - 1), (unsigned long long)v);
}

static void put_base256(char *field, size_t width, uint64_t v)
{
    memset(field, 0, width);
    field[0] = (char)0x80;
    for (size_t i = width - 1; i > 0 && v; i--, v >>= 8)
        field[i] = (char)(v & 0xff);
}

static void put_checksum(char *h)
{
    unsigned sum = 0;
    memset(h + 148, ' ', 8);
    for (size_t i = 0; i < TAR_BLOCK; i++)
        sum += (unsigned char)h[i];
    snprintf(h + 148, 8, "%06o", sum);
    h[155] = ' ';
}

static void fill_header(char *h, const char *name, uint64_t size, char type)
{
    memset(h, 0, TAR_BLOCK);
    size_t n = strlen(name);
    memcpy(h, name, n > 100 ? 100 : n);
    put_octal(h + 100, 8, type == '5' ? 0755 : 0644);
    put_octal(h + 108, 8, 0);
    put_octal(h + 116, 8, 0);
    if (size > OCTAL_SIZE_MAX)
        put_base256(h + 124, 12, size);
    else
        put_octal(h + 124, 12, size);
    put_octal(h + 136, 12, 0);
    h[156] = type;
    memcpy(h + 257, "ustar", 6);
    memcpy(h + 263, "00", 2);
    put_octal(h + 329, 8, 0);
    put_octal(h + 337, 8, 0);
    put_checksum(h);
}

/* Appends one pax record "LEN key=value\n" to buf (at most cap bytes); returns its length. */
static size_t pax_record(char *buf, size_t cap, const char *key, const char *value)
{
    size_t body = 1 + strlen(key) + 1 + strlen(value) + 1; /* " key=value\n" */
    size_t len = body + 1;
    /* LEN counts its own digits. */
    for (;;) {
        char digits[24];
        size_t d = (size_t)snprintf(digits, sizeof digits, "%zu", len);
        if (body + d == len)
            break;
        len = body + d;
    }
    if (len >= cap)
        return 0;
    snprintf(buf, cap, "%zu %s=%s\n", len, key, value);
    return len;
}

int tar_put_header(tar_write_fn w, void *arg, const char *name, uint64_t size, bool dir)
{
    char h[TAR_BLOCK];
    size_t n = strlen(name);
    if (n == 0 || n > TAR_NAME_MAX)
        return WE_INVALID;
    if (n > 100 || size > OCTAL_SIZE_MAX) {
        char *pax = malloc(TAR_NAME_MAX + 128);
        if (!pax)
            return -ENOMEM;
        size_t len = 0;
        if (n > 100)
            len += pax_record(pax, TAR_NAME_MAX + 128, "path", name);
        if (size > OCTAL_SIZE_MAX) {
            char num[24];
            snprintf(num, sizeof num, "%llu", (unsigned long long)size);
            len += pax_record(pax + len, TAR_NAME_MAX + 128 - len, "size", num);
        }
        char pname[101];
        snprintf(pname, sizeof pname, "PaxHeaders/%.80s", name);
        fill_header(h, pname, len, 'x');
        int rc = w(arg, h, TAR_BLOCK);
        if (rc == 0)
            rc = w(arg, pax, len);
        if (rc == 0)
            rc = tar_put_pad(w, arg, len);
        free(pax);
        if (rc)
            return rc;
    }
    fill_header(h, name, size, dir ? '5' : '0');
    return w(arg, h, TAR_BLOCK);
}

int tar_put_pad(tar_write_fn w, void *arg, uint64_t size)
{
    static const char zeros[TAR_BLOCK];
    size_t pad = (size_t)((TAR_BLOCK - size % TAR_BLOCK) % TAR_BLOCK);
    return pad ? w(arg, zeros, pad) : 0;
}

int tar_put_end(tar_write_fn w, void *arg)
{
    static const char zeros[2 * TAR_BLOCK];
    return w(arg, zeros, sizeof zeros);
}

/* ---- Reading ------------------------------------------------------------------------------ */

struct tar_reader {
    tar_io_t io;
    int err;       /* sticky */
    uint64_t left; /* data bytes of the current entry not read yet */
    uint64_t pad;  /* padding after them */
    char name[TAR_NAME_MAX + 1];
    /* From a pax or GNU header, for the next entry. */
    char next_name[TAR_NAME_MAX + 1];
    bool has_next_name;
    uint64_t next_size;
    bool has_next_size;
};

int tar_reader_new(tar_reader_t **out, const tar_io_t *io)
{
    tar_reader_t *t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    t->io = *io;
    *out = t;
    return 0;
}

void tar_reader_free(tar_reader_t *t)
{
    free(t);
}

/* Reads exactly len bytes: 0, WE_SHORT at the end of the input, or -errno. */
static int read_full(tar_reader_t *t, void *buf, size_t len)
{
    char *p = buf;
    while (len > 0) {
        ssize_t n = t->io.read(t->io.arg, p, len);
        if (n == -EINTR)
            continue;
        if (n < 0)
            return (int)n;
        if (n == 0)
            return WE_SHORT;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int skip_bytes(tar_reader_t *t, uint64_t n)
{
    if (n == 0)
        return 0;
    if (t->io.skip)
        return t->io.skip(t->io.arg, n);
    char buf[8192];
    while (n > 0) {
        size_t k = n < sizeof buf ? (size_t)n : sizeof buf;
        int rc = read_full(t, buf, k);
        if (rc)
            return rc;
        n -= k;
    }
    return 0;
}

/* An octal field (leading spaces, digits, then NUL or spaces) or a base-256 one. */
static int parse_number(const char *f, size_t width, uint64_t *out)
{
    const unsigned char *u = (const unsigned char *)f;
    uint64_t v = 0;
    if (u[0] & 0x80) {
        if (u[0] != 0x80)
            return WE_INVALID; /* negative, or too big */
        for (size_t i = 1; i < width; i++) {
            if (v >> 55)
                return WE_INVALID;
            v = v << 8 | u[i];
        }
        *out = v;
        return 0;
    }
    size_t i = 0;
    while (i < width && f[i] == ' ')
        i++;
    size_t digits = 0;
    for (; i < width && f[i] >= '0' && f[i] <= '7'; i++, digits++) {
        if (v >> 60)
            return WE_INVALID;
        v = v * 8 + (uint64_t)(f[i] - '0');
    }
    for (; i < width; i++)
        if (f[i] != ' ' && f[i] != '\0')
            return WE_INVALID;
    if (digits == 0)
        return WE_INVALID;
    *out = v;
    return 0;
}

static bool checksum_ok(const unsigned char *h)
{
    uint64_t want;
    if (parse_number((const char *)h + 148, 8, &want))
        return false;
    unsigned usum = 0;
    int ssum = 0;
    for (size_t i = 0; i < TAR_BLOCK; i++) {
        unsigned char b = i >= 148 && i < 156 ? ' ' : h[i];
        usum += b;
        ssum += (signed char)b;
    }
    /* Some old writers summed signed chars. */
    return want == usum || (int64_t)want == ssum;
}

static bool all_zero(const unsigned char *h)
{
    for (size_t i = 0; i < TAR_BLOCK; i++)
        if (h[i])
            return false;
    return true;
}

/* Copies s[0..n) into a name buffer, refusing NULs and overlong names. */
static int set_name(char *dst, const char *s, size_t n)
{
    if (n > TAR_NAME_MAX || memchr(s, '\0', n))
        return WE_INVALID;
    memcpy(dst, s, n);
    dst[n] = '\0';
    return 0;
}

/* Applies the records of a pax header: "path" and "size"; others are ignored. */
static int parse_pax(tar_reader_t *t, const char *p, size_t n)
{
    while (n > 0) {
        size_t len = 0, i = 0;
        while (i < n && p[i] >= '0' && p[i] <= '9') {
            len = len * 10 + (size_t)(p[i] - '0');
            if (len > n)
                return WE_INVALID;
            i++;
        }
        if (i == 0 || i >= n || p[i] != ' ' || len <= i + 1 || len > n || p[len - 1] != '\n')
            return WE_INVALID;
        const char *kv = p + i + 1, *end = p + len - 1;
        const char *eq = memchr(kv, '=', (size_t)(end - kv));
        if (!eq)
            return WE_INVALID;
        size_t kl = (size_t)(eq - kv), vl = (size_t)(end - eq - 1);
        if (kl == 4 && memcmp(kv, "path", 4) == 0) {
            if (set_name(t->next_name, eq + 1, vl))
                return WE_INVALID;
            t->has_next_name = true;
        } else if (kl == 4 && memcmp(kv, "size", 4) == 0) {
            uint64_t v = 0;
            if (vl == 0 || vl > 19)
                return WE_INVALID;
            for (size_t k = 0; k < vl; k++) {
                char c = eq[1 + k];
                if (c < '0' || c > '9')
                    return WE_INVALID;
                v = v * 10 + (uint64_t)(c - '0');
            }
            t->next_size = v;
            t->has_next_size = true;
        }
        p += len;
        n -= len;
    }
    return 0;
}

/* Reads a metadata entry's data (pax or GNU long name) of size bytes, plus its padding. */
static int read_meta(tar_reader_t *t, uint64_t size, char **out)
{
    if (size > TAR_META_MAX)
        return WE_TOOBIG;
    char *buf = malloc((size_t)size + 1);
    if (!buf)
        return -ENOMEM;
    int rc = read_full(t, buf, (size_t)size);
    if (rc == 0)
        rc = skip_bytes(t, (TAR_BLOCK - size % TAR_BLOCK) % TAR_BLOCK);
    if (rc) {
        free(buf);
        return rc;
    }
    buf[size] = '\0';
    *out = buf;
    return 0;
}

/* One header block processed: 1 an entry for the caller, 2 metadata consumed (read on), 0 the
 * end of the archive, or an error. */
static int header(tar_reader_t *t, const unsigned char *h, tar_entry_t *e)
{
    uint64_t size;
    if (all_zero(h))
        return 0;
    if (!checksum_ok(h) || parse_number((const char *)h + 124, 12, &size) ||
        size > (UINT64_MAX >> 2))
        return WE_INVALID;
    char type = (char)h[156];
    if (type == 'x' || type == 'g' || type == 'L' || type == 'K') {
        char *meta;
        int rc = read_meta(t, size, &meta);
        if (rc)
            return rc;
        if (type == 'x')
            rc = parse_pax(t, meta, (size_t)size);
        else if (type == 'L') {
            size_t n = strnlen(meta, (size_t)size);
            rc = n == 0 ? WE_INVALID : set_name(t->next_name, meta, n);
            t->has_next_name = rc == 0;
        }
        free(meta);
        return rc ? rc : 2;
    }
    if (t->has_next_size)
        size = t->next_size;
    if (t->has_next_name) {
        memcpy(t->name, t->next_name, sizeof t->name);
    } else {
        char full[TAR_NAME_MAX + 1];
        size_t nl = strnlen((const char *)h, 100);
        size_t pl = memcmp(h + 257, "ustar\0", 6) == 0 ? strnlen((const char *)h + 345, 155) : 0;
        if (pl)
            snprintf(full, sizeof full, "%.*s/%.*s", (int)pl, (const char *)h + 345, (int)nl,
                     (const char *)h);
        else
            snprintf(full, sizeof full, "%.*s", (int)nl, (const char *)h);
        memcpy(t->name, full, strlen(full) + 1);
    }
    t->has_next_name = t->has_next_size = false;
    if (!t->name[0])
        return WE_INVALID;
    const char *name = t->name;
    while (name[0] == '.' && name[1] == '/' && name[2])
        name += 2;
    e->name = name;
    e->type = type == '0' || type == '\0' || type == '7' ? TAR_FILE
              : type == '5'                              ? TAR_DIR
                                                         : TAR_OTHER;
    /* Links and the like carry no data, whatever their size field says (hard links in old
     * archives repeat the target's size). */
    if (type == '1' || type == '2' || type == '3' || type == '4' || type == '6' || type == '5')
        size = 0;
    e->size = size;
    t->left = size;
    t->pad = (TAR_BLOCK - size % TAR_BLOCK) % TAR_BLOCK;
    return 1;
}

int tar_next(tar_reader_t *t, tar_entry_t *e)
{
    if (t->err)
        return t->err;
    int rc = skip_bytes(t, t->left + t->pad);
    t->left = t->pad = 0;
    unsigned char h[TAR_BLOCK];
    while (rc == 0) {
        rc = read_full(t, h, sizeof h);
        if (rc)
            break;
        rc = header(t, h, e);
        if (rc == 2) {
            rc = 0;
            continue;
        }
        if (rc >= 0)
            return rc;
    }
    t->err = rc;
    return rc;
}

ssize_t tar_read(tar_reader_t *t, void *buf, size_t len)
{
    if (t->err)
        return t->err;
    if (t->left == 0)
        return 0;
    if (len > t->left)
        len = (size_t)t->left;
    ssize_t n;
    do
        n = t->io.read(t->io.arg, buf, len);
    while (n == -EINTR);
    if (n == 0)
        n = WE_SHORT;
    if (n < 0) {
        t->err = (int)n;
        return n;
    }
    t->left -= (uint64_t)n;
    return n;
}

uint64_t tar_left(const tar_reader_t *t)
{
    return t->left;
}
