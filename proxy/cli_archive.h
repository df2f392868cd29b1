/** What winch export and winch import share (cli_archive.c): the OCI image layout's fixed
 * names, gzip as a child process for .tar.gz archives, and whole writes. Internal to proxy/.
 *
 * Compression is gzip(1), spawned: the archive streams through a pipe, so winch links no
 * compression library for two CLI commands, and gzip is on every Debian system (Essential). */
#ifndef WINCH_PROXY_CLI_ARCHIVE_H
#define WINCH_PROXY_CLI_ARCHIVE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* The annotations that name an image in index.json: the OCI one (a full reference here,
 * which skopeo's oci-archive:FILE:REF matches) and containerd's (what docker load reads). */
#define ARCHIVE_REF_NAME "org.opencontainers.image.ref.name"
#define ARCHIVE_IMAGE_NAME "io.containerd.image.name"

/** Starts `gzip -c -n` writing its output to out_fd (borrowed); *in_fd (owned by the caller,
 * close it to end the stream) is where the uncompressed bytes go. Returns 0 or -errno. */
int archive_gzip(int out_fd, int *in_fd, pid_t *pid);
/** Starts `gzip -dc` reading in_fd (borrowed); *out_fd (owned by the caller) yields the
 * uncompressed bytes. Returns 0 or -errno. */
int archive_gunzip(int in_fd, int *out_fd, pid_t *pid);
/** Waits for a gzip started above: 0 when it exited with status 0, else WE_PROTO (its message
 * went to stderr). A pid <= 0 is 0. */
int archive_wait(pid_t pid);
/** Kills and reaps a gzip started above (on an error path); pid <= 0 is fine. */
void archive_kill(pid_t pid);

/** write(2) of all len bytes (EINTR retried). Returns 0 or -errno. */
int archive_write_all(int fd, const void *buf, size_t len);

/** True when the file starts with gzip's magic bytes. */
bool archive_is_gzip(int fd);

#endif
