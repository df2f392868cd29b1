/** The one source of winch's command-line documentation (usage.c): every command with its
 * synopsis, description and options, and the manual page's prose (signals, files, exit status,
 * examples). `winch --help`, `winch help CMD`, `winch CMD --help`, the usage line a command
 * prints on a bad argument and the roff of winch(1) (`winch --man`, run by the build to make
 * build/winch.1) are all printed from it, so they cannot drift apart. Internal to proxy/. */
#ifndef WINCH_PROXY_USAGE_H
#define WINCH_PROXY_USAGE_H

#include <stdio.h>

/** An option of a command. Text uses `backticks` for literal words (bold in the manual). */
typedef struct usage_opt {
    const char *flag; /* "--config", or "--dry-run, -n" */
    const char *arg;  /* "FILE", or NULL for a switch */
    const char *text;
} usage_opt_t;

/** A command. The synopsis follows "winch NAME "; in it an upper-case word is a value to give
 * (italic in the manual), a word starting with '-' or a lower-case one is typed as is (bold). */
typedef struct usage_cmd {
    const char *name;
    const char *synopsis;
    const char *brief;              /* one line, for the overview */
    const char *text;               /* paragraphs separated by "\n\n" */
    const usage_opt_t *const *opts; /* NULL-terminated */
} usage_cmd_t;

/** The command named name ("policy" for "policy explain"), or NULL. Static storage. */
const usage_cmd_t *usage_find(const char *name);

/** Every command, in the order of the overview; *n is set to their number. Static storage. */
const usage_cmd_t *const *usage_commands(size_t *n);

/** The overview, `winch --help`: every command's synopsis, then how to learn more. */
void usage_print_all(FILE *out);

/** One command's help: its synopsis, description and options. Unknown name: the overview. */
void usage_print_cmd(FILE *out, const char *name);

/** "usage: winch NAME SYNOPSIS" and a pointer to `winch NAME --help`, to stderr: what a
 * command prints for a bad argument before it returns 2. */
void usage_error(const char *name);

/** The manual page winch(1) in roff (man macros), for winch VERSION. */
void usage_man(FILE *out, const char *version);

#endif
