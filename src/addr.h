/*
 * addr: socket address parsing and formatting, no I/O.
 *
 * Parsers return NULL on success or a static message saying what is wrong.
 */
#ifndef LIFELINE_ADDR_H
#define LIFELINE_ADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* "[1234:5678::1]:65535" plus NUL. */
#define ADDR_STRLEN 56
#define ADDR_HOSTLEN 256

struct addr_cidr {
	int family; /* AF_INET or AF_INET6 */
	uint8_t bytes[16];
	unsigned prefix;
};

/*
 * Splits "HOST:PORT" or "[V6]:PORT" into host and port.  The host is copied
 * into host (hostlen bytes at most, NUL-terminated).  Port 0 is accepted
 * only when allow_zero is set.
 */
const char *addr_split(
    const char *s, char *host, size_t hostlen, uint16_t *port, bool allow_zero);

/*
 * Parses a numeric IPv4 or IPv6 host ("*" means 0.0.0.0) with a port into
 * ss; *len gets the sockaddr length.
 */
const char *addr_parse_numeric(const char *host, uint16_t port,
    struct sockaddr_storage *ss, socklen_t *len);

/* Parses "ADDR/PREFIX" or a bare address (full-length prefix). */
const char *addr_cidr_parse(const char *s, struct addr_cidr *out);

/* True when sa (IPv4, IPv6 or v4-mapped IPv6) lies in cidr. */
bool addr_cidr_match(const struct addr_cidr *cidr, const struct sockaddr *sa);

/* True for 127.0.0.0/8, ::1 and v4-mapped 127.0.0.0/8. */
bool addr_is_loopback(const struct sockaddr *sa);

/*
 * Who can reach an address bound by a listener.  LOOPBACK: this host only
 * (127.0.0.0/8, ::1, v4-mapped 127/8).  PRIVATE: a private or local
 * network (10/8, 172.16/12, 192.168/16, 100.64/10 shared address space,
 * 169.254/16 and fe80::/10 link-local, fc00::/7 unique local).  PUBLIC:
 * anything else, the wildcards 0.0.0.0 and :: included (they bind every
 * interface, the public ones too).
 */
enum addr_scope {
	ADDR_SCOPE_LOOPBACK,
	ADDR_SCOPE_PRIVATE,
	ADDR_SCOPE_PUBLIC,
};

enum addr_scope addr_scope(const struct sockaddr *sa);
const char *addr_scope_str(enum addr_scope s);

/* Formats sa as "1.2.3.4:80" or "[::1]:80" into buf (ADDR_STRLEN bytes). */
void addr_format(const struct sockaddr *sa, char *buf, size_t len);

/* Port of an AF_INET/AF_INET6 address, 0 otherwise. */
uint16_t addr_port(const struct sockaddr *sa);
void addr_set_port(struct sockaddr *sa, uint16_t port);
socklen_t addr_len(const struct sockaddr *sa);

#endif
