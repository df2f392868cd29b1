/* `winch export REF... -o FILE.tar` (or FILE.tar.gz, FILE.tgz: gzip-compressed): the named
 * images, from the cache, as one archive that is both
 *
 *   an OCI image layout   oci-layout, index.json (one entry per REF, named by the annotations
 *                         org.opencontainers.image.ref.name and io.containerd.image.name, both
 *                         the full reference "UPSTREAM/REPOSITORY:TAG"), blobs/sha256/<hex>:
 *                         what skopeo copy oci-archive:FILE:REF, containerd and Docker 25+ read;
 *   a docker-archive      manifest.json ({Config, RepoTags, Layers} naming files under blobs/):
 *                         what `docker load` of every Docker version reads, 20.10 included.
 *
 * An index is exported with every platform that is cached (the others stay named in it, as the
 * layout allows); manifest.json can hold one image per tag, so it gets linux/amd64 when cached,
 * else the first cached platform. An image whose config or a layer is not cached is not
 * exported: the command fails and writes nothing, since an air-gapped site cannot fetch what
 * is missing. Every blob is hashed as it is copied; a file that does not match its digest fails
 * the export (winch verify finds and quarantines it).
 *
 * The archive is written to FILE.tmp-PID, fsynced and renamed: FILE is whole or absent.
 * Works beside a serving winch (reads only; a file removed meanwhile was opened first or
 * fails the export cleanly). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "common/mediatype.h"
#include "common/tar.h"
#include "proxy/cli_archive.h"
#include "proxy/cli_cache.h"
#include "proxy/cli_commands.h"
#include "proxy/platforms.h"
#include "proxy/usage.h"

#define MAX_MANIFEST (64u << 20)
#define COPY_BUF ((size_t)1 << 20)

typedef struct xitem {
    char digest[REF_DIGEST_MAX + 1];
    uint64_t size;
} xitem_t;

typedef struct xlist {
    xitem_t *v;
    size_t n, cap;
} xlist_t;

/* The image manifest.json gets for one REF. */
typedef struct pick {
    json_t *entry;   /* {Config, Layers}; NULL until one is found */
    bool preferred;  /* it is linux/amd64 */
    unsigned images; /* image manifests of this REF exported */
} pick_t;

typedef struct exporter {
    cache_t *cache;
    xlist_t manifests, blobs; /* what goes under blobs/, manifests first */
    json_t *index;            /* index.json's manifests */
    json_t *docker;           /* manifest.json */
    json_t *report;
    int fd; /* the tar stream: the file, or gzip's pipe */
    uint64_t tar_bytes;
    char *buf;
    char err[600];
} exporter_t;

static int fail(exporter_t *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(exporter_t *x, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->err, sizeof x->err, fmt, ap);
    va_end(ap);
    return -1;
}

/* Adds digest to l unless there already; returns 0 or -ENOMEM. */
static int xlist_add(xlist_t *l, const char *digest, uint64_t size)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->v[i].digest, digest) == 0)
            return 0;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        xitem_t *v = realloc(l->v, cap * sizeof *v);
        if (!v)
            return -ENOMEM;
        l->v = v;
        l->cap = cap;
    }
    snprintf(l->v[l->n].digest, sizeof l->v[l->n].digest, "%s", digest);
    l->v[l->n++].size = size;
    return 0;
}

/* "blobs/<alg>/<hex>" of a digest. */
static void blob_name(const char *digest, char *out, size_t len)
{
    const char *colon = strchr(digest, ':');
    snprintf(out, len, "blobs/%.*s/%s", (int)(colon - digest), digest, colon + 1);
}

/* ---- The plan ------------------------------------------------------------------------------ */

/* Reads and parses the cached manifest at digest. 1 when it is not cached. */
static int load(exporter_t *x, const char *digest, cache_entry_t *e, image_t **img)
{
    char *bytes;
    size_t n;
    char why[200];
    if (cache_lookup(x->cache, digest, e) || e->kind != CACHE_MANIFEST)
        return 1;
    int rc = cache_read_manifest(x->cache, digest, MAX_MANIFEST, &bytes, &n);
    if (rc)
        return fail(x, "manifest %s: %s", digest, err_str(rc));
    rc = digest_verify(digest, bytes, n);
    if (rc == 0)
        rc = image_parse(bytes, n, e->media_type, img, why, sizeof why);
    free(bytes);
    if (rc)
        return fail(x, "manifest %s: %s (run winch verify)", digest,
                    rc == WE_DIGEST ? "corrupt in the cache" : err_str(rc));
    return 0;
}

static bool image_config_type(const char *mt)
{
    return strcmp(mt, "application/vnd.oci.image.config.v1+json") == 0 ||
           strcmp(mt, "application/vnd.docker.container.image.v1+json") == 0;
}

