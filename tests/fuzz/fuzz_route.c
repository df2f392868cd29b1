/* The request-target router (proxy/route.h). The first input byte picks the method and one of
 * two configurations (Docker Hub by default with ghcr.io and a local registry beside it, or a
 * private default upstream); the rest is the request target. Besides "no crash", every
 * accepted route must hold only what the grammar allows, and every refusal must carry a
 * one-line message. */
#include <errno.h>

#include "common/err.h"
#include "common/ref.h"
#include "config/config.h"
#include "fuzz.h"
#include "proxy/route.h"

static config_t *cfgs[2];

static config_t *make_config(const char *json)
{
    config_t *c = NULL;
    char err[512];
    if (config_from_json(&c, json, strlen(json), "fuzz", err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_route: %s\n", err);
        abort();
    }
    return c;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    cfgs[0] = make_config("{\"upstreams\": ["
                          "{\"name\": \"docker.io\", \"url\": \"https://registry-1.docker.io\"},"
                          "{\"name\": \"ghcr.io\", \"url\": \"https://ghcr.io\"},"
                          "{\"name\": \"127.0.0.1:5001\", \"url\": \"http://127.0.0.1:5001\"}]}");
    cfgs[1] = make_config("{\"upstreams\": ["
                          "{\"name\": \"registry.example.com\", \"url\": \"https://r.example\"},"
                          "{\"name\": \"docker.io\", \"url\": \"https://registry-1.docker.io\"}]}");
    return 0;
}

static void check_ok(const route_t *r, const config_t *cfg, enum route_method m)
{
    FUZZ_CHECK(m != ROUTE_OTHER);
    FUZZ_CHECK(r->head == (m == ROUTE_HEAD));
    FUZZ_CHECK(r->upstream >= cfg->upstreams && r->upstream < cfg->upstreams + cfg->n_upstreams);
    FUZZ_CHECK(r->n >= -1 && r->n <= 10000);
    if (r->ns_given)
        FUZZ_CHECK(config_upstream_find(cfg, r->ns, strlen(r->ns)) == r->upstream);
    switch (r->op) {
    case ROUTE_PING:
        FUZZ_CHECK(r->name[0] == '\0' && r->ref[0] == '\0');
        return;
    case ROUTE_CATALOG:
        FUZZ_CHECK(r->name[0] == '\0');
        FUZZ_CHECK(r->last[0] == '\0' || ref_name_valid(r->last, strlen(r->last)));
        return;
    case ROUTE_TAGS:
        FUZZ_CHECK(ref_name_valid(r->name, strlen(r->name)));
        FUZZ_CHECK(r->last[0] == '\0' || ref_tag_valid(r->last, strlen(r->last)));
        return;
    case ROUTE_MANIFEST:
        FUZZ_CHECK(ref_name_valid(r->name, strlen(r->name)));
        if (r->ref_is_digest)
            FUZZ_CHECK(ref_digest_parse(r->ref, strlen(r->ref), NULL) == 0);
        else
            FUZZ_CHECK(ref_tag_valid(r->ref, strlen(r->ref)));
        return;
    case ROUTE_BLOB:
    case ROUTE_REFERRERS:
        FUZZ_CHECK(ref_name_valid(r->name, strlen(r->name)));
        FUZZ_CHECK(r->ref_is_digest && ref_digest_parse(r->ref, strlen(r->ref), NULL) == 0);
        FUZZ_CHECK(fuzz_printable_line(r->artifact_type) && !strchr(r->artifact_type, ' '));
        return;
    }
    FUZZ_CHECK(!"unknown op");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    static const enum route_method methods[] = {ROUTE_GET, ROUTE_HEAD, ROUTE_GET, ROUTE_OTHER};
    enum route_method m = methods[data[0] & 3];
    const config_t *cfg = cfgs[(data[0] >> 2) & 1];
    /* An exact-size heap copy, so ASan sees any read past the target's end. */
    size_t len = size - 1;
    char *target = malloc(len ? len : 1);
    FUZZ_CHECK(target != NULL);
    memcpy(target, data + 1, len);

    route_t r;
    route_error_t err;
    int rc = route_parse(&r, cfg, m, target, len, &err);
    if (rc == 0) {
        check_ok(&r, cfg, m);
    } else {
        FUZZ_CHECK(rc == WE_INVALID);
        FUZZ_CHECK(err.message != NULL && err.message[0] != '\0');
        FUZZ_CHECK(fuzz_printable_line(err.message));
        FUZZ_CHECK(err.code <= OCI_GATEWAY_TIMEOUT);
        FUZZ_CHECK(err.status == 0 || (err.status >= 400 && err.status < 600));
        if (m == ROUTE_OTHER)
            FUZZ_CHECK(err.code == OCI_UNSUPPORTED);
    }
    free(target);
    return 0;
}
