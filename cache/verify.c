/* cache_verify: the index and the store agree, and every file hashes to its name.
 *
 *   scan (threadpool)  snapshots the content records (one short read transaction), then checks
 *                      each file: missing, wrong size, or (with rehash) wrong digest; then walks
 *                      blobs/ for files no record names (older than ORPHAN_AGE_MS: a fill that
 *                      has just published waits for its commit).
 *   fix (loop)         corrupt and missing entries leave the index in one write (entries
 *                      first, as always); then corrupt files move to quarantine/ (kept for a
 *                      human, never served again: nothing names them) and orphans to trash/
 *                      (unlinked on the threadpool), each after a last check on the loop that
 *                      the digest is not indexed or being filled now.
 * A later pull of a quarantined digest misses and refetches it. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache/internal.h"
#include "common/err.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "common/util.h"

#define ORPHAN_AGE_MS 60000
#define HASH_BUF (1u << 20)

typedef struct vprob {
    enum cache_verify_problem what;
    char digest[REF_DIGEST_MAX + 1];
    bool fixed;
    bool gone; /* the entry left the index while the scan ran (an eviction beside): no problem */
} vprob_t;

typedef struct vrec {
    char digest[REF_DIGEST_MAX + 1];
    uint64_t size;
} vrec_t;

struct verify_run {
    cache_t *c;
    cache_verify_opts_t o;
    cache_verify_cb cb;
    void *arg;
    uv_work_t work;
    int status;
    vrec_t *recs;
    size_t nrecs;
    vprob_t *probs;
    size_t nprobs, pcap;
    char **trash;
    size_t ntrash;
    cache_verify_result_t res;
};

static int add_prob(struct verify_run *v, enum cache_verify_problem what, const char *digest)
{
    if (v->nprobs == v->pcap) {
        size_t nc = v->pcap ? v->pcap * 2 : 16;
        vprob_t *np = realloc(v->probs, nc * sizeof *np);
        if (!np)
            return -ENOMEM;
        v->probs = np;
        v->pcap = nc;
    }
    vprob_t *p = &v->probs[v->nprobs++];
    memset(p, 0, sizeof *p);
    p->what = what;
    snprintf(p->digest, sizeof p->digest, "%s", digest);
    return 0;
}

static int snapshot(struct verify_run *v)
{
    cache_t *c = v->c;
    MDB_txn *t = NULL;
    MDB_cursor *cur = NULL;
    MDB_stat st;
    int rc = mdb_txn_begin(c->env, NULL, MDB_RDONLY, &t);
    if (rc)
        return WE_INDEX;
    if ((rc = mdb_stat(t, c->dbi_content, &st)) || (rc = mdb_cursor_open(t, c->dbi_content, &cur)))
        goto out;
    v->recs = calloc(st.ms_entries + 1, sizeof *v->recs);
    if (!v->recs) {
        rc = ENOMEM;
        goto out;
    }
    MDB_val k, val;
    for (rc = mdb_cursor_get(cur, &k, &val, MDB_FIRST); rc == 0 && v->nrecs < st.ms_entries;
         rc = mdb_cursor_get(cur, &k, &val, MDB_NEXT)) {
        cache_entry_t e;
        if (k.mv_size == 0 || k.mv_size > REF_DIGEST_MAX || index_content_decode(&val, &e))
            continue;
        memcpy(v->recs[v->nrecs].digest, k.mv_data, k.mv_size);
        v->recs[v->nrecs].digest[k.mv_size] = '\0';
        v->recs[v->nrecs++].size = e.size;
    }
    rc = rc == MDB_NOTFOUND ? 0 : rc;
out:
    if (cur)
        mdb_cursor_close(cur);
    mdb_txn_abort(t);
    return rc == 0 ? 0 : rc == ENOMEM ? -ENOMEM : WE_INDEX;
}

