#include "common/glob.h"

#include <string.h>

bool glob_valid(const char *p, const char **why)
{
    const char *reason = NULL;
    size_t n = strlen(p);
    if (n == 0)
        reason = "empty pattern";
    else if (n > GLOB_MAX)
        reason = "pattern too long";
    else if (p[0] == '/' || p[n - 1] == '/' || strstr(p, "//"))
        reason = "empty path component";
    for (size_t i = 0; !reason && i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c <= 0x20 || c >= 0x7f)
            reason = "control, space or non-ASCII character";
    }
    if (why)
        *why = reason;
    return reason == NULL;
}

/* One component: pattern p[0..pn) against name s[0..sn), '*' and '?' within it. Iterative with
 * one backtrack point: linear in practice, quadratic at worst on a component. */
static bool match_component(const char *p, size_t pn, const char *s, size_t sn)
{
    size_t pi = 0, si = 0, star = (size_t)-1, mark = 0;
    while (si < sn) {
        if (pi < pn && (p[pi] == '?' || p[pi] == s[si])) {
            pi++;
            si++;
        } else if (pi < pn && p[pi] == '*') {
            star = pi++;
            mark = si;
        } else if (star != (size_t)-1) {
            pi = star + 1;
            si = ++mark;
        } else {
            return false;
        }
    }
    while (pi < pn && p[pi] == '*')
        pi++;
    return pi == pn;
}

/* Most components a pattern or a name may have (GLOB_MAX bytes hold at most half as many). */
#define MAX_COMPONENTS (GLOB_MAX / 2 + 1)

typedef struct comp {
    const char *p;
    size_t n;
} comp_t;

/* Splits s at '/' into at most max components; returns how many, or -1 when there are more. */
static int split(const char *s, comp_t *out, int max)
{
    int n = 0;
    for (;;) {
        if (n == max)
            return -1;
        const char *e = strchr(s, '/');
        out[n].p = s;
        out[n].n = e ? (size_t)(e - s) : strlen(s);
        n++;
        if (!e)
            return n;
        s = e + 1;
    }
}

static bool is_globstar(const comp_t *c)
{
    return c->n == 2 && c->p[0] == '*' && c->p[1] == '*';
}

/* Dynamic programming over components, from the ends: ok[j] says whether pattern components
 * i.. match name components j..; work is components(pattern) x components(name), whatever the
 * pattern, so no pattern can make a match slow. */
bool glob_match(const char *pattern, const char *name)
{
    comp_t pc[MAX_COMPONENTS], nc[MAX_COMPONENTS];
    int np = split(pattern, pc, MAX_COMPONENTS), nn = split(name, nc, MAX_COMPONENTS);
    if (np < 0 || nn < 0)
        return false;
    bool row[MAX_COMPONENTS + 1], next[MAX_COMPONENTS + 1];
    for (int j = 0; j <= nn; j++)
        next[j] = j == nn; /* no pattern left: only the end of the name matches */
    for (int i = np - 1; i >= 0; i--) {
        for (int j = nn; j >= 0; j--) {
            if (is_globstar(&pc[i]))
                row[j] = next[j] || (j < nn && row[j + 1]);
            else
                row[j] = j < nn && match_component(pc[i].p, pc[i].n, nc[j].p, nc[j].n) &&
                         next[j + 1];
        }
        memcpy(next, row, sizeof(bool) * (size_t)(nn + 1));
    }
    return next[0];
}
