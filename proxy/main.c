/* winch: the command line. main() finds the command and hands it its arguments; each command
 * lives in a cli_*.c file of its own (cli_serve.c runs the mirror). */
#include <stdio.h>
#include <string.h>

#include "common/util.h"
#include "proxy/cli_commands.h"
#include "proxy/usage.h"

static int cli_print_version(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("winch %s (commit %s)\n", cli_version, cli_commit);
    return 0;
}

/* winch help [COMMAND]: the overview, or one command's help (usage.h). */
static int cli_help(int argc, char **argv)
{
    if (argc >= 2 && !usage_find(argv[1])) {
        fprintf(stderr, "winch help: unknown command \"%s\"\n", argv[1]);
        usage_print_all(stderr);
        return 2;
    }
    if (argc >= 2)
        usage_print_cmd(stdout, argv[1]);
    else
        usage_print_all(stdout);
    return 0;
}

/* winch --man: the manual page winch(1) in roff, which the build writes to build/winch.1 (not
 * in the overview: it is for the build, not for people). */
static int cli_man(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    usage_man(stdout, cli_version);
    return fflush(stdout) == 0 ? 0 : 1;
}

static const struct {
    const char *name;
    cli_command_fn run;
} commands[] = {
    {"serve", cli_serve},
    {"version", cli_print_version},
    {"--version", cli_print_version},
    {"-V", cli_print_version},
    {"check-config", cli_check_config},
    {"help", cli_help},
    {"--help", cli_help},
    {"-h", cli_help},
    {"--man", cli_man},
    {"status", cli_status},
    {"ls", cli_ls},
    {"df", cli_df},
    {"inspect", cli_inspect},
    {"rm", cli_rm},
    {"prune", cli_prune},
    {"verify", cli_verify},
    {"warm", cli_warm},
    {"export", cli_export},
    {"import", cli_import},
    /* Pull-time policy: pins without editing the configuration, and explaining a decision. */
    {"pin", cli_pin},
    {"unpin", cli_unpin},
    {"pins", cli_pins},
    {"policy", cli_policy},
};

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage_print_all(stderr);
        return 2;
    }
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++) {
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    }
    fprintf(stderr, "winch: unknown command \"%s\"\n\n", argv[1]);
    usage_print_all(stderr);
    return 2;
}
