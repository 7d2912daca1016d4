/*
 * delayshim: a packet-level delay line for the reliability tests
 * (tests/integration/netns.py, docs/RELIABILITY.md).
 *
 *     delayshim [-s SEED] DEV:DELAY_MS[:JITTER_MS[:reorder]] ...
 *
 * Attaches to each named TUN device (which must already exist: `ip tuntap
 * add dev DEV mode tun`), reads every IP packet the kernel routes into it,
 * holds it for DELAY_MS plus a uniform random offset in [-JITTER_MS,
 * +JITTER_MS] (never below zero), then writes it back into the same
 * device, where the kernel receives it and forwards it on.  The test
 * topology routes a link's packets through one device per direction, so
 * the TCP stacks at both ends see a longer, varying round trip; no TCP
 * connection ends here.
 *
 * Fidelity: by default packets leave each device in the order they came
 * (a packet's release time is never earlier than the previous one's:
 * jitter bunches packets, it never reorders them).  With `reorder`, each
 * packet keeps its own release time and they leave in the order of those
 * times: a packet overtakes those ahead of it whose draw was later by
 * more than the gap between their arrivals (at 10 +-5 ms and a packet
 * every 1 ms, most are overtaken by one or a few; with no jitter nothing
 * is reordered).  Packets due at the same nanosecond leave in arrival
 * order.  Timers have a 1 us slack; the real resolution is the
 * scheduler's wake-up latency (tens of microseconds on an idle machine, a
 * few milliseconds on a loaded one).  At most QCAP packets wait per
 * device; beyond that a packet is dropped and counted.  No packet is ever
 * altered, duplicated or dropped otherwise.
 *
 * Prints "ready" on stdout once attached; on SIGTERM or SIGINT prints
 * per-device counters on stderr (with `reordered`: the packets released
 * after one that arrived later) and exits 0.  Dies with its parent.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define MAXDEV 4
#define QCAP 4096 /* packets held per device */
#define PKTMAX 2048 /* bytes: the links' MTU is 1500 */
#define BATCH 64 /* packets read per device per wake-up, for fairness */

struct pkt {
	uint64_t due_ns;
	uint64_t seq; /* arrival order: breaks ties, counts reordering */
	uint16_t len;
	unsigned char data[PKTMAX];
};

/*
 * The packets held by a device wait in a binary min-heap ordered by
 * (due_ns, seq).  Without `reorder` the release times never decrease, so
 * the heap gives them back in arrival order: one code path for both modes.
 */
struct dev {
	const char *name;
	int fd;
	int reorder; /* release by due time alone, overtaking allowed */
	uint64_t delay_ns;
	uint64_t jitter_ns;
	uint64_t last_due_ns; /* release time of the newest queued packet */
	struct pkt *pool; /* owned: QCAP packet slots */
	unsigned *free_slots; /* owned: stack of unused slot indexes */
	unsigned *heap; /* owned: slot indexes, min-heap */
	unsigned nfree, len;
	uint64_t next_seq, max_seq_out;
	uint64_t in, out, overflow, write_err, reordered;
};

static volatile sig_atomic_t stop;
static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static void
on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static uint64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: reproducible for a given -s SEED. */
static uint64_t
rng_next(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ULL;
}

static int
parse_ms(const char *s, uint64_t *ns)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || end == s || (*end != '\0' && *end != ':') || v < 0 ||
	    v > 60000)
		return -1;
	*ns = (uint64_t)(v * 1e6);
	return 0;
}

/*
 * Parses DEV:DELAY_MS[:JITTER_MS[:reorder]] into d (d->name points into
 * arg).  Returns 0 or -1.
 */
static int
parse_dev(char *arg, struct dev *d)
{
	char *c1 = strchr(arg, ':');
	char *c2, *c3;

	if (c1 == NULL || c1 == arg || c1 - arg >= IFNAMSIZ)
		return -1;
	*c1 = '\0';
	d->name = arg;
	if (parse_ms(c1 + 1, &d->delay_ns) != 0)
		return -1;
	c2 = strchr(c1 + 1, ':');
	d->jitter_ns = 0;
	d->reorder = 0;
	if (c2 == NULL)
		return 0;
	if (parse_ms(c2 + 1, &d->jitter_ns) != 0)
		return -1;
	c3 = strchr(c2 + 1, ':');
	if (c3 == NULL)
		return 0;
	if (strcmp(c3 + 1, "reorder") != 0)
		return -1;
	d->reorder = 1;
	return 0;
}

