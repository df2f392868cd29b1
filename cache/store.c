/* The content store on disk: directory layout, the lock, temp files, publishing, the startup
 * sweep and opening published content. It knows nothing of the index: the callers (fill.c,
 * manifests.c) publish first and index afterwards.
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
#include <sys/statvfs.h>
#include <unistd.h>

#include "cache/internal.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

/* ---- Paths ----------------------------------------------------------------------------------- */

int store_digest_parse(const char *digest, enum ref_alg *alg)
{
    size_t n = strnlen(digest, REF_DIGEST_MAX + 1);
    if (n > REF_DIGEST_MAX)
        return WE_INVALID;
    return ref_digest_parse(digest, n, alg);
}

/* Validates digest and returns its algorithm and the hex part. */
static int digest_split(const char *digest, enum ref_alg *alg, const char **hex)
{
    int rc = store_digest_parse(digest, alg);
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

/* ---- File helpers ---------------------------------------------------------------------------- */

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

int store_splice_all(const cache_t *c, int pipe_r, int fd, size_t len, uint64_t off)
{
    while (len > 0) {
        ssize_t n = c->io.splice(pipe_r, fd, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        /* The pipe held len bytes when the job started: running dry is a bug, not a wait. */
        if (n == 0)
            return -EIO;
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

/* ---- Open and close: layout, lock, sweep ----------------------------------------------------- */

/* Removes every entry of tmp/ (or trash/): at open no fill is running, so all of them are
 * leftovers of a previous process (trash: files a removal had taken out of blobs/). */
static int sweep_tmp(const cache_t *c, const char *sub)
{
    char path[CACHE_PATH_MAX];
    int rc = path_printf(path, sizeof path, "%s/%s", c->dir, sub);
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

/* A tool beside a server: the cache must exist, and the lock is only taken when free. */
static int open_shared(cache_t *c)
{
    char path[CACHE_PATH_MAX];
    struct stat st;
    int rc;
    if ((rc = path_printf(path, sizeof path, "%s/index/data.mdb", c->dir)))
        return rc;
    if (stat(path, &st) < 0) {
        rc = -errno;
        LOG_ERROR("cache: no cache at %s (%s)", c->dir, err_str(rc));
        return rc;
    }
    if ((rc = path_printf(path, sizeof path, "%s/lock", c->dir)))
        return rc;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    /* A tool's temp files (import) must never collide with a server's: its sequence starts
     * in a range of its own. */
    c->tmp_seq = (uint64_t)getpid() << 32;
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
        c->lock_fd = fd;
        return 0;
    }
    rc = errno == EWOULDBLOCK ? 0 : -errno;
    close(fd);
    c->server_running = rc == 0;
    return rc;
}

int store_open(cache_t *c)
{
    static const char *const subdirs[] = {"index",        "tmp",          "trash",
                                          "blobs/sha256", "blobs/sha512", "quarantine"};
    char path[CACHE_PATH_MAX];
    int rc, fd = -1;

    if (c->shared)
        return open_shared(c);
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
    if ((rc = sweep_tmp(c, "tmp")) || (rc = sweep_tmp(c, "trash")))
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

void store_close(cache_t *c)
{
    if (c->lock_fd >= 0)
        close(c->lock_fd);
    c->lock_fd = -1;
}

/* ---- Reads of published content -------------------------------------------------------------- */

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

/* ---- Removal: trash and the fills of other processes ------------------------------------------ */

int store_trash(cache_t *c, const char *digest, char **trash_path)
{
    char from[CACHE_PATH_MAX], to[CACHE_PATH_MAX];
    enum ref_alg alg;
    const char *hex;
    int rc = digest_split(digest, &alg, &hex);
    if (rc || (rc = store_content_path(c, digest, from, sizeof from)))
        return rc;
    /* The sequence keeps two removals of one digest (removed, refetched, removed) apart; a
     * tool's pid keeps it apart from a server's. */
    if ((rc = path_printf(to, sizeof to, "%s/trash/%d.%" PRIu64 ".%s", c->dir, (int)getpid(),
                          c->trash_seq++, hex)))
        return rc;
    if (rename(from, to) < 0) {
        rc = -errno;
        if (rc == -ENOENT) {
            /* An older cache without trash/: make it, try once more. */
            char dir[CACHE_PATH_MAX];
            if (path_printf(dir, sizeof dir, "%s/trash", c->dir) == 0 && make_dir(dir, NULL) == 0 &&
                rename(from, to) == 0)
                rc = 0;
        }
        if (rc)
            return rc;
    }
    *trash_path = strdup(to);
    if (!*trash_path) {
        unlink(to);
        return -ENOMEM;
    }
    return 0;
}

int store_tmp_hexes(const cache_t *c, char ***hexes, size_t *n)
{
    char path[CACHE_PATH_MAX];
    char **list = NULL;
    size_t cnt = 0, cap = 0;
    *hexes = NULL;
    *n = 0;
    int rc = path_printf(path, sizeof path, "%s/tmp", c->dir);
    if (rc)
        return rc;
    DIR *d = opendir(path);
    if (!d)
        return -errno;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *dot = strchr(e->d_name, '.');
        const char *part = dot ? strstr(dot + 1, ".part") : NULL;
        if (!dot || !part || part == dot + 1)
            continue;
        if (cnt == cap) {
            size_t nc = cap ? cap * 2 : 16;
            char **nl = realloc(list, nc * sizeof *nl);
            if (!nl)
                break;
            list = nl;
            cap = nc;
        }
        list[cnt] = strndup(dot + 1, (size_t)(part - dot - 1));
        if (list[cnt])
            cnt++;
    }
    closedir(d);
    *hexes = list;
    *n = cnt;
    return 0;
}

int cache_space_free(const cache_t *c, uint64_t *bytes)
{
    struct statvfs v;
    if (statvfs(c->dir, &v) < 0)
        return -errno;
    *bytes = (uint64_t)v.f_bavail * (uint64_t)v.f_frsize;
    return 0;
}
