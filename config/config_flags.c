/* `winch serve` arguments: --config FILE and the flags that override it. Order: defaults,
 * then the file, then the flags; the first --upstream drops the file's list. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/util.h"
#include "config/internal.h"

/* A config file is a few hundred bytes; the bound only stops a mistaken path (a disk image, a
 * device) from being read into memory. */
#define CONFIG_FILE_MAX (1024 * 1024)

/* Reads the whole file, bounded. *buf is owned by the caller. */
static int read_file(const char *path, char **buf, size_t *len, const diag_t *d)
{
    char *p = NULL;
    int rc;
    FILE *f = fopen(path, "rb");
    if (!f)
        return diag_fail(d, NULL, "cannot open: %s", strerror(errno));
    p = malloc(CONFIG_FILE_MAX + 1);
    if (!p) {
        rc = diag_oom(d);
        goto fail;
    }
    size_t n = fread(p, 1, CONFIG_FILE_MAX + 1, f);
    if (ferror(f)) {
        rc = diag_fail(d, NULL, "cannot read: %s", strerror(errno));
        goto fail;
    }
    if (n > CONFIG_FILE_MAX) {
        rc = diag_fail(d, NULL, "larger than %d bytes; is this the config file?", CONFIG_FILE_MAX);
        goto fail;
    }
    fclose(f);
    *buf = p;
    *len = n;
    return 0;
fail:
    fclose(f);
    free(p);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* Flags.                                                                                    */

enum flag_id {
    FLAG_CONFIG,
    FLAG_LISTEN,
    FLAG_CACHE_DIR,
    FLAG_UPSTREAM,
    FLAG_LOG_LEVEL,
    FLAG_TLS_LISTEN,
    FLAG_TLS_CERT,
    FLAG_TLS_KEY,
};

static const char *const flag_names[] = {
    [FLAG_CONFIG] = "--config",       [FLAG_LISTEN] = "--listen",
    [FLAG_CACHE_DIR] = "--cache-dir", [FLAG_UPSTREAM] = "--upstream",
    [FLAG_LOG_LEVEL] = "--log-level", [FLAG_TLS_LISTEN] = "--tls-listen",
    [FLAG_TLS_CERT] = "--tls-cert",   [FLAG_TLS_KEY] = "--tls-key",
};

typedef struct flag_arg {
    enum flag_id id;
    const char *value; /* borrowed from argv */
} flag_arg_t;

static int apply_flag(config_t *c, const flag_arg_t *fa, bool *upstreams_replaced, char *err,
                      size_t errlen)
{
    diag_t d = {err, errlen, flag_names[fa->id]};
    switch (fa->id) {
    case FLAG_CONFIG:
        return 0;
    case FLAG_LISTEN:
        return config_set_listen(c, &d, NULL, fa->value);
    case FLAG_CACHE_DIR:
        return config_set_cache_dir(c, &d, NULL, fa->value);
    case FLAG_LOG_LEVEL:
        return config_set_log_level(c, &d, NULL, fa->value);
    case FLAG_TLS_LISTEN:
        return config_set_tls_listen(c, &d, NULL, fa->value);
    case FLAG_TLS_CERT:
        return config_set_file(&d, NULL, fa->value, &c->tls_cert);
    case FLAG_TLS_KEY:
        return config_set_file(&d, NULL, fa->value, &c->tls_key);
    case FLAG_UPSTREAM: {
        const char *eq = strchr(fa->value, '=');
        if (!eq || eq == fa->value)
            return diag_fail(&d, NULL,
                             "expected NAME=URL, e.g. docker.io=https://registry-1.docker.io");
        char *name = dup_n(fa->value, (size_t)(eq - fa->value));
        if (!name)
            return diag_oom(&d);
        /* Flags describe the whole list: the first one drops what the file said. */
        if (!*upstreams_replaced) {
            config_upstreams_clear(c);
            *upstreams_replaced = true;
        }
        int rc = config_upstream_add(c, &d, NULL, name, eq + 1);
        free(name);
        return rc;
    }
    }
    return diag_fail(&d, NULL, "unhandled flag");
}

/* First pass over argv: syntax only, so an unknown flag is reported before the file is read,
 * and --config may come anywhere on the line. Fills flags[] (argc entries) and *nflags, and
 * *config_path when --config is given. */
static int scan_flags(int argc, char **argv, flag_arg_t *flags, size_t *nflags,
                      const char **config_path, char *err, size_t errlen)
{
    diag_t d = {err, errlen, "winch serve"};
    char q[80];
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0')
            return diag_fail(&d, NULL, "unexpected argument %s",
                             diag_quote(q, sizeof q, arg, strlen(arg)));
        const char *eq = strchr(arg, '=');
        size_t nlen = eq ? (size_t)(eq - arg) : strlen(arg);
        int id = -1;
        for (size_t k = 0; k < ARRAY_SIZE(flag_names); k++)
            if (strlen(flag_names[k]) == nlen && strncmp(arg, flag_names[k], nlen) == 0)
                id = (int)k;
        if (id < 0)
            return diag_fail(&d, NULL,
                             "unknown flag %s (known: --config, --listen, --cache-dir, "
                             "--upstream, --log-level, --tls-listen, --tls-cert, --tls-key)",
                             diag_quote(q, sizeof q, arg, nlen));
        diag_t fd = {err, errlen, flag_names[id]};
        const char *value;
        if (eq)
            value = eq + 1;
        else if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0)
            value = argv[++i];
        else
            return diag_fail(&fd, NULL, "missing value");
        if (id == FLAG_CONFIG) {
            if (*config_path)
                return diag_fail(&fd, NULL, "given more than once");
            if (value[0] == '\0')
                return diag_fail(&fd, NULL, "missing value");
            *config_path = value;
        }
        flags[*nflags].id = (enum flag_id)id;
        flags[*nflags].value = value;
        (*nflags)++;
    }
    return 0;
}

int config_load(config_t **out, int argc, char **argv, char *err, size_t errlen)
{
    diag_t d = {err, errlen, "winch serve"};
    flag_arg_t *flags = NULL;
    size_t nflags = 0;
    const char *config_path = NULL;
    config_t *c = NULL;
    char *text = NULL;
    int rc;

    *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    if (argc > 0) {
        flags = calloc((size_t)argc, sizeof *flags);
        if (!flags)
            return diag_oom(&d);
    }
    rc = scan_flags(argc, argv, flags, &nflags, &config_path, err, errlen);
    if (rc < 0)
        goto fail;
    rc = config_defaults(&c, &d);
    if (rc < 0)
        goto fail;
    if (config_path) {
        size_t len = 0;
        diag_t fd = {err, errlen, config_path};
        rc = read_file(config_path, &text, &len, &fd);
        if (rc < 0)
            goto fail;
        rc = config_apply_json_text(c, text, len, config_path, err, errlen);
        if (rc < 0)
            goto fail;
    }
    bool replaced = false;
    for (size_t i = 0; i < nflags; i++) {
        rc = apply_flag(c, &flags[i], &replaced, err, errlen);
        if (rc < 0)
            goto fail;
    }
    diag_t wd = {err, errlen, config_path ? config_path : "winch serve"};
    rc = config_check_whole(c, &wd);
    if (rc < 0)
        goto fail;
    free(text);
    free(flags);
    *out = c;
    return 0;
fail:
    free(text);
    free(flags);
    config_free(c);
    return rc;
}
