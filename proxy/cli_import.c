/* `winch import FILE.tar` (or a gzip-compressed one, recognised by its first bytes): adds the
 * images of an OCI image layout archive to the cache, as docker load adds them to a host, for
 * air-gapped sites fed by winch export (or by any tool writing an OCI layout: skopeo's
 * oci-archive:, buildah, docker save of Docker 25+).
 *
 * Two passes over the archive, so nothing but small JSON is ever held in memory and the entries
 * may come in any order:
 *
 *   1. scan     index.json and oci-layout are read; every blobs/<alg>/<hex> entry is noted,
 *               and the small ones that look like JSON (manifests, configs) are kept, up to
 *               KEEP_TOTAL bytes. Then every image index.json names is checked before anything
 *               is written: each manifest must hash to its digest and parse, each config and
 *               layer must be in the archive or already cached, with the size its descriptor
 *               says. An image that fails makes the whole import fail, with nothing written.
 *   2. import   the blobs not cached yet go in through the cache's fills (from memory, or in a
 *               second read of the archive): the same path as a pull, so each is hashed and
 *               must match its digest, is fsynced and renamed before the index names it, and a
 *               crash leaves at most temp files. Then the manifests, children before the index
 *               naming them and the tagged one last (cache_put_manifest: verified again), so a
 *               tag appears only once everything it reaches is in.
 *
 * A .tar.gz is decompressed by gzip(1) on each pass. Names come from the index.json entry's
 * io.containerd.image.name or org.opencontainers.image.ref.name annotation when it is a full
 * reference (winch export writes "UPSTREAM/REPOSITORY:TAG" in both); its first component must
 * be a configured upstream (or none, for the default one). An entry without a name is imported
 * untagged (winch ls shows it as <none>). Safe beside a serving winch: fills and puts are
 * the cache's own, whose index writes LMDB serialises between processes. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/hash.h"
#include "common/tar.h"
#include "proxy/cli_archive.h"
#include "proxy/cli_cache.h"
#include "proxy/cli_commands.h"
#include "proxy/usage.h"

#define KEEP_ONE ((uint64_t)16 << 20)    /* a kept JSON entry (manifests are at most 4 MiB) */
#define KEEP_TOTAL ((uint64_t)256 << 20) /* all kept entries together */
#define INDEX_MAX ((size_t)16 << 20)     /* index.json */
#define MAX_BLOBS 200000
#define MAX_TOPS 10000
#define CHUNK ((size_t)1 << 20)

typedef struct iblob {
    char digest[REF_DIGEST_MAX + 1];
    uint64_t size; /* the archive entry's */
    char *bytes;   /* kept from the scan (JSON-looking and small), else NULL */
    bool needed;   /* a config or layer of an image being imported, not cached */
    bool done;     /* imported */
    char media_type[128];
} iblob_t;

/* One cache_put_manifest to make, in order. */
typedef struct iput {
    const iblob_t *b;
    char media_type[128];
    cli_ref_t name; /* upstream and repo ("" when unnamed); tag "" for all but a top entry */
    bool top;
} iput_t;

typedef struct source {
    int file; /* the archive */
    int fd;   /* what the tar reader reads: the file, or gzip's output */
    pid_t gz; /* gzip -dc, or -1 */
} source_t;

typedef struct importer {
    cache_cmd_t *cmd;
    const char *path;
    iblob_t *blobs;
    size_t nblobs;
    uint32_t *ht; /* open addressing over blobs: index + 1, 0 empty */
    size_t htcap;
    uint64_t kept;
    char *index_json;
    size_t index_len;
    bool layout_ok;
    iput_t *puts;
    size_t nputs, cap_puts;
    uint64_t imported_bytes, imported;
    json_t *loaded; /* the names of the images imported */
    char *buf[2];
    char err[1200];
} importer_t;

