/* The command-line documentation (usage.h): the table, then its three renderings (the
 * overview, one command's help, the roff of winch(1)). */
#include "proxy/usage.h"

#include <stdbool.h>
#include <string.h>

#include "common/util.h"

/* ---- Options ------------------------------------------------------------------------------ */

static const usage_opt_t o_config = {
    "--config", "FILE",
    "The JSON configuration file (every field is documented in README.md); the cache "
    "commands find the cache directory in it."};
static const usage_opt_t o_cache_dir = {"--cache-dir", "DIR",
                                        "The cache directory (overrides the file's `cache_dir`)."};
static const usage_opt_t o_json = {"--json", NULL, "Print JSON instead of a table."};
static const usage_opt_t o_listen = {
    "--listen", "HOST:PORT",
    "The plain HTTP listener (default 0.0.0.0:5000); HOST is an IP literal, port 0 picks a "
    "free one, \"\" turns it off."};
static const usage_opt_t o_upstream = {
    "--upstream", "NAME=URL",
    "An upstream registry, repeatable, e.g. `docker.io=https://registry-1.docker.io`; the "
    "first is the default, and the flags replace the file's list."};
static const usage_opt_t o_log_level = {"--log-level", "LEVEL",
                                        "`error`, `warn`, `info` (default) or `debug`."};
static const usage_opt_t o_tls_listen = {"--tls-listen", "HOST:PORT",
                                         "A TLS listener, with --tls-cert and --tls-key."};
static const usage_opt_t o_tls_cert = {"--tls-cert", "FILE", "The TLS certificate chain (PEM)."};
static const usage_opt_t o_tls_key = {"--tls-key", "FILE", "The TLS private key (PEM)."};
static const usage_opt_t o_version = {"--version, -V", NULL,
                                      "Print the version and the git commit, and exit."};
static const usage_opt_t o_filter = {
    "--filter", "dangling=true",
    "Only the untagged manifests no index references (`dangling=false`: everything)."};
static const usage_opt_t o_dry_run = {"--dry-run, -n", NULL,
                                      "Print what would be removed; remove nothing."};
static const usage_opt_t o_unused_for = {
    "--unused-for", "DURATION",
    "Also remove tags and content not pulled for DURATION (`30d`, `12h`, `90m`)."};
static const usage_opt_t o_platform = {
    "--platform", "OS/ARCH[/VARIANT]|all",
    "For an index, the platforms to pull (repeatable; `all` for every one; default "
    "linux/amd64)."};
static const usage_opt_t o_warm_server = {
    "--server", "URL",
    "Pull through the winch at URL (http or https); default: the one serving this cache, or a "
    "winch of warm's own."};
static const usage_opt_t o_output = {
    "--output, -o", "FILE", "The archive to write (FILE.tar, or FILE.tar.gz through gzip)."};
static const usage_opt_t o_pin_server = {
    "--server", "HOST:PORT",
    "Resolve the tag through the winch at HOST:PORT (default: the configured listener when a "
    "winch serves the cache, else the cache's last known digest)."};
static const usage_opt_t o_admin = {
    "--admin", "HOST:PORT",
    "The admin listener to ask (default: `admin_listen` from the configuration)."};

#define OPTS(...) ((const usage_opt_t *const[]){__VA_ARGS__, NULL})

/* ---- Commands ------------------------------------------------------------------------------ */

