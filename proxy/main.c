/* winch: the command line. main() finds the command and hands it its arguments; each command
 * lives in a cli_*.c file of its own (cli_serve.c runs the mirror). */
#include <stdio.h>
#include <string.h>

#include "common/util.h"
#include "proxy/cli_commands.h"

static int cli_print_version(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("winch %s\n", cli_version);
    return 0;
}

static int cli_help(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fputs(cli_usage, stdout);
    return 0;
}

static const struct {
    const char *name;
    cli_command_fn run;
} commands[] = {
    {"serve", cli_serve},
    {"version", cli_print_version},
    {"--version", cli_print_version},
    {"help", cli_help},
    {"--help", cli_help},
    {"-h", cli_help},
    {"ls", cli_ls},
    {"df", cli_df},
    {"inspect", cli_inspect},
    {"rm", cli_rm},
    {"prune", cli_prune},
    {"verify", cli_verify},
    /* Pull-time policy: pins without editing the configuration, and explaining a decision. */
    {"pin", cli_pin},
    {"unpin", cli_unpin},
    {"pins", cli_pins},
    {"policy", cli_policy},
};

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(cli_usage, stderr);
        return 2;
    }
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++) {
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    }
    fprintf(stderr, "winch: unknown command \"%s\"\n\n%s", argv[1], cli_usage);
    return 2;
}