/* The first config or layer of img that is not cached (with the size the manifest says), or
 * NULL when the image is whole in the cache. */
static const image_ref_t *missing_piece(exporter_t *x, const image_t *img)
{
    for (size_t i = 0; i < img->nrefs; i++) {
        const image_ref_t *r = &img->refs[i];
        cache_entry_t e;
        if ((r->role == IMAGE_CONFIG || r->role == IMAGE_LAYER) &&
            (cache_lookup(x->cache, r->digest, &e) || e.size != r->size))
            return r;
    }
    return NULL;
}

/* A whole image manifest: its config and layers into the plan, and perhaps manifest.json. */
static int plan_image(exporter_t *x, const image_t *img, const image_ref_t *desc, pick_t *pk)
{
    json_t *layers = json_array();
    const char *config = NULL;
    bool docker_ok = true;
    char name[300];
    for (size_t i = 0; i < img->nrefs; i++) {
        const image_ref_t *r = &img->refs[i];
        if (r->role != IMAGE_CONFIG && r->role != IMAGE_LAYER)
            continue;
        if (xlist_add(&x->blobs, r->digest, r->size)) {
            json_decref(layers);
            return fail(x, "out of memory");
        }
        blob_name(r->digest, name, sizeof name);
        if (r->role == IMAGE_CONFIG) {
            config = r->digest;
            docker_ok = image_config_type(r->media_type);
        } else {
            json_array_append_new(layers, json_string(name));
        }
    }
    pk->images++;
    static const platform_t amd64 = {.os = "linux", .arch = "amd64"};
    platform_t q;
    bool preferred = !desc || (desc->has_platform &&
                               platform_from_parts(desc->platform.os, desc->platform.arch,
                                                   desc->platform.variant, &q) == 0 &&
                               platform_equal(&q, &amd64));
    if (!config || !docker_ok || (pk->entry && (pk->preferred || !preferred))) {
        json_decref(layers);
        return 0;
    }
    blob_name(config, name, sizeof name);
    json_decref(pk->entry);
    pk->entry = json_pack("{s:s, s:o}", "Config", name, "Layers", layers);
    pk->preferred = preferred;
    return 0;
}

/* Plans the manifest or index at digest and everything it reaches. desc: the index entry that
 * names it (NULL at the top). An index entry that is not cached whole is left out (1); at the
 * top that is an error. Returns 0, 1, or -1 with x->err set. */
static int plan(exporter_t *x, const char *ref, const char *digest, const image_ref_t *desc,
                int depth, pick_t *pk)
{
    cache_entry_t e;
    image_t *img = NULL;
    int rc = load(x, digest, &e, &img);
    if (rc == 1 && depth == 0)
        return fail(x, "%s: manifest %s is not cached", ref, digest);
    if (rc)
        return rc;
    if (!img)
        return fail(x, "%s: manifest %s cannot be read", ref, digest);
    const image_ref_t *miss = img->kind == IMAGE_MANIFEST ? missing_piece(x, img) : NULL;
    if (miss) {
        char plat[128] = "";
        if (desc)
            platforms_entry_format(&desc->platform, plat, sizeof plat);
        if (depth)
            fprintf(stderr, "winch export: %s: leaving out %s (%s %s is not cached)\n", ref,
                    desc && desc->has_platform ? plat : digest,
                    miss->role == IMAGE_CONFIG ? "config" : "layer", miss->digest);
        else
            fail(x, "%s: %s %s is not cached (pull it first, e.g. winch warm)", ref,
                 miss->role == IMAGE_CONFIG ? "config" : "layer", miss->digest);
        image_free(img);
        return depth ? 1 : -1;
    }
    if (xlist_add(&x->manifests, digest, e.size)) {
        image_free(img);
        return fail(x, "out of memory");
    }
    if (img->kind == IMAGE_MANIFEST) {
        rc = plan_image(x, img, desc, pk);
        image_free(img);
        return rc;
    }
    unsigned cached = 0;
    rc = 0;
    for (size_t i = 0; i < img->nrefs && rc >= 0; i++) {
        const image_ref_t *r = &img->refs[i];
        if (r->role != IMAGE_CHILD)
            continue;
        if (depth >= 2) {
            rc = fail(x, "%s: indexes nested too deep", ref);
            break;
        }
        rc = plan(x, ref, r->digest, r, depth + 1, pk);
        if (rc == 0)
            cached++;
    }
    image_free(img);
    if (rc < 0)
        return rc;
    if (cached == 0)
        return depth ? 1 : fail(x, "%s: no platform of this index is cached", ref);
    return 0;
}

