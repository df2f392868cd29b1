/* Absolute http(s) URLs: parsing and reference resolution (RFC 3986 sections 3 and 5), cut
 * down to what a registry client needs and strict about the rest. */
#include "proxy/url.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "common/err.h"

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_hex(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Path and query bytes: printable ASCII without space. Percent-escapes pass through as they
 * are; a server that sent them decodes them itself. */
static bool path_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= ' ' || (unsigned char)s[i] >= 0x7f)
            return false;
    return true;
}

/* Length of the part of s before a fragment. */
static size_t before_fragment(const char *s)
{
    const char *h = strchr(s, '#');
    return h ? (size_t)(h - s) : strlen(s);
}

/* Parses "host[:port][path][?query][#fragment]" (what follows "scheme://"). */
static int parse_authority(url_t *out, bool tls, const char *p)
{
    size_t alen = strcspn(p, "/?#");
    const char *a = p;
    const char *end = a + alen;
    if (memchr(a, '@', alen))
        return WE_INVALID; /* userinfo: credentials never travel in a URL */
    const char *h = a, *hend;
    const char *colon;
    if (alen > 0 && a[0] == '[') {
        const char *rb = memchr(a, ']', alen);
        if (!rb)
            return WE_INVALID;
        h = a + 1;
        hend = rb;
        for (const char *c = h; c < hend; c++)
            if (!is_hex(*c) && *c != ':' && *c != '.')
                return WE_INVALID;
        if (hend - h < 2 || !memchr(h, ':', (size_t)(hend - h)))
            return WE_INVALID;
        colon = rb + 1 < end ? rb + 1 : NULL;
        if (colon && *colon != ':')
            return WE_INVALID;
    } else {
        colon = memchr(a, ':', alen);
        hend = colon ? colon : end;
        for (const char *c = h; c < hend; c++)
            if (!is_alpha(*c) && !is_digit(*c) && *c != '-' && *c != '.' && *c != '_')
                return WE_INVALID;
    }
    size_t hlen = (size_t)(hend - h);
    if (hlen == 0)
        return WE_INVALID;
    if (hlen > URL_MAX_HOST)
        return WE_TOOBIG;
    unsigned long port = tls ? 443 : 80;
    if (colon && colon + 1 < end) {
        const char *d = colon + 1;
        if (end - d > 5)
            return WE_INVALID;
        port = 0;
        for (; d < end; d++) {
            if (!is_digit(*d))
                return WE_INVALID;
            port = port * 10 + (unsigned long)(*d - '0');
        }
        if (port == 0 || port > 65535)
            return WE_INVALID;
    }
    /* Path and query: everything up to a fragment. */
    const char *rest = end;
    size_t rlen = before_fragment(rest);
    if (!path_ok(rest, rlen))
        return WE_INVALID;
    size_t need = rlen + (rlen == 0 || rest[0] != '/' ? 1 : 0);
    if (need > URL_MAX)
        return WE_TOOBIG;
    for (size_t i = 0; i < hlen; i++) {
        char c = h[i];
        out->host[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
    }
    out->host[hlen] = '\0';
    out->tls = tls;
    out->port = (uint16_t)port;
    size_t k = 0;
    if (rlen == 0 || rest[0] != '/')
        out->path[k++] = '/'; /* "http://h" and "http://h?q" have the path "/" */
    memcpy(out->path + k, rest, rlen);
    out->path[k + rlen] = '\0';
    return 0;
}

/* Scheme of s, if s starts with one (ALPHA *(ALPHA / DIGIT / "+" / "-" / ".") ":"): its
 * length, else 0. */
static size_t scheme_len(const char *s)
{
    if (!is_alpha(s[0]))
        return 0;
    size_t i = 1;
    while (is_alpha(s[i]) || is_digit(s[i]) || s[i] == '+' || s[i] == '-' || s[i] == '.')
        i++;
    return s[i] == ':' ? i : 0;
}

int url_parse(url_t *out, const char *s)
{
    if (strnlen(s, URL_MAX + 1) > URL_MAX)
        return WE_TOOBIG;
    size_t n = scheme_len(s);
    if (n == 4 && strncasecmp(s, "http", 4) == 0 && strncmp(s + 4, "://", 3) == 0)
        return parse_authority(out, false, s + 7);
    if (n == 5 && strncasecmp(s, "https", 5) == 0 && strncmp(s + 5, "://", 3) == 0)
        return parse_authority(out, true, s + 8);
    return WE_INVALID;
}

/* RFC 3986 5.2.4 over in[0..n) (a path without query), written to out (cap bytes). Returns the
 * output length, or -1 when it does not fit. in is modified. */
static long remove_dots(char *in, size_t n, char *out, size_t cap)
{
    size_t i = 0, o = 0;
    while (i < n) {
        size_t left = n - i;
        char *s = in + i;
        if (left >= 3 && memcmp(s, "../", 3) == 0) {
            i += 3;
        } else if ((left >= 2 && memcmp(s, "./", 2) == 0) ||
                   (left >= 3 && memcmp(s, "/./", 3) == 0)) {
            i += 2; /* "./" goes; "/./" becomes "/" */
        } else if (left == 2 && memcmp(s, "/.", 2) == 0) {
            s[1] = '/';
            i += 1;
        } else if ((left >= 4 && memcmp(s, "/../", 4) == 0) ||
                   (left == 3 && memcmp(s, "/..", 3) == 0)) {
            if (left == 3) {
                s[2] = '/';
                i += 2;
            } else {
                i += 3;
            }
            while (o > 0 && out[o - 1] != '/')
                o--;
            if (o > 0)
                o--; /* the slash before the removed segment */
        } else if ((left == 1 && s[0] == '.') || (left == 2 && memcmp(s, "..", 2) == 0)) {
            i = n;
        } else {
            /* Move the first segment, with its leading slash, to the output. */
            size_t k = 1;
            while (k < left && s[k] != '/')
                k++;
            if (s[0] != '/') {
                k = 0;
                while (k < left && s[k] != '/')
                    k++;
            }
            if (o + k >= cap)
                return -1;
            memcpy(out + o, s, k);
            o += k;
            i += k;
        }
    }
    return (long)o;
}

/* Writes dir + ref's path (merged when dir is given), dot-free, then ref's query, into out. */
static int set_path(url_t *out, const char *dir, size_t dlen, const char *ref, size_t rlen)
{
    char in[URL_MAX + 1];
    const char *q = memchr(ref, '?', rlen);
    size_t plen = q ? (size_t)(q - ref) : rlen;
    size_t qlen = rlen - plen;
    if (dlen + plen > URL_MAX)
        return WE_TOOBIG;
    memcpy(in, dir, dlen);
    memcpy(in + dlen, ref, plen);
    long o = remove_dots(in, dlen + plen, out->path, URL_MAX + 1);
    if (o < 0)
        return WE_TOOBIG;
    if (o == 0 || out->path[0] != '/') {
        if ((size_t)o + 1 > URL_MAX)
            return WE_TOOBIG;
        memmove(out->path + 1, out->path, (size_t)o);
        out->path[0] = '/';
        o++;
    }
    if ((size_t)o + qlen > URL_MAX)
        return WE_TOOBIG;
    memcpy(out->path + o, q ? q : "", qlen);
    out->path[(size_t)o + qlen] = '\0';
    return 0;
}

int url_resolve(url_t *out, const url_t *base, const char *ref)
{
    if (strnlen(ref, URL_MAX + 1) > URL_MAX)
        return WE_TOOBIG;
    size_t sl = scheme_len(ref);
    if (sl > 0)
        return url_parse(out, ref); /* only http and https pass */
    if (ref[0] == '/' && ref[1] == '/')
        return parse_authority(out, base->tls, ref + 2);
    size_t rlen = before_fragment(ref);
    if (!path_ok(ref, rlen))
        return WE_INVALID;
    out->tls = base->tls;
    out->port = base->port;
    memcpy(out->host, base->host, sizeof out->host);
    const char *bq = strchr(base->path, '?');
    size_t bplen = bq ? (size_t)(bq - base->path) : strlen(base->path);
    if (rlen == 0) {
        memcpy(out->path, base->path, sizeof out->path); /* same document */
        return 0;
    }
    if (ref[0] == '?') {
        if (bplen + rlen > URL_MAX)
            return WE_TOOBIG;
        memcpy(out->path, base->path, bplen);
        memcpy(out->path + bplen, ref, rlen);
        out->path[bplen + rlen] = '\0';
        return 0;
    }
    if (ref[0] == '/')
        return set_path(out, "", 0, ref, rlen);
    /* Relative path: replace the base's last segment. */
    size_t dlen = bplen;
    while (dlen > 0 && base->path[dlen - 1] != '/')
        dlen--;
    return set_path(out, base->path, dlen, ref, rlen);
}
