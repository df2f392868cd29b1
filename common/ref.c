#include "common/ref.h"

#include <errno.h>

#include "common/err.h"

/* The grammars are small enough to hand-write as scanners: no regex library, no allocation,
 * and every loop is bounded by n. Character classes are spelled out rather than taken from
 * <ctype.h>, whose answers depend on the locale. */

static bool is_lower_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static bool is_tag_char(char c)
{
    return is_lower_alnum(c) || (c >= 'A' && c <= 'Z') || c == '_' || c == '.' || c == '-';
}

static bool is_lower_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

/* One path component: [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*. */
static bool component_valid(const char *s, size_t n)
{
    size_t i = 0;

    for (;;) {
        /* An alphanumeric run is required at the start and after every separator. */
        size_t run = i;
        while (i < n && is_lower_alnum(s[i]))
            i++;
        if (i == run)
            return false;
        if (i == n)
            return true;
        /* Separator: exactly ".", "_" or "__", or any number of "-". */
        if (s[i] == '.') {
            i++;
        } else if (s[i] == '_') {
            i++;
            if (i < n && s[i] == '_')
                i++;
        } else if (s[i] == '-') {
            while (i < n && s[i] == '-')
                i++;
        } else {
            return false;
        }
    }
}

bool ref_name_valid(const char *s, size_t n)
{
    if (n == 0 || n > REF_NAME_MAX)
        return false;
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || s[i] == '/') {
            if (!component_valid(s + start, i - start))
                return false;
            start = i + 1;
        }
    }
    return true;
}

bool ref_tag_valid(const char *s, size_t n)
{
    if (n == 0 || n > REF_TAG_MAX)
        return false;
    /* The first character may not be '.' or '-'. */
    if (s[0] == '.' || s[0] == '-')
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!is_tag_char(s[i]))
            return false;
    }
    return true;
}

static bool alg_is(const char *s, size_t n, const char *name, size_t name_len)
{
    if (n != name_len)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != name[i])
            return false;
    }
    return true;
}

static bool all_lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!is_lower_hex(s[i]))
            return false;
    }
    return true;
}

int ref_digest_parse(const char *s, size_t n, enum ref_alg *alg)
{
    /* A digest that does not fit the fixed buffers winch keeps digests in is refused as
     * malformed, whatever its algorithm: there is no registered algorithm that long. */
    if (n == 0 || n > REF_DIGEST_MAX)
        return WE_INVALID;

    /* algorithm ::= component (separator component)*, component ::= [a-z0-9]+,
     * separator ::= [+._-] */
    size_t i = 0;
    for (;;) {
        size_t run = i;
        while (i < n && is_lower_alnum(s[i]))
            i++;
        if (i == run)
            return WE_INVALID;
        if (i < n && (s[i] == '+' || s[i] == '.' || s[i] == '_' || s[i] == '-')) {
            i++;
            continue;
        }
        break;
    }
    if (i == n || s[i] != ':')
        return WE_INVALID;
    size_t alg_len = i;
    const char *enc = s + i + 1;
    size_t enc_len = n - i - 1;

    /* encoded ::= [a-zA-Z0-9=_-]+ */
    if (enc_len == 0)
        return WE_INVALID;
    for (size_t k = 0; k < enc_len; k++) {
        char c = enc[k];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '=' || c == '_' || c == '-';
        if (!ok)
            return WE_INVALID;
    }

    /* image-spec: uppercase hex MUST NOT be used for the registered algorithms. */
    if (alg_is(s, alg_len, "sha256", 6)) {
        if (enc_len != 64 || !all_lower_hex(enc, enc_len))
            return WE_INVALID;
        if (alg)
            *alg = REF_ALG_SHA256;
        return 0;
    }
    if (alg_is(s, alg_len, "sha512", 6)) {
        if (enc_len != 128 || !all_lower_hex(enc, enc_len))
            return WE_INVALID;
        if (alg)
            *alg = REF_ALG_SHA512;
        return 0;
    }
    /* Well-formed, but winch cannot verify content under this algorithm. */
    return -ENOTSUP;
}

size_t ref_alg_size(enum ref_alg alg)
{
    return alg == REF_ALG_SHA512 ? 64 : 32;
}

const char *ref_alg_name(enum ref_alg alg)
{
    return alg == REF_ALG_SHA512 ? "sha512" : "sha256";
}