static int fail(importer_t *im, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(importer_t *im, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(im->err, sizeof im->err, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---- The archive as a byte source ------------------------------------------------------------ */

static ssize_t src_read(void *arg, void *buf, size_t len)
{
    source_t *s = arg;
    ssize_t n = read(s->fd, buf, len);
    return n < 0 ? -errno : n;
}

static int src_skip(void *arg, uint64_t n)
{
    source_t *s = arg;
    return lseek(s->fd, (off_t)n, SEEK_CUR) < 0 ? -errno : 0;
}

static int src_open(importer_t *im, source_t *s)
{
    s->gz = -1;
    s->fd = -1;
    s->file = open(im->path, O_RDONLY | O_CLOEXEC);
    if (s->file < 0)
        return fail(im, "%s: %s", im->path, strerror(errno));
    if (!archive_is_gzip(s->file)) {
        s->fd = s->file;
        return 0;
    }
    int rc = archive_gunzip(s->file, &s->fd, &s->gz);
    if (rc) {
        close(s->file);
        return fail(im, "cannot run gzip: %s", err_str(rc));
    }
    return 0;
}

/* Closes the source. A gzip stream is read to its end first, so that gzip checks its trailer
 * (a corrupt .tar.gz fails here even when the tar inside looked whole). */
static int src_close(importer_t *im, source_t *s, bool check)
{
    int rc = 0;
    if (s->gz > 0) {
        if (check) {
            char buf[8192];
            ssize_t n;
            while ((n = read(s->fd, buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
                ;
        }
        close(s->fd);
        if (check)
            rc = archive_wait(s->gz);
        else
            archive_kill(s->gz);
        if (rc)
            rc = fail(im, "%s: gzip reports a corrupt archive", im->path);
    }
    close(s->file);
    return rc;
}

static tar_io_t src_io(source_t *s)
{
    return (tar_io_t){.read = src_read, .skip = s->gz > 0 ? NULL : src_skip, .arg = s};
}

/* ---- The blobs of the archive --------------------------------------------------------------- */

static iblob_t *find(importer_t *im, const char *digest)
{
    if (!im->htcap)
        return NULL;
    size_t i = (size_t)hash_bytes64(digest, strlen(digest)) & (im->htcap - 1);
    for (; im->ht[i]; i = (i + 1) & (im->htcap - 1))
        if (strcmp(im->blobs[im->ht[i] - 1].digest, digest) == 0)
            return &im->blobs[im->ht[i] - 1];
    return NULL;
}

static int grow(importer_t *im)
{
    size_t cap = im->htcap ? im->htcap * 2 : 1024;
    iblob_t *nb = realloc(im->blobs, cap / 2 * sizeof *nb);
    uint32_t *ht = calloc(cap, sizeof *ht);
    if (!nb || !ht) {
        free(ht);
        if (nb)
            im->blobs = nb;
        return -ENOMEM;
    }
    im->blobs = nb;
    for (size_t k = 0; k < im->nblobs; k++) {
        size_t i = (size_t)hash_bytes64(nb[k].digest, strlen(nb[k].digest)) & (cap - 1);
        while (ht[i])
            i = (i + 1) & (cap - 1);
        ht[i] = (uint32_t)k + 1;
    }
    free(im->ht);
    im->ht = ht;
    im->htcap = cap;
    return 0;
}

static iblob_t *add(importer_t *im, const char *digest, uint64_t size)
{
    if (im->nblobs + 1 > im->htcap / 2 && grow(im))
        return NULL;
    iblob_t *b = &im->blobs[im->nblobs];
    memset(b, 0, sizeof *b);
    snprintf(b->digest, sizeof b->digest, "%s", digest);
    b->size = size;
    size_t i = (size_t)hash_bytes64(digest, strlen(digest)) & (im->htcap - 1);
    while (im->ht[i])
        i = (i + 1) & (im->htcap - 1);
    im->ht[i] = (uint32_t)++im->nblobs;
    return b;
}

/* "blobs/<alg>/<hex>" -> "alg:hex", when it is a valid digest. */
static bool blob_entry(const char *name, char digest[REF_DIGEST_MAX + 1])
{
    if (strncmp(name, "blobs/", 6) != 0)
        return false;
    const char *alg = name + 6, *slash = strchr(alg, '/');
    if (!slash || strchr(slash + 1, '/'))
        return false;
    int n = snprintf(digest, REF_DIGEST_MAX + 1, "%.*s:%s", (int)(slash - alg), alg, slash + 1);
    return n > 0 && n <= REF_DIGEST_MAX && ref_digest_parse(digest, (size_t)n, NULL) == 0;
}

/* Reads the rest of the current entry (size bytes, first bytes already in head[0..hl)) into
 * a malloc'd buffer with a NUL after it. */
static int read_entry(tar_reader_t *t, uint64_t size, const char *head, size_t hl, char **out)
{
    char *p = malloc((size_t)size + 1);
    if (!p)
        return -ENOMEM;
    if (hl)
        memcpy(p, head, hl);
    for (size_t got = hl; got < size;) {
        ssize_t n = tar_read(t, p + got, (size_t)size - got);
        if (n <= 0) {
            free(p);
            return n < 0 ? (int)n : WE_SHORT;
        }
        got += (size_t)n;
    }
    p[size] = '\0';
    *out = p;
    return 0;
}

/* A blob entry in the scan: noted, and kept when small and JSON-looking. */
static int scan_blob(importer_t *im, tar_reader_t *t, const tar_entry_t *e, const char *digest)
{
    if (find(im, digest))
        return 0; /* the same content twice: the first copy will do */
    if (im->nblobs >= MAX_BLOBS)
        return fail(im, "more than %d blobs in the archive", MAX_BLOBS);
    iblob_t *b = add(im, digest, e->size);
    if (!b)
        return fail(im, "out of memory");
    if (e->size == 0 || e->size > KEEP_ONE)
        return 0;
    char head[64];
    size_t hl = e->size < sizeof head ? (size_t)e->size : sizeof head;
    for (size_t got = 0; got < hl;) {
        ssize_t n = tar_read(t, head + got, hl - got);
        if (n <= 0)
            return fail(im, "%s: %s", im->path, err_str(n < 0 ? (int)n : WE_SHORT));
        got += (size_t)n;
    }
    size_t i = 0;
    while (i < hl && (head[i] == ' ' || head[i] == '\n' || head[i] == '\r' || head[i] == '\t'))
        i++;
    if (i == hl || head[i] != '{')
        return 0;
    if (im->kept + e->size > KEEP_TOTAL)
        return fail(im, "the archive holds more than %llu MiB of manifests and configs",
                    (unsigned long long)(KEEP_TOTAL >> 20));
    int rc = read_entry(t, e->size, head, hl, &b->bytes);
    if (rc)
        return fail(im, "%s: %s", im->path, err_str(rc));
    im->kept += e->size;
    return 0;
}

static int scan_small(importer_t *im, tar_reader_t *t, const tar_entry_t *e)
{
    bool layout = strcmp(e->name, "oci-layout") == 0;
    if (e->size > (layout ? 4096 : INDEX_MAX))
        return fail(im, "%s: %s is too big (%llu bytes)", im->path, e->name,
                    (unsigned long long)e->size);
    char *bytes = NULL;
    int rc = read_entry(t, e->size, NULL, 0, &bytes);
    if (rc)
        return fail(im, "%s: %s", im->path, err_str(rc));
    if (!layout) {
        free(im->index_json);
        im->index_json = bytes;
        im->index_len = (size_t)e->size;
        return 0;
    }
    json_t *j = json_loadb(bytes, (size_t)e->size, 0, NULL);
    const char *v = json_string_value(json_object_get(j, "imageLayoutVersion"));
    im->layout_ok = v && strncmp(v, "1.", 2) == 0;
    json_decref(j);
    free(bytes);
    return 0;
}

/* Pass 1. */
static int scan(importer_t *im)
{
    source_t s;
    tar_reader_t *t = NULL;
    tar_entry_t e;
    char digest[REF_DIGEST_MAX + 1];
    int rc;
    if (src_open(im, &s))
        return -1;
    tar_io_t io = src_io(&s);
    if (tar_reader_new(&t, &io)) {
        src_close(im, &s, false);
        return fail(im, "out of memory");
    }
    while ((rc = tar_next(t, &e)) == 1) {
        if (e.type != TAR_FILE)
            continue;
        if (strcmp(e.name, "index.json") == 0 || strcmp(e.name, "oci-layout") == 0)
            rc = scan_small(im, t, &e);
        else if (blob_entry(e.name, digest))
            rc = scan_blob(im, t, &e, digest);
        else
            continue;
        if (rc)
            break;
    }
    tar_reader_free(t);
    if (rc > 0 || (rc < 0 && !im->err[0]))
        rc = fail(im, "%s: not a readable tar archive (%s)", im->path, err_str(rc));
    if (src_close(im, &s, rc == 0) && rc == 0)
        rc = -1;
    if (rc == 0 && !im->layout_ok)
        rc = fail(im, "%s: not an OCI image layout (no oci-layout with version 1.x)", im->path);
    if (rc == 0 && !im->index_json)
        rc = fail(im, "%s: not an OCI image layout (no index.json)", im->path);
    return rc;
}

/* ---- Checking the images -------------------------------------------------------------------- */

static int add_put(importer_t *im, const iblob_t *b, const char *mt, const cli_ref_t *name,
                   bool top)
{
    if (im->nputs == im->cap_puts) {
        size_t cap = im->cap_puts ? im->cap_puts * 2 : 32;
        iput_t *p = realloc(im->puts, cap * sizeof *p);
        if (!p)
            return fail(im, "out of memory");
        im->puts = p;
        im->cap_puts = cap;
    }
    iput_t *p = &im->puts[im->nputs++];
    p->b = b;
    snprintf(p->media_type, sizeof p->media_type, "%s", mt);
    p->name = *name;
    if (!top)
        p->name.tag[0] = '\0';
    p->top = top;
    return 0;
}

/* A config or layer: in the archive (to import) or already cached, with the size it should
 * have. */
static int check_piece(importer_t *im, const char *what, const image_ref_t *r)
{
    iblob_t *b = find(im, r->digest);
    cache_entry_t e;
    if (b) {
        if (b->size != r->size)
            return fail(im, "%s: %s has %llu bytes in the archive, its manifest says %llu", what,
                        r->digest, (unsigned long long)b->size, (unsigned long long)r->size);
        if (cache_lookup(im->cmd->cache, r->digest, &e) == 0 && e.size == r->size)
            return 0;
        b->needed = true;
        if (!b->media_type[0])
            snprintf(b->media_type, sizeof b->media_type, "%s", r->media_type);
        return 0;
    }
    if (cache_lookup(im->cmd->cache, r->digest, &e) == 0 && e.size == r->size)
        return 0;
    return fail(im, "%s: %s %s is neither in the archive nor in the cache", what,
                r->role == IMAGE_CONFIG ? "config" : "layer", r->digest);
}

/* Checks the manifest at desc and everything it reaches; queues the puts, children first.
 * An index entry missing from the archive is left out (1). */
static int check(importer_t *im, const char *what, const char *digest, const char *mt,
                 uint64_t size, const cli_ref_t *name, int depth)
{
    iblob_t *b = find(im, digest);
    image_t *img = NULL;
    char why[200];
    if (!b || !b->bytes) {
        if (depth > 0)
            return 1;
        return fail(im, "%s: manifest %s is not in the archive", what, digest);
    }
    if (b->size != size)
        return fail(im, "%s: manifest %s has %llu bytes, index.json says %llu", what, digest,
                    (unsigned long long)b->size, (unsigned long long)size);
    if (digest_verify(digest, b->bytes, (size_t)b->size))
        return fail(im, "%s: manifest %s does not match its digest", what, digest);
    if (image_parse(b->bytes, (size_t)b->size, mt, &img, why, sizeof why))
        return fail(im, "%s: manifest %s: %s", what, digest, why);
    int rc = 0;
    for (size_t i = 0; i < img->nrefs && rc >= 0; i++) {
        const image_ref_t *r = &img->refs[i];
        if (r->role == IMAGE_CONFIG || r->role == IMAGE_LAYER)
            rc = check_piece(im, what, r);
        else if (r->role == IMAGE_CHILD && depth >= 2)
            rc = fail(im, "%s: indexes nested too deep", what);
        else if (r->role == IMAGE_CHILD)
            rc = check(im, what, r->digest, r->media_type, r->size, name, depth + 1);
    }
    image_free(img);
    if (rc < 0)
        return rc;
    return add_put(im, b, mt, name, depth == 0);
}

/* The image's name from its index.json annotations: 0 with *name filled, 1 when it has none
 * (imported untagged), -1 when it names an upstream that is not configured. */
static int entry_name(importer_t *im, json_t *ann, cli_ref_t *name)
{
    const config_t *cfg = im->cmd->cfg;
    static const char *const keys[] = {ARCHIVE_IMAGE_NAME, ARCHIVE_REF_NAME};
    memset(name, 0, sizeof *name);
    for (size_t k = 0; k < 2; k++) {
        const char *v = json_string_value(json_object_get(ann, keys[k]));
        /* A bare tag ("v1.0", as the layout spec's examples) names no repository. */
        if (!v || !strpbrk(v, "/:@"))
            continue;
        if (cli_ref_parse(cfg, v, name))
            return fail(im, "index.json: invalid image name \"%s\"", v);
        const char *slash = strchr(v, '/');
        size_t fl = slash ? (size_t)(slash - v) : 0;
        bool hostlike = slash && (memchr(v, '.', fl) || memchr(v, ':', fl) ||
                                  (fl == 9 && memcmp(v, "localhost", 9) == 0));
        if (hostlike && !config_upstream_find(cfg, v, fl))
            return fail(im,
                        "%s: upstream %.*s is not configured (winch serves only its "
                        "configured upstreams)",
                        v, (int)fl, v);
        return 0;
    }
    return 1;
}

/* Every image index.json names, checked before anything is written. */
static int check_all(importer_t *im)
{
    json_error_t je;
    json_t *idx = json_loadb(im->index_json, im->index_len, 0, &je);
    json_t *list = json_object_get(idx, "manifests");
    int rc = 0;
    if (!json_is_array(list) || json_array_size(list) > MAX_TOPS) {
        json_decref(idx);
        return fail(im, "index.json: not an image index (%s)", idx ? "no manifests" : je.text);
    }
    size_t i;
    json_t *d;
    json_array_foreach(list, i, d)
    {
        const char *mt = json_string_value(json_object_get(d, "mediaType"));
        const char *digest = json_string_value(json_object_get(d, "digest"));
        json_t *sz = json_object_get(d, "size");
        cli_ref_t name;
        char what[900];
        if (!mt || !image_type_known(mt) || !digest ||
            ref_digest_parse(digest, strlen(digest), NULL) || !json_is_integer(sz) ||
            json_integer_value(sz) < 0) {
            rc = fail(im, "index.json: manifests[%zu] is not a manifest descriptor", i);
            break;
        }
        if ((rc = entry_name(im, json_object_get(d, "annotations"), &name)) < 0)
            break;
        if (rc == 1)
            snprintf(what, sizeof what, "%s (untagged)", digest);
        else
            snprintf(what, sizeof what, "%s/%s%s%s", name.upstream, name.repo,
                     name.tag[0] ? ":" : "@", name.tag[0] ? name.tag : name.digest);
        if (rc == 0 && !name.tag[0] && name.digest[0] && strcmp(name.digest, digest) != 0) {
            rc = fail(im, "%s: names %s but the entry is %s", what, name.digest, digest);
            break;
        }
        rc = check(im, what, digest, mt, (uint64_t)json_integer_value(sz), &name, 0);
        if (rc < 0)
            break;
        rc = 0;
    }
    json_decref(idx);
    return rc;
}

/* ---- Importing -------------------------------------------------------------------------------- */

/* A write or manifest put in flight: busy until its callback (on_written) says how it ended. */
struct wait {
    bool busy;
    int status;
};

static void on_written(void *arg, int status)
{
    struct wait *w = arg;
    w->busy = false;
    w->status = status;
}

static void run_until(uv_loop_t *loop, const bool *flag, bool value)
{
    while (*flag != value)
        uv_run(loop, UV_RUN_ONCE);
}

/* Pours one blob into a fill from the tar entry t is at (or from b->bytes when t is NULL),
 * reading the next chunk while the previous one is hashed and written. */
static int import_blob(importer_t *im, iblob_t *b, tar_reader_t *t)
{
    cache_t *c = im->cmd->cache;
    uv_loop_t *loop = &im->cmd->loop;
    fill_t *f;
    bool created;
    struct wait w = {0};
    int rc = fill_get(c, b->digest, &f, &created);
    if (rc)
        return fail(im, "%s: %s", b->digest, err_str(rc));
    /* This process runs one fill at a time: a fill already there would be a bug. */
    if (!created)
        rc = -EALREADY;
    else
        rc = fill_set_size(f, b->size, b->media_type);
    if (rc < 0)
        goto out;
    uint64_t off = 0;
    int cur = 0;
    while (off < b->size && rc == 0) {
        size_t n = b->size - off < CHUNK ? (size_t)(b->size - off) : CHUNK;
        const char *data;
        if (t) {
            ssize_t got = tar_read(t, im->buf[cur], n);
            if (got <= 0) {
                rc = got < 0 ? (int)got : WE_SHORT;
                break;
            }
            n = (size_t)got;
            data = im->buf[cur];
        } else {
            data = b->bytes + off;
        }
        run_until(loop, &w.busy, false);
        if ((rc = w.status))
            break;
        w.busy = true;
        if ((rc = fill_write(f, data, n, on_written, &w)) < 0) {
            w.busy = false;
            break;
        }
        off += n;
        cur ^= 1;
    }
    run_until(loop, &w.busy, false);
    if (rc == 0)
        rc = w.status;
    if (rc == 0) {
        fill_finish(f);
        while (fill_state(f) != FILL_DONE && fill_state(f) != FILL_FAILED)
            uv_run(loop, UV_RUN_ONCE);
        rc = fill_error(f);
    } else {
        fill_fail(f, rc);
    }
out:
    fill_unref(f);
    uv_run(loop, UV_RUN_NOWAIT);
    if (rc)
        return fail(im, "%s: %s", b->digest,
                    rc == WE_DIGEST ? "the archive's bytes do not match the digest" : err_str(rc));
    b->done = true;
    im->imported++;
    im->imported_bytes += b->size;
    return 0;
}

/* Pass 2: the needed blobs, from memory or from a second read of the archive. */
static int import_blobs(importer_t *im)
{
    size_t left = 0;
    for (size_t i = 0; i < im->nblobs; i++) {
        iblob_t *b = &im->blobs[i];
        if (b->needed && b->bytes && import_blob(im, b, NULL))
            return -1;
        left += b->needed && !b->done;
    }
    if (left == 0)
        return 0;
    source_t s;
    tar_reader_t *t = NULL;
    tar_entry_t e;
    char digest[REF_DIGEST_MAX + 1];
    int rc = 0;
    if (src_open(im, &s))
        return -1;
    tar_io_t io = src_io(&s);
    if (tar_reader_new(&t, &io)) {
        src_close(im, &s, false);
        return fail(im, "out of memory");
    }
    while (left && (rc = tar_next(t, &e)) == 1) {
        iblob_t *b;
        if (e.type != TAR_FILE || !blob_entry(e.name, digest) || !(b = find(im, digest)) ||
            !b->needed || b->done)
            continue;
        if (e.size != b->size) {
            rc = fail(im, "%s changed while it was imported", im->path);
            break;
        }
        if ((rc = import_blob(im, b, t)))
            break;
        left--;
    }
    tar_reader_free(t);
    if (rc < 0 && !im->err[0])
        rc = fail(im, "%s: %s", im->path, err_str(rc));
    if (src_close(im, &s, false) && rc >= 0)
        rc = -1;
    if (rc >= 0 && left)
        rc = fail(im, "%s changed while it was imported", im->path);
    return rc < 0 ? -1 : 0;
}

static int put_manifests(importer_t *im)
{
    for (size_t i = 0; i < im->nputs; i++) {
        const iput_t *p = &im->puts[i];
        image_t *img = NULL;
        struct wait w = {.busy = true};
        bool named = p->name.repo[0] != '\0';
        if (image_parse(p->b->bytes, (size_t)p->b->size, p->media_type, &img, NULL, 0))
            return fail(im, "manifest %s: invalid", p->b->digest);
        cache_manifest_put_t mp = {
            .digest = p->b->digest,
            .media_type = p->media_type,
            .bytes = p->b->bytes,
            .len = (size_t)p->b->size,
            .upstream = named ? p->name.upstream : NULL,
            .repo = named ? p->name.repo : NULL,
            .tag = named && p->name.tag[0] ? p->name.tag : NULL,
            .image = img,
        };
        int rc = cache_put_manifest(im->cmd->cache, &mp, on_written, &w);
        image_free(img);
        if (rc == 0) {
            run_until(&im->cmd->loop, &w.busy, false);
            rc = w.status;
        }
        if (rc)
            return fail(im, "manifest %s: %s", p->b->digest, err_str(rc));
        if (!p->top)
            continue;
        char what[900];
        if (named)
            snprintf(what, sizeof what, "%s/%s%s%s", p->name.upstream, p->name.repo,
                     p->name.tag[0] ? ":" : "@", p->name.tag[0] ? p->name.tag : p->b->digest);
        else
            snprintf(what, sizeof what, "%s (untagged)", p->b->digest);
        json_array_append_new(im->loaded, json_string(what));
        if (!im->cmd->o.json)
            printf("Loaded image: %s\n", what);
    }
    return 0;
}

static void importer_free(importer_t *im)
{
    for (size_t i = 0; i < im->nblobs; i++)
        free(im->blobs[i].bytes);
    free(im->blobs);
    free(im->ht);
    free(im->puts);
    free(im->index_json);
    free(im->buf[0]);
    free(im->buf[1]);
    json_decref(im->loaded);
}

int cli_import(int argc, char **argv)
{
    cache_cmd_t cmd;
    importer_t im = {.cmd = &cmd, .loaded = json_array()};
    int rc = cache_cmd_open_create(argc, argv, &cmd);
    if (rc)
        goto done;
    signal(SIGPIPE, SIG_IGN); /* a gzip that died is an EPIPE, not the end of winch */
    if (cmd.o.argc != 2 || cmd.o.argv[1][0] == '-') {
        usage_error("import");
        rc = 2;
        goto done;
    }
    im.path = cmd.o.argv[1];
    im.buf[0] = malloc(CHUNK);
    im.buf[1] = malloc(CHUNK);
    if (!im.buf[0] || !im.buf[1]) {
        rc = 1;
        goto done;
    }
    if (scan(&im) || check_all(&im) || import_blobs(&im) || put_manifests(&im)) {
        fprintf(stderr, "winch import: %s\n", im.err);
        rc = 1;
        goto done;
    }
    char size[16];
    cli_size(im.imported_bytes, size, sizeof size);
    if (cmd.o.json)
        cache_cmd_json(json_pack("{s:s, s:O, s:I, s:I, s:I}", "file", im.path, "images", im.loaded,
                                 "blobs_imported", (json_int_t)im.imported, "bytes_imported",
                                 (json_int_t)im.imported_bytes, "manifests", (json_int_t)im.nputs));
    else
        printf("Imported %llu blob(s) (%s) and %zu manifest(s) from %s\n",
               (unsigned long long)im.imported, size, im.nputs, im.path);
done:
    importer_free(&im);
    cache_cmd_close(&cmd);
    return rc;
}
