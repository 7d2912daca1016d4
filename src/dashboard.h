/*
 * dashboard: the operators' page served at "/": one self-contained HTML
 * document (no external scripts, fonts or images) that polls /stats.json
 * every 2 seconds and draws what it reads.
 */
#ifndef LIFELINE_DASHBOARD_H
#define LIFELINE_DASHBOARD_H

#include <stddef.h>

/* The bytes of src/dashboard.html (no terminating NUL). */
extern const unsigned char dashboard_html[];
extern const size_t dashboard_html_len;

#endif
