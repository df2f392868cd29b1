/** tar archives as OCI image layouts travel in them (winch export and import): a writer of
 * POSIX ustar entries (a pax header carries a name over 100 bytes or a size of 8 GiB or more)
 * and a streaming reader of what GNU tar, Go's archive/tar and Python's tarfile write (ustar,
 * pax local and global headers, GNU long names, base-256 sizes). Pure: the caller moves the
 * bytes (tar_write_fn, tar_io_t), so an archive can be a file, a pipe from gzip or memory.
 *
 * The reader trusts nothing: every header's checksum is checked, sizes are bounded, a pax or
 * GNU long-name record is at most TAR_META_MAX bytes, names at most TAR_NAME_MAX, and an archive
 * that ends without its end-of-archive block is an error, never a short archive taken as whole.
 * Names are returned as written (a leading "./" removed) and never touch the filesystem here. */
#ifndef WINCH_COMMON_TAR_H
#define WINCH_COMMON_TAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define TAR_BLOCK 512
#define TAR_NAME_MAX 4096
/* Largest pax extended header or GNU long name accepted. */
#define TAR_META_MAX 65536

/* ---- Writing ------------------------------------------------------------------------------ */

/** Sink of the writer: writes all len bytes or fails. Returns 0 or -errno. */
typedef int (*tar_write_fn)(void *arg, const void *data, size_t len);

/** Writes the header of a regular file of size bytes (or of a directory when dir; a
 * directory's name should end in '/'), mode 0644 (0755), owner 0:0, mtime 0, so the same
 * content makes the same archive. name is 1..TAR_NAME_MAX bytes without NUL. The caller then
 * writes exactly size bytes and tar_put_pad. Returns 0, WE_INVALID or the sink's error. */
int tar_put_header(tar_write_fn w, void *arg, const char *name, uint64_t size, bool dir);
/** Writes the zeros that pad an entry of size bytes to the next block. */
int tar_put_pad(tar_write_fn w, void *arg, uint64_t size);
/** Writes the end of the archive (two zero blocks). */
int tar_put_end(tar_write_fn w, void *arg);

/* ---- Reading ------------------------------------------------------------------------------ */

/** Source of the reader. read returns the bytes read (> 0), 0 at the end of the input, or
 * -errno. skip (may be NULL: then bytes are read and dropped) moves n bytes ahead in a seekable
 * input: 0 or -errno. */
typedef struct tar_io {
    ssize_t (*read)(void *arg, void *buf, size_t len);
    int (*skip)(void *arg, uint64_t n);
    void *arg;
} tar_io_t;

enum tar_type {
    TAR_FILE = 1,  /* a regular file ('0', '\0', '7') */
    TAR_DIR = 2,   /* a directory */
    TAR_OTHER = 3, /* links, devices, fifos: no data for an image layout */
};

typedef struct tar_entry {
    const char *name; /* borrowed until the next tar_next; leading "./" removed */
    uint64_t size;    /* data bytes that follow (0 but for regular files) */
    enum tar_type type;
} tar_entry_t;

typedef struct tar_reader tar_reader_t;

/** A reader over io (copied; its arg borrowed). *out owned by the caller (tar_reader_free).
 * Returns 0 or -ENOMEM. */
int tar_reader_new(tar_reader_t **out, const tar_io_t *io);
/** Moves to the next entry, skipping what is left of the current one. Returns 1 with *e filled,
 * 0 at the end-of-archive block, WE_INVALID for a malformed header (a bad checksum, a bad
 * number, a pax record that does not parse, a name too long), WE_TOOBIG for metadata over its
 * bound, WE_SHORT when the input ends before the end-of-archive block, or the source's -errno.
 * After an error the reader is stuck at that error. */
int tar_next(tar_reader_t *t, tar_entry_t *e);
/** Reads up to len bytes of the current entry's data. Returns the bytes read, 0 at the end of
 * the entry, WE_SHORT when the input ends inside it, or the source's -errno. */
ssize_t tar_read(tar_reader_t *t, void *buf, size_t len);
/** Bytes of the current entry not read yet. */
uint64_t tar_left(const tar_reader_t *t);
/** Frees the reader; NULL is fine. */
void tar_reader_free(tar_reader_t *t);

#endif
