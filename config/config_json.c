/* The configuration file: one JSON object walked field by field, each value handed to the
 * config object's setters with its JSON path ("upstreams[1].url") for messages. Syntax errors
 * read "FILE:LINE:COLUMN: <parser message>". Duplicate keys, unknown fields (at any level)
 * and wrong types are errors.
 *
 * Upstream passwords are read here (from a file or an environment variable) and never appear
 * in any message: messages name the file or the variable instead. Their memory is wiped
 * before it is freed. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "common/util.h"
#include "config/internal.h"

/* ---------------------------------------------------------------------------------------- */
/* JSON.                                                                                     */

const char *config_json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number with a fraction or exponent";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "something else";
}

/* Builds "prefix.key" with the key made printable; keys in messages come from the file. */
void config_field_path(char *buf, size_t cap, const char *prefix, const char *key)
{
    char q[80];
    diag_quote(q, sizeof q, key, strlen(key));
    /* diag_quote() wraps in '"'; paths read better without them. */
    size_t ql = strlen(q);
    if (ql >= 2) {
        q[ql - 1] = '\0';
        snprintf(buf, cap, "%s%s%s", prefix ? prefix : "", prefix ? "." : "", q + 1);
    } else {
        snprintf(buf, cap, "%s", prefix ? prefix : "");
    }
}

/* Readers return WE_CONFIG themselves so every path returning 0 set *out. */
int config_want_bool(const diag_t *d, const char *field, const json_t *v, bool *out)
{
    if (!json_is_boolean(v)) {
        diag_fail(d, field, "expected true or false, got %s", config_json_type_name(v));
        return WE_CONFIG;
    }
    *out = json_is_true(v);
    return 0;
}

int config_want_str(const diag_t *d, const char *field, const json_t *v, const char **out)
{
    const char *s = json_string_value(v);
    if (!s) {
        diag_fail(d, field, "expected a string, got %s", config_json_type_name(v));
        return WE_CONFIG;
    }
    /* jansson allows \u0000 inside strings when asked to; no field may hold one. */
    if (strlen(s) != json_string_length(v)) {
        diag_fail(d, field, "must not contain a NUL character");
        return WE_CONFIG;
    }
    *out = s;
    return 0;
}

static int want_string(const diag_t *d, const char *field, const json_t *v, const char **s)
{
    if (!json_is_string(v))
        return diag_fail(d, field, "expected a string, got %s", config_json_type_name(v));
    *s = json_string_value(v);
    /* Never NULL for a string; said so for the analyzer, which cannot see into jansson. */
    return *s ? 0 : diag_fail(d, field, "expected a string");
}

/* Reads an upstream password from a file: at most PASSWORD_MAX bytes, trailing newlines
 * (\n, \r\n) stripped, not empty, no NUL. The message names the file, never the content. */
