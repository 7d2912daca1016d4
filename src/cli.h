/*
 * cli: the subcommands that do not run the relay: `lifeline link` (share
 * link and QR code) and `lifeline health` (readiness probe for container
 * health checks).  Each returns the process exit status.
 */
#ifndef LIFELINE_CLI_H
#define LIFELINE_CLI_H

int cli_link(int argc, char **argv);
int cli_health(int argc, char **argv);

#endif
