/* The content store on disk: directory layout, the lock, temp files, publishing, reads of
 * published content and the manifest put.
 *
 * Publishing is the crash-consistency rule of the whole cache: a file is fsynced, renamed to
 * its content path and its directory fsynced before the index learns about it, so after a
 * kill -9 at any instant every index entry names a complete, verified file. The reverse
 * (a published file the index never heard of) is harmless garbage that the next fill of the
 * same digest overwrites by rename.
 *
 * Paths are only ever built from digests that pass ref_digest_parse, so no network string can
 * name a path outside blobs/. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache/internal.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

/* ---- Paths ---------------------------------------------------------------------------------- */

/* Validates digest and returns its algorithm and the hex part. */
static int digest_split(const char *digest, enum ref_alg *alg, const char **hex)
{
    size_t n = strnlen(digest, REF_DIGEST_MAX + 1);
    if (n > REF_DIGEST_MAX)
        return WE_INVALID;
    int rc = ref_digest_parse(digest, n, alg);
    if (rc)
        return rc;
    *hex = strchr(digest, ':') + 1;
    return 0;
}

static int path_printf(char *buf, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int path_printf(char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap)
        return -ENAMETOOLONG;
    return 0;
}

int store_content_path(const cache_t *c, const char *digest, char *buf, size_t cap)
{
    enum ref_alg alg;
    const char *hex;
    int rc = digest_split(digest, &alg, &hex);
    if (rc)
        return rc;
    return path_printf(buf, cap, "%s/blobs/%s/%.2s/%s", c->dir, ref_alg_name(alg), hex, hex);
}

/* ---- File helpers --------------------------------------------------------------------------- */

static int fsync_dir(const cache_t *c, const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = c->io.fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

/* Writes the parent directory of path into buf. */
static int parent_of(const char *path, char *buf, size_t cap)
{
    const char *slash = strrchr(path, '/');
    size_t n = slash ? (size_t)(slash - path) : 0;
    if (n == 0)
        return path_printf(buf, cap, "%s", slash ? "/" : ".");
    if (n >= cap)
        return -ENAMETOOLONG;
    memcpy(buf, path, n);
    buf[n] = '\0';
    return 0;
}

/* mkdir that reports (if created is not NULL) whether it created the directory; EEXIST is
 * success. */
static int make_dir(const char *path, bool *created)
{
    if (created)
        *created = false;
    if (mkdir(path, 0755) == 0) {
        if (created)
            *created = true;
        return 0;
    }
    if (errno != EEXIST)
        return -errno;
    struct stat st;
    if (stat(path, &st) < 0)
        return -errno;
    return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

/* mkdir -p, fsyncing the parent of every directory it creates so the layout itself survives a
 * crash. Runs at open only. */
static int make_dirs(const cache_t *c, const char *path)
{
    char buf[CACHE_PATH_MAX], parent[CACHE_PATH_MAX];
    int rc = path_printf(buf, sizeof buf, "%s", path);
    if (rc)
        return rc;
    size_t len = strlen(buf);
    for (size_t i = 1; i <= len; i++) {
        if (i < len && buf[i] != '/')
            continue;
        char saved = buf[i];
        buf[i] = '\0';
        bool created;
        rc = make_dir(buf, &created);
        if (rc == 0 && created && parent_of(buf, parent, sizeof parent) == 0)
            rc = fsync_dir(c, parent);
        buf[i] = saved;
        if (rc)
            return rc;
    }
    return 0;
}

int store_write_all(const cache_t *c, int fd, const void *buf, size_t len, uint64_t off)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = c->io.pwrite(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        /* A zero-byte write of a non-empty buffer makes no progress; retrying could spin. */
        if (n == 0)
            return -EIO;
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

int store_create_temp(const cache_t *c, uint64_t seq, const char *digest, int *fd, char **path)
{
    enum ref_alg alg;
    const char *hex;
    char buf[CACHE_PATH_MAX];
    int rc = digest_split(digest, &alg, &hex);
    if (rc)
        return rc;
    /* The directory lock makes this process the only writer of tmp/ and tmp/ is swept at open,
     * so the loop's sequence number alone makes the name unique; O_EXCL turns a violation of
     * that into an error instead of two fills sharing a file. */
    if ((rc = path_printf(buf, sizeof buf, "%s/tmp/%" PRIu64 ".%s.part", c->dir, seq, hex)))
        return rc;
    int f = open(buf, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0644);
    if (f < 0)
        return -errno;
    *path = strdup(buf);
    if (!*path) {
        close(f);
        unlink(buf);
        return -ENOMEM;
    }
    *fd = f;
    return 0;
}

int store_publish(const cache_t *c, int fd, const char *tmp_path, const char *digest)
{
    char final[CACHE_PATH_MAX], dir[CACHE_PATH_MAX], parent[CACHE_PATH_MAX];
    int rc = store_content_path(c, digest, final, sizeof final);
    if (rc)
        return rc;
    if (c->io.fsync(fd) < 0)
        return -errno;
    if ((rc = parent_of(final, dir, sizeof dir)) || (rc = parent_of(dir, parent, sizeof parent)))
        return rc;
    if ((rc = make_dir(dir, NULL)))
        return rc;
    if (c->io.rename(tmp_path, final) < 0)
        return -errno;
    if ((rc = fsync_dir(c, dir)))
        return rc;
    /* The 2-hex directory is itself an entry in blobs/<alg>/ that must be durable before the
     * index points below it. Fsyncing the parent even when this call did not create the
     * directory covers a concurrent publish that created it and has not synced it yet; with
     * nothing dirty, the fsync is cheap. */
    if ((rc = fsync_dir(c, parent)))
        return rc;
    return 0;
}

/* ---- Open: layout, lock, sweep ----------------------------------------------------------- */

/* Removes every entry of tmp/: at open no fill is running, so all of them are leftovers of a
 * previous process. */
static int sweep_tmp(const cache_t *c)
{
    char path[CACHE_PATH_MAX];
    int rc = path_printf(path, sizeof path, "%s/tmp", c->dir);
    if (rc)
        return rc;
    DIR *d = opendir(path);
    if (!d)
        return -errno;
    unsigned removed = 0;
    struct dirent *e;
    errno = 0;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (unlinkat(dirfd(d), e->d_name, 0) == 0)
            removed++;
        else
            LOG_WARN("cache: cannot remove stale temp file %s/%s: %s", path, e->d_name,
                     strerror(errno));
        errno = 0;
    }
    rc = errno ? -errno : 0;
    closedir(d);
    if (removed)
        LOG_INFO("cache: removed %u stale temp file(s) from %s", removed, path);
    return rc;
}

int store_open(cache_t *c)
{
    static const char *const subdirs[] = {"index", "tmp", "blobs/sha256", "blobs/sha512"};
    char path[CACHE_PATH_MAX];
    int rc, fd = -1;

    if ((rc = make_dirs(c, c->dir)))
        goto fail;
    if ((rc = path_printf(path, sizeof path, "%s/lock", c->dir)))
        goto fail;
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = -errno;
        goto fail;
    }
    /* flock locks belong to the open file description: a second cache_open of the same
     * directory fails even inside one process, and the kernel drops the lock on kill -9. */
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        rc = -errno;
        if (rc == -EWOULDBLOCK) {
            LOG_ERROR("cache: %s is in use by another winch (lock held on %s)", c->dir, path);
            rc = -EBUSY;
        }
        goto fail;
    }
    for (size_t i = 0; i < ARRAY_SIZE(subdirs); i++) {
        if ((rc = path_printf(path, sizeof path, "%s/%s", c->dir, subdirs[i])))
            goto fail;
        if ((rc = make_dirs(c, path)))
            goto fail;
    }
    if ((rc = sweep_tmp(c)))
        goto fail;
    c->lock_fd = fd;
    return 0;
fail:
    if (rc != -EBUSY)
        LOG_ERROR("cache: cannot open %s: %s", c->dir, err_str(rc));
    if (fd >= 0)
        close(fd);
    return rc;
}