static int read_password_file(const diag_t *d, const char *field, const char *path, char **out)
{
    char *buf = NULL;
    int rc;
    int fd = -1;
    size_t n = 0;
    if (path[0] == '\0')
        return diag_fail(d, field, "must not be empty");
    if (strlen(path) > PATH_MAX_LEN)
        return diag_fail(d, field, "longer than %d bytes", PATH_MAX_LEN);
    char shown[DIAG_PATH_CAP];
    diag_printable(shown, sizeof shown, path);
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return diag_fail(d, field, "cannot open %s: %s", shown, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0) {
        rc = diag_fail(d, field, "cannot stat %s: %s", shown, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = diag_fail(d, field, "%s is not a regular file", shown);
        goto fail;
    }
    buf = malloc(PASSWORD_MAX + 2);
    if (!buf) {
        rc = diag_oom(d);
        goto fail;
    }
    /* One byte past the bound tells "too big" from "exactly the bound". */
    while (n < PASSWORD_MAX + 1) {
        ssize_t r = read(fd, buf + n, PASSWORD_MAX + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = diag_fail(d, field, "cannot read %s: %s", shown, strerror(errno));
            goto fail;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    if (n > PASSWORD_MAX) {
        rc = diag_fail(d, field, "%s is larger than %d bytes; is it the password file?", shown,
                       PASSWORD_MAX);
        goto fail;
    }
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    buf[n] = '\0';
    if (n == 0) {
        rc = diag_fail(d, field, "%s is empty", shown);
        goto fail;
    }
    if (memchr(buf, '\0', n)) {
        rc = diag_fail(d, field, "%s contains a NUL byte", shown);
        goto fail;
    }
    close(fd);
    *out = buf;
    return 0;
fail:
    if (buf) {
        config_wipe(buf, PASSWORD_MAX + 2);
        free(buf);
    }
    if (fd >= 0)
        close(fd);
    return rc;
}

/* Reads an upstream password from the environment variable `name`. */
static int read_password_env(const diag_t *d, const char *field, const char *name, char **out)
{
    char q[80];
    size_t n = strlen(name);
    if (n == 0)
        return diag_fail(d, field, "must not be empty");
    bool ok = n <= ENV_NAME_MAX && !(name[0] >= '0' && name[0] <= '9');
    for (size_t i = 0; ok && i < n; i++)
        ok = is_alnum(name[i]) || name[i] == '_';
    if (!ok)
        return diag_fail(d, field,
                         "%s is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
                         diag_quote(q, sizeof q, name, n));
    const char *v = getenv(name);
    if (!v)
        return diag_fail(d, field, "environment variable %s is not set", name);
    size_t vn = strlen(v);
    if (vn == 0)
        return diag_fail(d, field, "environment variable %s is empty", name);
    if (vn > PASSWORD_MAX)
        return diag_fail(d, field, "environment variable %s is longer than %d bytes", name,
                         PASSWORD_MAX);
    char *p = strdup(v);
    if (!p)
        return diag_oom(d);
    *out = p;
    return 0;
}

/* The TLS and credential fields of one upstream, as found in its object. */
typedef struct upstream_extra {
    const char *ca_file;
    int insecure; /* -1 absent, else 0/1 */
    const char *username, *password_file, *password_env;
    const char *blob_scope; /* NULL when absent */
    bool pass_ns;
} upstream_extra_t;

static int apply_upstream_extra(config_upstream_t *u, const diag_t *d, const char *field,
                                const upstream_extra_t *x)
{
    char sub[128], q[80];
    int rc;
    if (x->insecure == 1 && x->ca_file) {
        snprintf(sub, sizeof sub, "%s.insecure_skip_verify", field);
        return diag_fail(d, sub, "true contradicts ca_file (which asks for verification)");
    }
    if (x->ca_file) {
        snprintf(sub, sizeof sub, "%s.ca_file", field);
        rc = config_set_file(d, sub, x->ca_file, &u->ca_file);
        if (rc < 0)
            return rc;
    }
    u->insecure_skip_verify = x->insecure == 1;
    if (x->password_file && x->password_env) {
        snprintf(sub, sizeof sub, "%s.password_env", field);
        return diag_fail(d, sub, "give either password_file or password_env, not both");
    }
    bool has_password = x->password_file || x->password_env;
    if (x->username) {
        size_t n = strlen(x->username);
        snprintf(sub, sizeof sub, "%s.username", field);
        if (n == 0)
            return diag_fail(d, sub, "must not be empty");
        if (n > USERNAME_MAX)
            return diag_fail(d, sub, "longer than %d bytes", USERNAME_MAX);
        for (size_t i = 0; i < n; i++) {
            unsigned char ch = (unsigned char)x->username[i];
            if (ch < 0x20 || ch == 0x7f)
                return diag_fail(d, sub, "must not contain control characters");
            if (ch == ':')
                return diag_fail(d, sub, "%s must not contain ':' (HTTP Basic auth, RFC 7617)",
                                 diag_quote(q, sizeof q, x->username, n));
        }
        if (!has_password)
            return diag_fail(d, sub,
                             "is set but there is no password: add password_file or "
                             "password_env");
        u->username = strdup(x->username);
        if (!u->username)
            return diag_oom(d);
    } else if (has_password) {
        snprintf(sub, sizeof sub, "%s.%s", field,
                 x->password_file ? "password_file" : "password_env");
        return diag_fail(d, sub, "is set but username is not");
    }
    if (x->password_file) {
        snprintf(sub, sizeof sub, "%s.password_file", field);
        u->password_file = strdup(x->password_file);
        if (!u->password_file)
            return diag_oom(d);
        rc = read_password_file(d, sub, x->password_file, &u->password);
        if (rc < 0)
            return rc;
    }
    if (x->password_env) {
        snprintf(sub, sizeof sub, "%s.password_env", field);
        u->password_env = strdup(x->password_env);
        if (!u->password_env)
            return diag_oom(d);
        rc = read_password_env(d, sub, x->password_env, &u->password);
        if (rc < 0)
            return rc;
    }
    u->pass_ns = x->pass_ns;
    /* Behind credentials a blob is private to the repositories known to hold it; a public
     * upstream's blobs may be shared by all its repositories. */
    u->blob_scope = u->username ? BLOB_SCOPE_REPOSITORY : BLOB_SCOPE_GLOBAL;
    if (x->blob_scope) {
        snprintf(sub, sizeof sub, "%s.blob_scope", field);
        if (strcmp(x->blob_scope, "repository") == 0)
            u->blob_scope = BLOB_SCOPE_REPOSITORY;
        else if (strcmp(x->blob_scope, "global") == 0)
            u->blob_scope = BLOB_SCOPE_GLOBAL;
        else
            return diag_fail(d, sub, "%s: expected \"repository\" or \"global\"",
                             diag_quote(q, sizeof q, x->blob_scope, strlen(x->blob_scope)));
    }
    return 0;
}

static int parse_upstream_obj(config_t *c, const diag_t *d, size_t idx, json_t *v)
{
    char field[32], sub[128];
    snprintf(field, sizeof field, "upstreams[%zu]", idx);
    if (!json_is_object(v))
        return diag_fail(d, field, "expected an object {\"name\": ..., \"url\": ...}, got %s",
                         config_json_type_name(v));
    const char *key, *name = NULL, *url = NULL;
    upstream_extra_t x = {.insecure = -1};
    json_t *val, *allow = NULL;
    int rc;
    json_object_foreach(v, key, val)
    {
        config_field_path(sub, sizeof sub, field, key);
        if (strcmp(key, "name") == 0) {
            rc = want_string(d, sub, val, &name);
        } else if (strcmp(key, "url") == 0) {
            rc = want_string(d, sub, val, &url);
        } else if (strcmp(key, "ca_file") == 0) {
            rc = want_string(d, sub, val, &x.ca_file);
        } else if (strcmp(key, "insecure_skip_verify") == 0) {
            rc = json_is_boolean(val) ? 0
                                      : diag_fail(d, sub, "expected true or false, got %s",
                                                  config_json_type_name(val));
            x.insecure = json_is_true(val);
        } else if (strcmp(key, "username") == 0) {
            rc = want_string(d, sub, val, &x.username);
        } else if (strcmp(key, "password_file") == 0) {
            rc = want_string(d, sub, val, &x.password_file);
        } else if (strcmp(key, "password_env") == 0) {
            rc = want_string(d, sub, val, &x.password_env);
        } else if (strcmp(key, "allow_redirect_hosts") == 0) {
            allow = val;
            rc = 0;
        } else if (strcmp(key, "blob_scope") == 0) {
            rc = want_string(d, sub, val, &x.blob_scope);
        } else if (strcmp(key, "pass_ns") == 0) {
            rc = config_want_bool(d, sub, val, &x.pass_ns);
        } else if (strcmp(key, "password") == 0) {
            /* Said plainly, since it is the field people try first; the value is not echoed. */
            rc = diag_fail(d, sub,
                           "not supported: passwords are read from password_file or "
                           "password_env, never written in the config file");
        } else {
            rc = diag_fail(d, sub,
                           "unknown field (an upstream has \"name\", \"url\", \"ca_file\", "
                           "\"insecure_skip_verify\", \"username\", \"password_file\", "
                           "\"password_env\", \"blob_scope\", \"pass_ns\", "
                           "\"allow_redirect_hosts\")");
        }
        if (rc < 0)
            return rc;
    }
    if (!name) {
        snprintf(sub, sizeof sub, "%s.name", field);
        return diag_fail(d, sub,
                         "missing (the registry host this upstream stands for, e.g. docker.io)");
    }
    if (!url) {
        snprintf(sub, sizeof sub, "%s.url", field);
        return diag_fail(d, sub, "missing");
    }
    rc = config_upstream_add(c, d, field, name, url);
    if (rc < 0)
        return rc;
    /* A failure leaves the upstream in the list; config_free (the caller's path) frees it. */
    rc = apply_upstream_extra(&c->upstreams[c->n_upstreams - 1], d, field, &x);
    if (rc == 0 && allow) {
        snprintf(sub, sizeof sub, "%s.allow_redirect_hosts", field);
        rc = config_allow_hosts_parse(&c->upstreams[c->n_upstreams - 1], d, sub, allow);
    }
    return rc;
}

static int parse_upstreams(config_t *c, const diag_t *d, json_t *v)
{
    if (!json_is_array(v))
        return diag_fail(d, "upstreams", "expected an array, got %s", config_json_type_name(v));
    size_t n = json_array_size(v);
    if (n == 0)
        return diag_fail(d, "upstreams", "must list at least one upstream");
    if (n > CONFIG_MAX_UPSTREAMS)
        return diag_fail(d, "upstreams", "at most %d upstreams", CONFIG_MAX_UPSTREAMS);
    config_upstreams_clear(c);
    for (size_t i = 0; i < n; i++) {
        int rc = parse_upstream_obj(c, d, i, json_array_get(v, i));
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int parse_int_field(config_t *c, const diag_t *d, const int_field_t *f, const json_t *v)
{
    if (!json_is_integer(v))
        return diag_fail(d, f->name, "expected an integer, got %s", config_json_type_name(v));
    json_int_t x = json_integer_value(v);
    if (x < 0 || (uint64_t)x < f->min || (uint64_t)x > f->max)
        return diag_fail(d, f->name, "must be %llu..%llu, got %lld", (unsigned long long)f->min,
                         (unsigned long long)f->max, (long long)x);
    config_int_field_set(c, f, (uint64_t)x);
    return 0;
}

static int apply_json(config_t *c, const diag_t *d, json_t *root)
{
    if (!json_is_object(root))
        return diag_fail(d, NULL, "expected a JSON object at the top level, got %s",
                         config_json_type_name(root));
    const char *key;
    json_t *v;
    char field[128];
    json_object_foreach(root, key, v)
    {
        const char *s = NULL;
        int rc;
        if (strcmp(key, "listen") == 0) {
            rc = json_is_null(v) ? 0 : want_string(d, key, v, &s);
            if (rc == 0)
                rc = config_set_listen(c, d, key, s);
        } else if (strcmp(key, "tls_listen") == 0) {
            rc = json_is_null(v) ? 0 : want_string(d, key, v, &s);
            if (rc == 0)
                rc = config_set_tls_listen(c, d, key, s);
        } else if (strcmp(key, "tls_cert") == 0) {
            rc = want_string(d, key, v, &s);
            if (rc == 0)
                rc = config_set_file(d, key, s, &c->tls_cert);
        } else if (strcmp(key, "tls_key") == 0) {
            rc = want_string(d, key, v, &s);
            if (rc == 0)
                rc = config_set_file(d, key, s, &c->tls_key);
        } else if (strcmp(key, "cache_dir") == 0) {
            rc = want_string(d, key, v, &s);
            if (rc == 0)
                rc = config_set_cache_dir(c, d, key, s);
        } else if (strcmp(key, "log_level") == 0) {
            rc = want_string(d, key, v, &s);
            if (rc == 0)
                rc = config_set_log_level(c, d, key, s);
        } else if (strcmp(key, "log_format") == 0) {
            rc = want_string(d, key, v, &s);
            if (rc == 0 && s && (strcmp(s, "text") == 0 || strcmp(s, "json") == 0)) {
                c->log_json = strcmp(s, "json") == 0;
            } else if (rc == 0) {
                char q[80];
                rc = diag_fail(d, key, "%s is not a log format (text, json)",
                               diag_quote(q, sizeof q, s ? s : "", s ? strlen(s) : 0));
            }
        } else if (strcmp(key, "fill_splice") == 0) {
            rc = config_want_bool(d, key, v, &c->fill_splice);
        } else if (strcmp(key, "upstreams") == 0) {
            rc = parse_upstreams(c, d, v);
        } else if (strcmp(key, "node_name") == 0) {
            rc = config_node_json(c, d, v);
        } else if (strcmp(key, "trusted_proxies") == 0) {
            rc = config_trusted_json(c, d, v);
        } else if (strcmp(key, "retention") == 0) {
            rc = config_retention_json(c, d, v);
        } else if (strcmp(key, "on_disk_full") == 0) {
            rc = config_disk_full_json(c, d, v);
        } else if (strcmp(key, "policy") == 0) {
            rc = config_parse_policy(c, d, v);
        } else if (strcmp(key, "auth") == 0) {
            rc = config_auth_parse(c, d, v);
        } else if (strcmp(key, "platforms") == 0) {
            rc = config_parse_platforms(c, d, v);
        } else if (strcmp(key, "client_groups") == 0) {
            rc = config_parse_client_groups(c, d, v);
        } else if (strcmp(key, "admin_listen") == 0 || strcmp(key, "public_metrics") == 0) {
            rc = config_admin_json(c, d, key, v);
        } else {
            const int_field_t *f = config_int_field(key);
            if (f) {
                rc = parse_int_field(c, d, f, v);
            } else {
                config_field_path(field, sizeof field, NULL, key);
                rc = diag_fail(d, field, "unknown field");
            }
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Parses text over an existing config (defaults already in place). */
int config_apply_json_text(config_t *c, const char *json, size_t len, const char *origin, char *err,
                           size_t errlen)
{
    diag_t d = {err, errlen, origin};
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        char text[sizeof je.text + 8];
        diag_quote(text, sizeof text, je.text, strnlen(je.text, sizeof je.text));
        /* Drop the quotes diag_quote() adds: jansson's text is a sentence, not a value. */
        text[strlen(text) - 1] = '\0';
        if (json_error_code(&je) == json_error_out_of_memory)
            return diag_oom(&d);
        if (err && errlen) {
            if (je.line > 0)
                snprintf(err, errlen, "%s:%d:%d: %s", origin, je.line, je.column, text + 1);
            else
                snprintf(err, errlen, "%s: %s", origin, text + 1);
        }
        return WE_CONFIG;
    }
    int rc = apply_json(c, &d, root);
    json_decref(root);
    return rc;
}

int config_from_json(config_t **out, const char *json, size_t len, const char *origin, char *err,
                     size_t errlen)
{
    config_t *c = NULL;
    diag_t d = {err, errlen, origin ? origin : "config"};
    *out = NULL;
    int rc = config_defaults(&c, &d);
    if (rc < 0)
        return rc;
    rc = config_apply_json_text(c, json, len, d.origin, err, errlen);
    if (rc == 0)
        rc = config_check_whole(c, &d);
    if (rc < 0) {
        config_free(c);
        return rc;
    }
    *out = c;
    return 0;
}