/* Plans one REF: its index.json entry, its manifest.json entry, its report. */
static int plan_ref(exporter_t *x, const config_t *cfg, const char *arg)
{
    cli_ref_t r;
    char digest[REF_DIGEST_MAX + 1], name[800];
    cache_entry_t e;
    if (cli_ref_parse(cfg, arg, &r))
        return fail(x, "invalid reference \"%s\"", arg);
    if (cli_ref_resolve(x->cache, &r, digest) || cache_lookup(x->cache, digest, &e))
        return fail(x, "no such image in the cache: %s", arg);
    if (r.tag[0])
        snprintf(name, sizeof name, "%s/%s:%s", r.upstream, r.repo, r.tag);
    else
        snprintf(name, sizeof name, "%s/%s@%s", r.upstream, r.repo, digest);
    pick_t pk = {0};
    if (plan(x, name, digest, NULL, 0, &pk) < 0) {
        json_decref(pk.entry);
        return -1;
    }
    json_array_append_new(x->index,
                          json_pack("{s:s, s:s, s:I, s:{s:s, s:s}}", "mediaType", e.media_type,
                                    "digest", digest, "size", (json_int_t)e.size, "annotations",
                                    ARCHIVE_REF_NAME, name, ARCHIVE_IMAGE_NAME, name));
    if (pk.entry) {
        json_object_set_new(pk.entry, "RepoTags", r.tag[0] ? json_pack("[s]", name) : json_array());
        json_array_append_new(x->docker, pk.entry);
    }
    json_array_append_new(x->report, json_pack("{s:s, s:s, s:I}", "name", name, "digest", digest,
                                               "images", (json_int_t)pk.images));
    return 0;
}

/* ---- Writing ------------------------------------------------------------------------------- */

static int out_write(void *arg, const void *data, size_t len)
{
    exporter_t *x = arg;
    int rc = archive_write_all(x->fd, data, len);
    if (rc == 0)
        x->tar_bytes += len;
    return rc;
}

static int put_bytes(exporter_t *x, const char *name, const char *bytes, size_t len)
{
    int rc = tar_put_header(out_write, x, name, len, false);
    if (rc == 0)
        rc = out_write(x, bytes, len);
    if (rc == 0)
        rc = tar_put_pad(out_write, x, len);
    return rc;
}

static int put_json(exporter_t *x, const char *name, const json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    if (!s)
        return -ENOMEM;
    int rc = put_bytes(x, name, s, strlen(s));
    free(s);
    return rc;
}

/* Copies one cached file into the archive, hashing it on the way. */
static int put_blob(exporter_t *x, const xitem_t *it)
{
    char name[300], got[REF_DIGEST_MAX + 1];
    int fd = -1, rc;
    digester_t *d = NULL;
    struct stat st;
    enum ref_alg alg;
    blob_name(it->digest, name, sizeof name);
    if ((rc = ref_digest_parse(it->digest, strlen(it->digest), &alg)) ||
        (rc = digester_new(&d, alg)))
        goto out;
    if ((rc = cache_open_content(x->cache, it->digest, &fd)))
        goto out;
    if (fstat(fd, &st) < 0 || (uint64_t)st.st_size != it->size) {
        rc = WE_DIGEST;
        goto out;
    }
    if ((rc = tar_put_header(out_write, x, name, it->size, false)))
        goto out;
    for (uint64_t off = 0; off < it->size;) {
        ssize_t n = pread(fd, x->buf, COPY_BUF, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = n < 0 ? -errno : WE_SHORT;
            goto out;
        }
        digester_update(d, x->buf, (size_t)n);
        if ((rc = out_write(x, x->buf, (size_t)n)))
            goto out;
        off += (uint64_t)n;
    }
    if ((rc = digester_final(d, got)) == 0 && strcmp(got, it->digest) != 0)
        rc = WE_DIGEST;
    if (rc == 0)
        rc = tar_put_pad(out_write, x, it->size);
out:
    if (fd >= 0)
        close(fd);
    digester_free(d);
    if (rc == WE_DIGEST)
        return fail(x, "%s is corrupt in the cache (run winch verify)", it->digest);
    return rc ? fail(x, "%s: %s", it->digest, err_str(rc)) : 0;
}