/* ---- Reads of published content ---------------------------------------------------------- */

int cache_open_content(cache_t *c, const char *digest, int *fd)
{
    char path[CACHE_PATH_MAX];
    int rc = store_content_path(c, digest, path, sizeof path);
    if (rc)
        return rc;
    int f = open(path, O_RDONLY | O_CLOEXEC);
    if (f < 0)
        return -errno;
    *fd = f;
    return 0;
}

int cache_read_manifest(cache_t *c, const char *digest, size_t max, char **bytes, size_t *len)
{
    char *buf = NULL;
    int fd = -1, rc;
    struct stat st;

    if (hot_get(c->hot, digest, bytes, len)) {
        if (*len <= max)
            return 0;
        free(*bytes);
        *bytes = NULL;
        return WE_TOOBIG;
    }
    if ((rc = cache_open_content(c, digest, &fd))) {
        if (rc == -ENOENT)
            rc = WE_NOTFOUND;
        goto fail;
    }
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = -EINVAL;
        goto fail;
    }
    if ((uint64_t)st.st_size > max) {
        rc = WE_TOOBIG;
        goto fail;
    }
    size_t size = (size_t)st.st_size;
    /* One spare byte keeps the buffer NUL-terminated for callers that parse it as text. */
    buf = malloc(size + 1);
    if (!buf) {
        rc = -ENOMEM;
        goto fail;
    }
    size_t got = 0;
    while (got < size) {
        ssize_t n = pread(fd, buf + got, size - got, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = -errno;
            goto fail;
        }
        if (n == 0) {
            /* Published files never change; a shrink means someone else touched the store. */
            rc = -EIO;
            goto fail;
        }
        got += (size_t)n;
    }
    buf[size] = '\0';
    close(fd);
    hot_put(c->hot, digest, buf, size);
    *bytes = buf;
    *len = size;
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    free(buf);
    return rc;
}

/* ---- Manifest put ------------------------------------------------------------------------- */