static const usage_cmd_t commands[] = {
    {"serve",
     "[--config FILE] [--listen HOST:PORT] [--cache-dir DIR] [--upstream NAME=URL]... "
     "[--log-level LEVEL] [--tls-listen HOST:PORT --tls-cert FILE --tls-key FILE]",
     "run the mirror",
     "Runs the pull-through cache in the foreground until SIGTERM or SIGINT; SIGHUP reloads "
     "the configuration. Flags override the configuration file. With no configuration winch "
     "is a Docker Hub mirror on 0.0.0.0:5000 caching in ./winch-cache.\n\n"
     "The first upstream is the default; clients reach the others with `?ns=NAME` or a "
     "`/v2/NAME/...` path prefix.",
     OPTS(&o_config, &o_listen, &o_cache_dir, &o_upstream, &o_log_level, &o_tls_listen, &o_tls_cert,
          &o_tls_key, &o_version)},
    {"status", "[--config FILE | --admin HOST:PORT] [--json]",
     "ask a running winch how it is doing",
     "Asks the admin listener of a running winch for its status (`GET /_winch/status.json`): "
     "uptime, requests and hit ratio, bytes served from the cache and fetched upstream, fills "
     "in progress, each upstream's health and rate-limit remaining, the cache size against its "
     "bound and the images served the most bytes. Fails (exit 1) when no admin listener is "
     "configured or it does not answer within 5 seconds.",
     OPTS(&o_config, &o_admin, &o_json)},
    {"check-config", "[--config FILE] [serve's options]", "validate a configuration",
     "Loads the configuration as `winch serve` does at start (the file, then the flags; every "
     "option of serve is taken) without opening the cache or a socket, and prints the effective "
     "configuration as JSON, passwords redacted. Exit 0 when valid, 2 when not.",
     OPTS(&o_config)},
    {"ls", "[REPOSITORY] [--filter dangling=true] [--config FILE | --cache-dir DIR] [--json]",
     "list cached images",
     "Lists the cached images, one line per tag: upstream, repository, tag, digest, "
     "platforms, size, last pull, pulls, pin.",
     OPTS(&o_filter, &o_config, &o_cache_dir, &o_json)},
    {"df", "[--config FILE | --cache-dir DIR] [--json]", "show the cache's disk use",
     "Shows the content on disk, what is referenced and reclaimable, and the retention bound.",
     OPTS(&o_config, &o_cache_dir, &o_json)},
    {"inspect", "REF... [--config FILE | --cache-dir DIR]", "show what the cache holds of images",
     "Prints, as JSON, the manifest or index of each image, its platforms, layers and whether "
     "each is cached, and the paths of the cached files.",
     OPTS(&o_config, &o_cache_dir)},
    {"rm", "REF... [--config FILE | --cache-dir DIR] [--json]", "remove images from the cache",
     "Removes tags (REPOSITORY:TAG) or manifests (REPOSITORY@DIGEST); blobs go only when "
     "nothing that stays references them.",
     OPTS(&o_config, &o_cache_dir, &o_json)},
    {"prune", "[--dry-run] [--unused-for DURATION] [--config FILE | --cache-dir DIR] [--json]",
     "remove unreferenced content",
     "Removes untagged manifests, unreferenced blobs and tags whose manifest is gone; "
     "respects `retention.protect` and pins.",
     OPTS(&o_dry_run, &o_unused_for, &o_config, &o_cache_dir, &o_json)},
    {"verify", "[--config FILE | --cache-dir DIR] [--json]", "rehash the cache",
     "Rehashes every cached file and checks it against its digest and the index; corrupt "
     "content is quarantined. Exit 1 when something was found.",
     OPTS(&o_config, &o_cache_dir, &o_json)},
    {"warm",
     "REF... [--platform OS/ARCH[/VARIANT]|all]... [--server URL] [--config FILE | "
     "--cache-dir DIR] [--json]",
     "pull images into the cache ahead of time",
     "Pulls images through a winch as a client would, so they are cached before clients need "
     "them; exit 0 only when everything pulled is in the cache.",
     OPTS(&o_platform, &o_warm_server, &o_config, &o_cache_dir, &o_json)},
    {"export", "REF... -o FILE.tar|FILE.tar.gz [--config FILE | --cache-dir DIR] [--json]",
     "write cached images to an archive",
     "Writes cached images to one archive that is both an OCI image layout and a "
     "docker-archive, for an air-gapped site.",
     OPTS(&o_output, &o_config, &o_cache_dir, &o_json)},
    {"import", "FILE.tar|FILE.tar.gz [--config FILE | --cache-dir DIR] [--json]",
     "load an archive into the cache",
     "Loads an OCI layout archive into the cache, verifying every digest before any tag "
     "appears.",
     OPTS(&o_config, &o_cache_dir, &o_json)},
    {"pin", "[--server HOST:PORT] [--config FILE | --cache-dir DIR] REF [DIGEST]",
     "pin a tag to a digest",
     "Pins a tag to a digest (by default what the tag resolves to now): winch then serves that "
     "digest for the tag until it is unpinned, from the next request on.",
     OPTS(&o_pin_server, &o_config, &o_cache_dir)},
    {"unpin", "[--config FILE | --cache-dir DIR] REF", "remove a pin", "Removes a stored pin.",
     OPTS(&o_config, &o_cache_dir)},
    {"pins", "[--config FILE | --cache-dir DIR] [--json]", "list the pins",
     "Lists the pins: the stored ones and the configuration's.",
     OPTS(&o_config, &o_cache_dir, &o_json)},
    {"policy", "explain REF... [--config FILE | --cache-dir DIR] [--json]",
     "say which policy rule decides",
     "Says which policy rule decides each reference, and why; exit 1 when one is refused.",
     OPTS(&o_config, &o_cache_dir, &o_json)},
    {"version", "| --version | -V", "print the version",
     "Prints the version and the git commit it was built from.", OPTS(NULL)},
    {"help", "[COMMAND]", "describe a command",
     "Prints the overview, or a command's synopsis, description and options (as "
     "`winch COMMAND --help` does).",
     OPTS(NULL)},
};

