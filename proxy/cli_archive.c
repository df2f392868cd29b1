/* gzip as a child process and whole writes, for winch export and import (cli_archive.h). */
#include "proxy/cli_archive.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/err.h"

extern char **environ;

/* pipe2 is a GNU extension: a CLI has no other thread to race the fcntl. */
static int cloexec_pipe(int p[2])
{
    if (pipe(p) < 0)
        return -errno;
    fcntl(p[0], F_SETFD, FD_CLOEXEC);
    fcntl(p[1], F_SETFD, FD_CLOEXEC);
    return 0;
}

/* Runs argv with child_in as its stdin and child_out as its stdout. */
static int spawn(char *const argv[], int child_in, int child_out, pid_t *pid)
{
    posix_spawn_file_actions_t fa;
    int rc = posix_spawn_file_actions_init(&fa);
    if (rc)
        return -rc;
    if ((rc = posix_spawn_file_actions_adddup2(&fa, child_in, 0)) == 0)
        rc = posix_spawn_file_actions_adddup2(&fa, child_out, 1);
    if (rc == 0)
        rc = posix_spawnp(pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    return -rc;
}

int archive_gzip(int out_fd, int *in_fd, pid_t *pid)
{
    static char *const argv[] = {"gzip", "-c", "-n", NULL};
    int p[2];
    int rc = cloexec_pipe(p);
    if (rc)
        return rc;
    rc = spawn(argv, p[0], out_fd, pid);
    close(p[0]);
    if (rc) {
        close(p[1]);
        return rc;
    }
    *in_fd = p[1];
    return 0;
}

int archive_gunzip(int in_fd, int *out_fd, pid_t *pid)
{
    static char *const argv[] = {"gzip", "-dc", NULL};
    int p[2];
    int rc = cloexec_pipe(p);
    if (rc)
        return rc;
    rc = spawn(argv, in_fd, p[1], pid);
    close(p[1]);
    if (rc) {
        close(p[0]);
        return rc;
    }
    *out_fd = p[0];
    return 0;
}

int archive_wait(pid_t pid)
{
    int st;
    if (pid <= 0)
        return 0;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -errno;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : WE_PROTO;
}

void archive_kill(pid_t pid)
{
    if (pid <= 0)
        return;
    kill(pid, SIGTERM);
    archive_wait(pid);
}

int archive_write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

bool archive_is_gzip(int fd)
{
    unsigned char m[2];
    return pread(fd, m, 2, 0) == 2 && m[0] == 0x1f && m[1] == 0x8b;
}