struct mput {
    uv_work_t work;
    cache_t *c;
    wop_t *op; /* queued once the file is published; carries digest, cb and arg */
    void *bytes;
    size_t len;
    uint64_t seq; /* temp file name, reserved on the loop thread */
    int status;
};

/* Threadpool: verify, write the temp file, publish. */
static void mput_work(uv_work_t *w)
{
    struct mput *m = container_of(w, struct mput, work);
    char *tmp = NULL;
    int fd = -1, rc;

    /* The caller verified the digest already; checking again is cheap for a manifest and
     * keeps "every indexed digest verifies" independent of the caller. */
    if ((rc = digest_verify(m->op->digest, m->bytes, m->len)))
        goto fail;
    if ((rc = store_create_temp(m->c, m->seq, m->op->digest, &fd, &tmp)))
        goto fail;
    if ((rc = store_write_all(m->c, fd, m->bytes, m->len, 0)))
        goto fail;
    if ((rc = store_publish(m->c, fd, tmp, m->op->digest)))
        goto fail;
    close(fd);
    free(tmp);
    m->status = 0;
    return;
fail:
    if (fd >= 0)
        close(fd);
    if (tmp) {
        /* After a failed rename the temp file is still there; after a failed directory fsync
         * it is gone and ENOENT is expected. */
        unlink(tmp);
        free(tmp);
    }
    m->status = rc;
}

static void mput_done(uv_work_t *w, int status)
{
    struct mput *m = container_of(w, struct mput, work);
    cache_t *c = m->c;
    wop_t *op = m->op;
    int rc = status ? status : m->status;

    c->live_puts--;
    free(m->bytes);
    free(m);
    if (rc) {
        LOG_WARN("cache: storing manifest %s failed: %s", op->digest, err_str(rc));
        if (op->cb)
            op->cb(op->arg, rc);
        free(op);
        return;
    }
    index_queue(c, op);
}

const struct pending_put *pending_find(const cache_t *c, const char *digest)
{
    for (const struct pending_put *pp = c->pending; pp; pp = pp->next)
        if (strcmp(pp->digest, digest) == 0)
            return pp;
    return NULL;
}

/* The put's last step (committed, or failed anywhere): it stops being pending. */
static void pending_done(void *arg, int status)
{
    struct pending_put *pp = arg;
    cache_t *c = pp->c;
    for (struct pending_put **q = &c->pending; *q; q = &(*q)->next) {
        if (*q == pp) {
            *q = pp->next;
            break;
        }
    }
    if (pp->cb)
        pp->cb(pp->arg, status);
    free(pp);
}

int cache_put_manifest(cache_t *c, const cache_manifest_put_t *p, cache_done_cb cb, void *arg)
{
    enum ref_alg alg;
    const char *hex;
    struct mput *m = NULL;
    struct pending_put *pp = NULL;
    wop_t *op = NULL;
    int rc;

    if ((rc = digest_split(p->digest, &alg, &hex)))
        goto fail;
    if (!p->media_type || strlen(p->media_type) > CACHE_MEDIA_MAX || (!p->bytes && p->len) ||
        (p->tag && (!p->upstream || !p->repo)) || (!p->upstream != !p->repo)) {
        rc = WE_INVALID;
        goto fail;
    }
    if ((rc = wop_new(c, p->upstream, p->repo, p->tag, &op)))
        goto fail;
    m = calloc(1, sizeof *m);
    if (!m) {
        rc = -ENOMEM;
        goto fail;
    }
    m->bytes = malloc(p->len ? p->len : 1);
    if (!m->bytes) {
        rc = -ENOMEM;
        goto fail;
    }
    if (p->len)
        memcpy(m->bytes, p->bytes, p->len);
    m->len = p->len;
    m->c = c;
    m->seq = c->tmp_seq++;
    op->what = WOP_CONTENT | (p->repo ? WOP_REPO : 0) | (p->tag ? WOP_TAG : 0);
    op->kind = CACHE_MANIFEST;
    op->size = p->len;
    snprintf(op->digest, sizeof op->digest, "%s", p->digest);
    snprintf(op->media_type, sizeof op->media_type, "%s", p->media_type);
    pp = calloc(1, sizeof *pp);
    if (!pp) {
        rc = -ENOMEM;
        goto fail;
    }
    pp->c = c;
    pp->cb = cb;
    pp->arg = arg;
    pp->size = p->len;
    snprintf(pp->digest, sizeof pp->digest, "%s", p->digest);
    snprintf(pp->media_type, sizeof pp->media_type, "%s", p->media_type);
    op->cb = pending_done;
    op->arg = pp;
    pp->op = op;
    m->op = op;
    if ((rc = uv_queue_work(c->loop, &m->work, mput_work, mput_done)))
        goto fail;
    c->live_puts++;
    pp->next = c->pending;
    c->pending = pp;
    /* The bytes are verified (by the caller, and again before publishing): readers may have
     * them from memory before the file lands. */
    hot_put(c->hot, p->digest, p->bytes, p->len);
    return 0;
fail:
    if (m)
        free(m->bytes);
    free(m);
    free(op);
    free(pp);
    return rc;
}