/* 0 when the file matches, or the problem. */
static int check_file(struct verify_run *v, const vrec_t *r, unsigned char *buf)
{
    char path[CACHE_PATH_MAX], got[REF_DIGEST_MAX + 1];
    struct stat st;
    enum ref_alg alg;
    if (store_content_path(v->c, r->digest, path, sizeof path) ||
        store_digest_parse(r->digest, &alg))
        return CACHE_VERIFY_CORRUPT;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? CACHE_VERIFY_MISSING : CACHE_VERIFY_CORRUPT;
    int rc = 0;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size != r->size) {
        rc = CACHE_VERIFY_CORRUPT;
    } else if (v->o.rehash) {
        digester_t *d;
        if (digester_new(&d, alg)) {
            close(fd);
            return 0;
        }
        uint64_t off = 0;
        for (;;) {
            ssize_t n = pread(fd, buf, HASH_BUF, (off_t)off);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                if (n < 0)
                    rc = CACHE_VERIFY_CORRUPT;
                break;
            }
            digester_update(d, buf, (size_t)n);
            off += (uint64_t)n;
        }
        if (rc == 0 && (digester_final(d, got) || strcmp(got, r->digest) != 0))
            rc = CACHE_VERIFY_CORRUPT;
        digester_free(d);
        v->res.bytes_hashed += off;
    }
    close(fd);
    return rc;
}

static int cmp_rec(const void *a, const void *b)
{
    return strcmp(((const vrec_t *)a)->digest, ((const vrec_t *)b)->digest);
}

/* Files under blobs/<alg>/<xx>/ that no record names. */
static void find_orphans(struct verify_run *v)
{
    static const char *const algs[] = {"sha256", "sha512"};
    char dir[CACHE_PATH_MAX], sub[CACHE_PATH_MAX + 300];
    int64_t now = time_wall_ms();
    qsort(v->recs, v->nrecs, sizeof *v->recs, cmp_rec);
    for (size_t a = 0; a < ARRAY_SIZE(algs); a++) {
        snprintf(dir, sizeof dir, "%s/blobs/%s", v->c->dir, algs[a]);
        DIR *d = opendir(dir);
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.')
                continue;
            snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name);
            DIR *s = opendir(sub);
            struct dirent *f;
            while (s && (f = readdir(s)) != NULL) {
                vrec_t key;
                struct stat st;
                if (f->d_name[0] == '.' ||
                    fstatat(dirfd(s), f->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                    continue;
                if (strlen(f->d_name) > REF_DIGEST_MAX - 8)
                    continue;
                snprintf(key.digest, sizeof key.digest, "%s:%.150s", algs[a], f->d_name);
                if (bsearch(&key, v->recs, v->nrecs, sizeof *v->recs, cmp_rec))
                    continue;
                if ((int64_t)st.st_mtime * 1000 > now - ORPHAN_AGE_MS)
                    continue;
                enum ref_alg alg;
                if (store_digest_parse(key.digest, &alg) || !S_ISREG(st.st_mode)) {
                    LOG_WARN("cache: verify: unexpected entry %s/%s left alone", sub, f->d_name);
                    continue;
                }
                add_prob(v, CACHE_VERIFY_ORPHAN, key.digest);
            }
            if (s)
                closedir(s);
        }
        if (d)
            closedir(d);
    }
}

static void scan_work(uv_work_t *w)
{
    struct verify_run *v = container_of(w, struct verify_run, work);
    int64_t t0 = time_mono_ms();
    unsigned char *buf = malloc(HASH_BUF);
    if (!buf || (v->status = snapshot(v)) < 0) {
        free(buf);
        if (!v->status)
            v->status = -ENOMEM;
        return;
    }
    for (size_t i = 0; i < v->nrecs; i++) {
        int p = check_file(v, &v->recs[i], buf);
        v->res.checked++;
        if (p && add_prob(v, (enum cache_verify_problem)p, v->recs[i].digest)) {
            v->status = -ENOMEM;
            break;
        }
    }
    free(buf);
    if (v->status == 0 && v->o.orphans)
        find_orphans(v);
    v->res.scan_ms = time_mono_ms() - t0;
}

/* ---- Fixing on the loop ------------------------------------------------------------------ */

static int apply_drop(cache_t *c, MDB_txn *t, const wop_t *op)
{
    struct verify_run *v = op->payload;
    for (size_t i = 0; i < v->nprobs; i++) {
        vprob_t *p = &v->probs[i];
        if (p->what == CACHE_VERIFY_ORPHAN || p->gone)
            continue;
        MDB_val k = {strlen(p->digest), (void *)p->digest};
        int rc = mdb_del(t, c->dbi_content, &k, NULL);
        if (rc == MDB_NOTFOUND) { /* evicted since the look on the loop: nothing disagrees */
            p->gone = true;
            continue;
        }
        if (rc == 0 && (rc = childplat_drop(c, t, p->digest)) == 0)
            rc = mdb_del(t, c->dbi_refs, &k, NULL);
        if (rc && rc != MDB_NOTFOUND)
            return rc;
    }
    return 0;
}

