/*
 * dashboard: the page itself is src/dashboard.html, HTML with its script
 * inline, edited as such.  The build turns it into a list of byte values
 * (dashboard.html.inc, see the Makefile) that this file compiles in, so
 * the binary serves it with no file to install.  Everything the page loads
 * is same-origin: /stats.json and, with public-host set, /qr.svg.
 */
#include "dashboard.h"

const unsigned char dashboard_html[] = {
#include "dashboard.html.inc"
};

const size_t dashboard_html_len = sizeof(dashboard_html);