const usage_cmd_t *usage_find(const char *name)
{
    if (name && strcmp(name, "explain") == 0)
        name = "policy";
    for (size_t i = 0; name && i < ARRAY_SIZE(commands); i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

const usage_cmd_t *const *usage_commands(size_t *n)
{
    static const usage_cmd_t *list[ARRAY_SIZE(commands)];
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
        list[i] = &commands[i];
    *n = ARRAY_SIZE(commands);
    return list;
}

/* ---- The manual's prose ------------------------------------------------------------------ */

typedef struct item {
    const char *tag, *text;
} item_t;

static const char description[] =
    "`winch` answers the OCI distribution (Docker Registry v2) pull API. On a miss it fetches "
    "from the upstream registry, streams each blob to every waiting client while writing it "
    "once to disk, verifies its digest and indexes it; later pulls are served from disk. "
    "Docker, containerd, podman, CRI-O and skopeo use it as a registry mirror. It enforces "
    "pull-time policy, keeps the cache within its bounds, resolves multi-arch images for "
    "configured platforms, and reports metrics, health and a status page.\n\n"
    "The cache commands (ls, df, inspect, rm, prune, verify, warm, export, import, pin, unpin, "
    "pins) work on a stopped cache or beside a running `winch serve`; they find the cache with "
    "--cache-dir or --config.";

static const char configuration[] =
    "A JSON file given with --config; flags override its fields. README.md documents every "
    "field. `winch check-config --config FILE` validates one. With `admin_listen` set, a "
    "second listener serves /metrics, /healthz, /readyz, the status page /_winch/ and "
    "/_winch/status.json (what `winch status` reads).";

static const item_t signals[] = {
    {"SIGTERM, SIGINT", "Stop accepting, finish the exchanges running, close the cache, exit 0."},
    {"SIGHUP",
     "Reload the configuration file: what can change in place does; the rest is logged as "
     "needing a restart and keeps its running value. A configuration that does not load is "
     "refused and the running one stays."},
};

static const item_t files[] = {
    {"*/etc/winch/config.json*", "The configuration the packaged systemd unit runs with."},
    {"*cache_dir*/blobs/*ALG*/*XX*/*HEX*", "A cached blob or manifest, named by its digest."},
    {"*cache_dir*/index/", "The LMDB index: tags, content, references, owners, pins."},
    {"*cache_dir*/tmp/", "Fills in progress; emptied at start."},
};

static const char exit_status[] =
    "0 on success; 1 when the command failed (the reason is printed); 2 for a usage or "
    "configuration error.";

static const item_t examples[] = {
    {"`winch serve --listen 127.0.0.1:5000 --upstream docker.io=https://registry-1.docker.io`",
     "A Docker Hub mirror on loopback."},
    {"`winch warm --config /etc/winch/config.json alpine:3.19 --platform all`",
     "Caches every platform of an image before clients ask for it."},
    {"`winch status --admin 127.0.0.1:5001`", "What the running winch is doing."},
    {"`winch export lab/app:v1 -o app.tar` ; `winch import app.tar`",
     "Carries images to an air-gapped mirror."},
};

static const char see_also[] = "docker(1), skopeo(1), podman(1), containerd(8); README.md and "
                               "docs/ in the winch sources.";

/* ---- Plain text ------------------------------------------------------------------------------ */

/* Prints text wrapped at 79 columns, every line indented by indent; the markers ` and * are
 * dropped. The first line starts at column *col (text already on it). */
static void wrap(FILE *out, const char *text, int indent, int col)
{
    const char *p = text;
    bool first = true;
    while (*p) {
        if (*p == ' ') {
            p++;
            continue;
        }
        size_t n = strcspn(p, " ");
        int w = 0;
        for (size_t i = 0; i < n; i++)
            w += p[i] != '`' && p[i] != '*';
        if (!first && col + 1 + w > 79) {
            fprintf(out, "\n%*s", indent, "");
            col = indent;
        } else if (!first) {
            fputc(' ', out);
            col++;
        }
        for (size_t i = 0; i < n; i++)
            if (p[i] != '`' && p[i] != '*')
                fputc(p[i], out);
        col += w;
        first = false;
        p += n;
    }
}

/* Paragraphs ("\n\n"-separated) wrapped and indented, a blank line between them. */
static void paragraphs(FILE *out, const char *text, int indent)
{
    while (*text) {
        size_t n = strcspn(text, "\n");
        char para[2048];
        snprintf(para, sizeof para, "%.*s", (int)n, text);
        fprintf(out, "%*s", indent, "");
        wrap(out, para, indent, indent);
        fputc('\n', out);
        text += n;
        while (*text == '\n')
            text++;
        if (*text)
            fputc('\n', out);
    }
}

static void synopsis_line(FILE *out, const char *lead, const usage_cmd_t *c)
{
    char line[1024];
    snprintf(line, sizeof line, "%s %s", c->name, c->synopsis);
    fprintf(out, "%swinch ", lead);
    int indent = (int)strlen(lead) + 6 + (int)strlen(c->name) + 1;
    wrap(out, line, indent, indent - (int)strlen(c->name) - 1);
    fputc('\n', out);
}

void usage_print_all(FILE *out)
{
    fputs("usage: winch COMMAND [OPTIONS] [ARGUMENTS]\n\n", out);
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++) {
        char lead[64];
        snprintf(lead, sizeof lead, "  %-13s", commands[i].name);
        fprintf(out, "%s%s\n", lead, commands[i].brief);
    }
    fputs("\n", out);
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
        synopsis_line(out, "  ", &commands[i]);
    fputs("\nWith no configuration winch serve is a Docker Hub mirror on 0.0.0.0:5000, caching\n"
          "in ./winch-cache. winch help COMMAND (or winch COMMAND --help) describes a command\n"
          "and its options; winch(1) and README.md document everything.\n",
          out);
}

void usage_print_cmd(FILE *out, const char *name)
{
    const usage_cmd_t *c = usage_find(name);
    if (!c) {
        usage_print_all(out);
        return;
    }
    synopsis_line(out, "usage: ", c);
    fputc('\n', out);
    paragraphs(out, c->text, 0);
    if (!c->opts[0])
        return;
    fputs("\noptions:\n", out);
    for (const usage_opt_t *const *o = c->opts; *o; o++) {
        char head[96];
        snprintf(head, sizeof head, "  %s%s%s", (*o)->flag, (*o)->arg ? " " : "",
                 (*o)->arg ? (*o)->arg : "");
        int col = (int)strlen(head);
        fputs(head, out);
        if (col > 28) {
            fprintf(out, "\n%*s", 28, "");
            col = 28;
        } else {
            fprintf(out, "%*s", 28 - col, "");
            col = 28;
        }
        wrap(out, (*o)->text, 28, col);
        fputc('\n', out);
    }
}

void usage_error(const char *name)
{
    const usage_cmd_t *c = usage_find(name);
    if (!c)
        return;
    synopsis_line(stderr, "usage: ", c);
    fprintf(stderr, "(winch %s --help for more)\n", c->name);
}

/* ---- roff ------------------------------------------------------------------------------------ */

/* One character of text as roff. */
static void roff_char(FILE *out, char ch)
{
    if (ch == '-')
        fputs("\\-", out);
    else if (ch == '\\')
        fputs("\\e", out);
    else
        fputc(ch, out);
}

/* Text with `bold` and *italic* spans, on the current output line (the caller starts lines). */
static void roff_text(FILE *out, const char *s, size_t n)
{
    const char *font = NULL;
    if (n && (s[0] == '.' || s[0] == '\''))
        fputs("\\&", out);
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == '`' || ch == '*') {
            const char *want = ch == '`' ? "\\fB" : "\\fI";
            fputs(font ? "\\fR" : want, out);
            font = font ? NULL : want;
            continue;
        }
        if (ch == '\n') {
            fputc(' ', out);
            continue;
        }
        roff_char(out, ch);
    }
    if (font)
        fputs("\\fR", out);
}