static int write_archive(exporter_t *x)
{
    json_t *index = json_pack("{s:i, s:s, s:O}", "schemaVersion", 2, "mediaType", MT_OCI_INDEX,
                              "manifests", x->index);
    int rc = put_bytes(x, "oci-layout", "{\"imageLayoutVersion\":\"1.0.0\"}", 30);
    if (rc == 0)
        rc = put_json(x, "index.json", index);
    if (rc == 0)
        rc = put_json(x, "manifest.json", x->docker);
    json_decref(index);
    static const char *const dirs[] = {"blobs/", "blobs/sha256/", "blobs/sha512/"};
    for (size_t i = 0; i < 3 && rc == 0; i++)
        rc = tar_put_header(out_write, x, dirs[i], 0, true);
    if (rc)
        return fail(x, "writing the archive: %s", err_str(rc));
    for (size_t i = 0; i < x->manifests.n; i++)
        if (put_blob(x, &x->manifests.v[i]))
            return -1;
    for (size_t i = 0; i < x->blobs.n; i++)
        if (put_blob(x, &x->blobs.v[i]))
            return -1;
    if ((rc = tar_put_end(out_write, x)))
        return fail(x, "writing the archive: %s", err_str(rc));
    return 0;
}

/* Writes the archive into a temp file beside path, through gzip when gz, then renames it. */
static int write_file(exporter_t *x, const char *path, bool gz)
{
    char tmp[4200];
    pid_t pid = -1;
    int rc = -1;
    snprintf(tmp, sizeof tmp, "%s.tmp-%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return fail(x, "%s: %s", tmp, strerror(errno));
    x->fd = fd;
    if (gz && (rc = archive_gzip(fd, &x->fd, &pid)) < 0) {
        fail(x, "cannot run gzip: %s", err_str(rc));
        goto out;
    }
    rc = write_archive(x);
    if (gz) {
        close(x->fd);
        int wrc = archive_wait(pid);
        pid = -1;
        if (rc == 0 && wrc)
            rc = fail(x, "gzip failed");
    }
    if (rc == 0 && fsync(fd) < 0)
        rc = fail(x, "%s: %s", tmp, strerror(errno));
    if (rc == 0 && rename(tmp, path) < 0)
        rc = fail(x, "%s: %s", path, strerror(errno));
out:
    archive_kill(pid);
    close(fd);
    if (rc)
        unlink(tmp);
    return rc;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static void report(const exporter_t *x, const char *path, bool json)
{
    if (json) {
        cache_cmd_json(json_pack("{s:s, s:O, s:I, s:I}", "file", path, "images", x->report, "blobs",
                                 (json_int_t)x->manifests.n + (json_int_t)x->blobs.n, "tar_bytes",
                                 (json_int_t)x->tar_bytes));
        return;
    }
    size_t i;
    json_t *r;
    json_array_foreach(x->report, i, r)
    {
        printf("Exported %s (%s)\n", json_string_value(json_object_get(r, "name")),
               json_string_value(json_object_get(r, "digest")));
    }
    char size[16];
    cli_size(x->tar_bytes, size, sizeof size);
    printf("Wrote %s: %zu blobs, %s uncompressed\n", path, x->manifests.n + x->blobs.n, size);
}

int cli_export(int argc, char **argv)
{
    cache_cmd_t cmd;
    exporter_t x = {.fd = -1};
    const char *out = NULL;
    int nrefs = 0;
    int rc = cache_cmd_open(argc, argv, &cmd);
    if (rc)
        goto done;
    signal(SIGPIPE, SIG_IGN); /* a gzip that died is an EPIPE, not the end of winch */
    for (int i = 1; i < cmd.o.argc; i++) {
        const char *a = cmd.o.argv[i];
        if ((strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) && i + 1 < cmd.o.argc && !out)
            out = cmd.o.argv[++i];
        else if (strncmp(a, "--output=", 9) == 0 && !out)
            out = a + 9;
        else if (a[0] == '-')
            rc = 2;
        else
            cmd.o.argv[1 + nrefs++] = cmd.o.argv[i];
    }
    if (rc || !out || !out[0] || nrefs == 0) {
        usage_error("export");
        rc = 2;
        goto done;
    }
    x.cache = cmd.cache;
    x.index = json_array();
    x.docker = json_array();
    x.report = json_array();
    x.buf = malloc(COPY_BUF);
    if (!x.buf) {
        rc = 1;
        goto done;
    }
    for (int i = 0; i < nrefs && rc == 0; i++)
        if (plan_ref(&x, cmd.cfg, cmd.o.argv[1 + i]))
            rc = 1;
    if (rc == 0 && write_file(&x, out, ends_with(out, ".gz") || ends_with(out, ".tgz")))
        rc = 1;
    if (rc)
        fprintf(stderr, "winch export: %s\n", x.err);
    else
        report(&x, out, cmd.o.json);
done:
    json_decref(x.index);
    json_decref(x.docker);
    json_decref(x.report);
    free(x.manifests.v);
    free(x.blobs.v);
    free(x.buf);
    cache_cmd_close(&cmd);
    return rc;
}