static void run_done(struct verify_run *v, int status)
{
    v->res.problems = 0;
    for (size_t i = 0; i < v->nprobs; i++) {
        if (v->probs[i].gone)
            continue;
        cache_verify_problem_t p = {v->probs[i].what, v->probs[i].digest, v->probs[i].fixed};
        v->res.problems++;
        if (v->o.on_problem)
            v->o.on_problem(v->o.arg, &p);
    }
    if (v->cb)
        v->cb(v->arg, status, &v->res);
    for (size_t i = 0; i < v->ntrash; i++)
        free(v->trash[i]);
    free(v->trash);
    free(v->recs);
    free(v->probs);
    free(v);
}

static void unlink_work(uv_work_t *w)
{
    struct verify_run *v = container_of(w, struct verify_run, work);
    for (size_t i = 0; i < v->ntrash; i++)
        unlink(v->trash[i]);
}

static void unlink_done(uv_work_t *w, int status)
{
    (void)status;
    run_done(container_of(w, struct verify_run, work), 0);
}

static int quarantine(cache_t *c, const char *digest)
{
    char from[CACHE_PATH_MAX], to[CACHE_PATH_MAX + 300], dir[CACHE_PATH_MAX];
    int rc = store_content_path(c, digest, from, sizeof from);
    if (rc)
        return rc;
    snprintf(dir, sizeof dir, "%s/quarantine", c->dir);
    mkdir(dir, 0755);
    const char *colon = strchr(digest, ':');
    snprintf(to, sizeof to, "%s/%.6s-%.150s.%d.%llu", dir, digest, colon + 1, (int)getpid(),
             (unsigned long long)c->trash_seq++);
    return rename(from, to) < 0 ? -errno : 0;
}

static void dropped(void *arg, int status)
{
    struct verify_run *v = arg;
    cache_t *c = v->c;
    if (status < 0) {
        run_done(v, status);
        return;
    }
    v->trash = calloc(v->nprobs + 1, sizeof *v->trash);
    for (size_t i = 0; i < v->nprobs; i++) {
        vprob_t *p = &v->probs[i];
        cache_entry_t e;
        if (p->gone)
            continue;
        if (p->what == CACHE_VERIFY_MISSING) {
            p->fixed = true;
            continue;
        }
        /* Filled or stored again in the meantime: the file is (about to be) the right one. */
        if (fill_in_progress(c, p->digest) || cache_lookup(c, p->digest, &e) == 0)
            continue;
        if (p->what == CACHE_VERIFY_CORRUPT) {
            p->fixed = quarantine(c, p->digest) == 0;
        } else if (v->trash) {
            char *path = NULL;
            if (store_trash(c, p->digest, &path) == 0) {
                v->trash[v->ntrash++] = path;
                p->fixed = true;
            }
        }
    }
    uv_queue_work(c->loop, &v->work, unlink_work, unlink_done);
}

static void scan_done(uv_work_t *w, int status)
{
    struct verify_run *v = container_of(w, struct verify_run, work);
    wop_t *op;
    if (status || v->status) {
        run_done(v, status ? status : v->status);
        return;
    }
    /* The scan read a snapshot: a record an eviction (a serving winch beside this one, or a gc)
     * has removed since, file first gone, is not a disagreement. */
    size_t left = 0;
    for (size_t i = 0; i < v->nprobs; i++) {
        cache_entry_t e;
        vprob_t *p = &v->probs[i];
        if (p->what != CACHE_VERIFY_ORPHAN && cache_lookup(v->c, p->digest, &e) != 0)
            p->gone = true;
        else
            left++;
    }
    if (!v->o.fix || left == 0 || wop_new(v->c, NULL, NULL, NULL, &op)) {
        run_done(v, 0);
        return;
    }
    op->what = WOP_CUSTOM;
    op->apply = apply_drop;
    op->payload = v;
    op->cb = dropped;
    op->arg = v;
    index_queue(v->c, op);
}

int cache_verify(cache_t *c, const cache_verify_opts_t *o, cache_verify_cb cb, void *arg)
{
    struct verify_run *v = calloc(1, sizeof *v);
    if (!v)
        return -ENOMEM;
    v->c = c;
    v->o = *o;
    v->cb = cb;
    v->arg = arg;
    uv_queue_work(c->loop, &v->work, scan_work, scan_done);
    return 0;
}