static void roff_paragraphs(FILE *out, const char *text, const char *sep)
{
    bool first = true;
    while (*text) {
        size_t n = strcspn(text, "\n");
        if (!first)
            fprintf(out, "%s\n", sep);
        roff_text(out, text, n);
        fputc('\n', out);
        first = false;
        text += n;
        while (*text == '\n')
            text++;
    }
}

/* A synopsis: options and lower-case words bold, upper-case words (values) italic, the
 * brackets, bars and ellipses roman. */
static void roff_synopsis(FILE *out, const char *s)
{
    while (*s) {
        size_t punct = strspn(s, " []|");
        for (size_t i = 0; i < punct; i++)
            fputc(s[i], out);
        s += punct;
        size_t n = strcspn(s, " []|");
        if (n == 0)
            continue;
        size_t dots = n >= 3 && strncmp(s + n - 3, "...", 3) == 0 ? 3 : 0;
        bool value = s[0] >= 'A' && s[0] <= 'Z';
        fputs(value ? "\\fI" : "\\fB", out);
        for (size_t i = 0; i < n - dots; i++)
            roff_char(out, s[i]);
        fputs(dots ? "\\fR..." : "\\fR", out);
        s += n;
    }
}

static void roff_items(FILE *out, const item_t *items, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        fputs(".TP\n", out);
        roff_text(out, items[i].tag, strlen(items[i].tag));
        fputc('\n', out);
        roff_text(out, items[i].text, strlen(items[i].text));
        fputc('\n', out);
    }
}