static int
tun_attach(const char *name)
{
	struct ifreq ifr;
	int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);

	if (fd < 0)
		return -1;
	memset(&ifr, 0, sizeof(ifr));
	ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
	strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
	if (ioctl(fd, TUNSETIFF, &ifr) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * This packet's release time: delay +- jitter; without `reorder` never
 * before the last one's.
 */
static uint64_t
due_time(struct dev *d, uint64_t now)
{
	int64_t off = (int64_t)d->delay_ns;
	uint64_t due;

	if (d->jitter_ns > 0)
		off += (int64_t)(rng_next() % (2 * d->jitter_ns + 1)) -
		    (int64_t)d->jitter_ns;
	due = now + (uint64_t)(off > 0 ? off : 0);
	if (!d->reorder && due < d->last_due_ns)
		due = d->last_due_ns;
	d->last_due_ns = due;
	return due;
}

/* True when the packet in slot a is to leave before the one in slot b. */
static int
earlier(const struct dev *d, unsigned a, unsigned b)
{
	const struct pkt *pa = &d->pool[a], *pb = &d->pool[b];

	return pa->due_ns < pb->due_ns ||
	    (pa->due_ns == pb->due_ns && pa->seq < pb->seq);
}

static void
heap_push(struct dev *d, unsigned slot)
{
	unsigned i = d->len++;

	while (i > 0 && earlier(d, slot, d->heap[(i - 1) / 2])) {
		d->heap[i] = d->heap[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	d->heap[i] = slot;
}

/* Removes the earliest packet from the heap; returns its slot. */
static unsigned
heap_pop(struct dev *d)
{
	unsigned top = d->heap[0], last = d->heap[--d->len], i = 0;

	for (;;) {
		unsigned c = 2 * i + 1;

		if (c >= d->len)
			break;
		if (c + 1 < d->len && earlier(d, d->heap[c + 1], d->heap[c]))
			c++;
		if (!earlier(d, d->heap[c], last))
			break;
		d->heap[i] = d->heap[c];
		i = c;
	}
	if (d->len > 0)
		d->heap[i] = last;
	return top;
}

static void
read_packets(struct dev *d)
{
	for (int i = 0; i < BATCH; i++) {
		struct pkt *p;
		unsigned char scratch[PKTMAX];
		unsigned slot;
		ssize_t n;

		if (d->nfree == 0) {
			/* Full: take the packet off the device and drop it. */
			n = read(d->fd, scratch, sizeof(scratch));
			if (n <= 0)
				return;
			d->in++;
			d->overflow++;
			continue;
		}
		slot = d->free_slots[d->nfree - 1];
		p = &d->pool[slot];
		n = read(d->fd, p->data, sizeof(p->data));
		if (n <= 0)
			return;
		d->nfree--;
		d->in++;
		p->len = (uint16_t)n;
		p->seq = ++d->next_seq;
		p->due_ns = due_time(d, now_ns());
		heap_push(d, slot);
	}
}

/* Writes the packets that are due; returns the next due time or 0. */
static uint64_t
release_due(struct dev *d, uint64_t now)
{
	while (d->len > 0) {
		struct pkt *p = &d->pool[d->heap[0]];

		if (p->due_ns > now)
			return p->due_ns;
		if (write(d->fd, p->data, p->len) == (ssize_t)p->len)
			d->out++;
		else
			d->write_err++;
		if (p->seq < d->max_seq_out)
			d->reordered++;
		else
			d->max_seq_out = p->seq;
		d->free_slots[d->nfree++] = heap_pop(d);
	}
	return 0;
}

int
main(int argc, char **argv)
{
	struct dev devs[MAXDEV];
	struct pollfd pfd[MAXDEV];
	struct sigaction sa;
	int ndev = 0, opt;
	pid_t parent = getppid();

	while ((opt = getopt(argc, argv, "s:")) != -1) {
		if (opt != 's')
			goto usage;
		rng_state ^= strtoull(optarg, NULL, 0) * 0x2545f4914f6cdd1dULL;
		if (rng_state == 0)
			rng_state = 1;
	}
	if (optind == argc || argc - optind > MAXDEV)
		goto usage;
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() != parent)
		return 1;
	prctl(PR_SET_TIMERSLACK, 1000UL);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	memset(devs, 0, sizeof(devs));
	for (; optind < argc; optind++, ndev++) {
		struct dev *d = &devs[ndev];

		if (parse_dev(argv[optind], d) != 0)
			goto usage;
		d->fd = tun_attach(d->name);
		if (d->fd < 0) {
			fprintf(stderr, "delayshim: %s: %s\n", d->name,
			    strerror(errno));
			return 1;
		}
		d->pool = calloc(QCAP, sizeof(*d->pool));
		d->free_slots = calloc(QCAP, sizeof(*d->free_slots));
		d->heap = calloc(QCAP, sizeof(*d->heap));
		if (d->pool == NULL || d->free_slots == NULL ||
		    d->heap == NULL) {
			fprintf(stderr, "delayshim: out of memory\n");
			return 1;
		}
		for (unsigned k = 0; k < QCAP; k++)
			d->free_slots[k] = QCAP - 1 - k;
		d->nfree = QCAP;
		pfd[ndev].fd = d->fd;
		pfd[ndev].events = POLLIN;
	}
	printf("ready\n");
	fflush(stdout);

	while (!stop) {
		uint64_t now = now_ns(), next = 0;
		struct timespec ts, *tsp = NULL;

		for (int i = 0; i < ndev; i++) {
			uint64_t due = release_due(&devs[i], now);

			if (due != 0 && (next == 0 || due < next))
				next = due;
		}
		if (next != 0) {
			uint64_t wait = next - now;

			ts.tv_sec = (time_t)(wait / 1000000000ULL);
			ts.tv_nsec = (long)(wait % 1000000000ULL);
			tsp = &ts;
		}
		if (ppoll(pfd, (nfds_t)ndev, tsp, NULL) < 0) {
			if (errno == EINTR)
				continue;
			perror("delayshim: ppoll");
			return 1;
		}
		for (int i = 0; i < ndev; i++)
			if (pfd[i].revents & POLLIN)
				read_packets(&devs[i]);
	}
	for (int i = 0; i < ndev; i++)
		fprintf(stderr,
		    "delayshim: %s: in %llu out %llu overflow %llu "
		    "write-errors %llu reordered %llu held %u\n",
		    devs[i].name, (unsigned long long)devs[i].in,
		    (unsigned long long)devs[i].out,
		    (unsigned long long)devs[i].overflow,
		    (unsigned long long)devs[i].write_err,
		    (unsigned long long)devs[i].reordered, devs[i].len);
	return 0;

usage:
	fprintf(stderr,
	    "usage: delayshim [-s SEED] DEV:DELAY_MS[:JITTER_MS[:reorder]] "
	    "... (at most %d devices)\n",
	    MAXDEV);
	return 2;
}
