#include "proxy/http.h"

#include <string.h>
#include <strings.h>

static bool parse_u64(const char **s, uint64_t *out)
{
    const char *p = *s;
    uint64_t v = 0;
    if (*p < '0' || *p > '9')
        return false;
    while (*p >= '0' && *p <= '9') {
        if (v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(*p - '0');
        p++;
    }
    *s = p;
    *out = v;
    return true;
}

void http_range_parse(const char *v, http_range_t *r)
{
    *r = (http_range_t){.kind = HTTP_RANGE_BAD};
    while (*v == ' ')
        v++;
    if (strncasecmp(v, "bytes=", 6) != 0)
        return;
    v += 6;
    while (*v == ' ')
        v++;
    if (*v == '-') {
        v++;
        if (!parse_u64(&v, &r->last) || r->last == 0)
            return;
        r->suffix = true;
    } else {
        if (!parse_u64(&v, &r->first) || *v != '-')
            return;
        v++;
        if (*v >= '0' && *v <= '9') {
            if (!parse_u64(&v, &r->last) || r->last < r->first)
                return;
        } else {
            r->last = UINT64_MAX;
        }
    }
    while (*v == ' ')
        v++;
    if (*v != '\0')
        return; /* a list of ranges: not supported, serve it all */
    r->kind = HTTP_RANGE_OK;
}

int http_range_resolve(const http_range_t *r, uint64_t size, uint64_t *first, uint64_t *last)
{
    *first = 0;
    *last = size ? size - 1 : 0;
    if (r->kind != HTTP_RANGE_OK)
        return 200;
    if (r->suffix) {
        if (size == 0)
            return 416;
        uint64_t n = r->last < size ? r->last : size;
        *first = size - n;
        *last = size - 1;
        return 206;
    }
    if (r->first >= size)
        return 416;
    *first = r->first;
    *last = r->last < size - 1 ? r->last : size - 1;
    return 206;
}

bool http_etag_matches(const char *inm, const char *digest)
{
    if (!inm || !*inm)
        return false;
    if (strcmp(inm, "*") == 0)
        return true;
    size_t dl = strlen(digest);
    if (dl == 0)
        return false;
    const char *p = inm;
    while ((p = strstr(p, digest)) != NULL) {
        /* Accept "digest", W/"digest" and a bare digest, delimited by quotes, commas or ends. */
        char before = p == inm ? ',' : p[-1];
        char after = p[dl];
        if ((before == '"' || before == ',' || before == ' ') &&
            (after == '"' || after == ',' || after == ' ' || after == '\0'))
            return true;
        p += dl;
    }
    return false;
}

const char *http_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 206:
        return "Partial Content";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 414:
        return "URI Too Long";
    case 416:
        return "Range Not Satisfiable";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Unknown";
    }
}