static void roff_option(FILE *out, const usage_opt_t *o)
{
    fputs(".TP\n", out);
    roff_synopsis(out, o->flag);
    if (o->arg) {
        fputc(' ', out);
        roff_synopsis(out, o->arg);
    }
    fputc('\n', out);
    roff_text(out, o->text, strlen(o->text));
    fputc('\n', out);
}

static bool is_common(const usage_opt_t *o)
{
    return o == &o_config || o == &o_cache_dir || o == &o_json;
}

static void roff_command(FILE *out, const usage_cmd_t *c)
{
    fprintf(out, ".TP\n\\fB");
    for (const char *p = c->name; *p; p++)
        roff_char(out, *p);
    fputs("\\fR ", out);
    roff_synopsis(out, c->synopsis);
    fputc('\n', out);
    roff_paragraphs(out, c->text, ".IP");
    bool any = false;
    for (const usage_opt_t *const *o = c->opts; *o; o++) {
        if (is_common(*o))
            continue;
        if (!any)
            fputs(".RS\n", out);
        any = true;
        roff_option(out, *o);
    }
    if (any)
        fputs(".RE\n", out);
}

void usage_man(FILE *out, const char *version)
{
    fputs(".\\\" winch(1), generated by `winch --man` from proxy/usage.c: edit that, not this.\n"
          ".TH WINCH 1 \"\" \"winch ",
          out);
    fputs(version, out);
    fputs("\" \"User Commands\"\n"
          ".nh\n.ad l\n.SH NAME\n"
          "winch \\- pull\\-through caching proxy for container registries\n"
          ".SH SYNOPSIS\n",
          out);
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++) {
        fputs(i ? ".br\n\\fBwinch " : "\\fBwinch ", out);
        for (const char *p = commands[i].name; *p; p++)
            roff_char(out, *p);
        fputs("\\fR ", out);
        roff_synopsis(out, commands[i].synopsis);
        fputc('\n', out);
    }
    fputs(".SH DESCRIPTION\n", out);
    roff_paragraphs(out, description, ".PP");
    fputs(".SH COMMANDS\n", out);
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
        roff_command(out, &commands[i]);
    fputs(".SH OPTIONS\nShared by the commands whose synopsis names them:\n", out);
    roff_option(out, &o_config);
    roff_option(out, &o_cache_dir);
    roff_option(out, &o_json);
    fputs(".SH CONFIGURATION\n", out);
    roff_paragraphs(out, configuration, ".PP");
    fputs(".SH SIGNALS\n", out);
    roff_items(out, signals, ARRAY_SIZE(signals));
    fputs(".SH FILES\n", out);
    roff_items(out, files, ARRAY_SIZE(files));
    fputs(".SH EXIT STATUS\n", out);
    roff_paragraphs(out, exit_status, ".PP");
    fputs(".SH EXAMPLES\n", out);
    roff_items(out, examples, ARRAY_SIZE(examples));
    fputs(".SH SEE ALSO\n", out);
    roff_paragraphs(out, see_also, ".PP");
}
