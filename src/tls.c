/*
 * tls: OpenSSL 3 contexts, certificates generated in memory, ticket keys,
 * and non-blocking server connections.
 */
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "tls.h"
#include "util.h"

/* Ticket keys: current and previous, rotated every 12 hours. */
#define TLS_TICKET_ROTATE_S (12 * 3600)

struct tls_ctx {
	_Atomic unsigned refs;
	SSL_CTX *ssl; /* owned */
	/* What the context was made from, to share it across reloads. */
	bool generated;
	enum cfg_key_type key_type;
	char *names; /* owned: tls-names joined, may be "" */
	char *ips; /* owned */
	char *settings; /* owned: the TLS settings, as settings_text() */
	unsigned char alpn[256 * 4]; /* tls-alpn in wire format */
	size_t alpn_len;
};

struct tls_conn {
	SSL *ssl; /* owned */
	bool sent_close;
};

struct ticket_key {
	unsigned char name[16];
	unsigned char aes[32];
	unsigned char hmac[32];
	time_t created;
	bool valid;
};

static struct {
	pthread_mutex_t lock;
	struct ticket_key cur, prev;
} tk = {.lock = PTHREAD_MUTEX_INITIALIZER};

/*
 * The ticket cipher, fetched once: EVP_aes_256_cbc() would be looked up by
 * name in the provider store at every ticket sealed or opened.
 */
static EVP_CIPHER *ticket_cipher;
static pthread_once_t ticket_cipher_once = PTHREAD_ONCE_INIT;

/*
 * OpenSSL 3 fills its store of algorithms one kind of operation at a time,
 * at the first fetch of that kind, and remembers that it did.  If memory
 * runs short in the middle (a handshake under memory pressure), the kind
 * is marked done with algorithms missing, and every later handshake fails
 * for good ("unsupported": HMAC, TLS13-KDF), though the process lives on.
 * So every kind a handshake uses is loaded here, at start-up, where a
 * failure is fatal and visible.  Returns false when one is missing.
 */
static bool
algorithms_load(void)
{
	EVP_MD *md = EVP_MD_fetch(NULL, "SHA256", NULL);
	EVP_CIPHER *ci = EVP_CIPHER_fetch(NULL, "AES-128-GCM", NULL);
	EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "TLS13-KDF", NULL);
	EVP_KEYMGMT *km = EVP_KEYMGMT_fetch(NULL, "X25519", NULL);
	EVP_KEYEXCH *kx = EVP_KEYEXCH_fetch(NULL, "ECDH", NULL);
	EVP_SIGNATURE *sig = EVP_SIGNATURE_fetch(NULL, "ECDSA", NULL);
	EVP_ASYM_CIPHER *ac = EVP_ASYM_CIPHER_fetch(NULL, "RSA", NULL);
	EVP_RAND *rand = EVP_RAND_fetch(NULL, "CTR-DRBG", NULL);
	bool ok = md && ci && mac && kdf && km && kx && sig && ac && rand;

	EVP_MD_free(md);
	EVP_CIPHER_free(ci);
	EVP_MAC_free(mac);
	EVP_KDF_free(kdf);
	EVP_KEYMGMT_free(km);
	EVP_KEYEXCH_free(kx);
	EVP_SIGNATURE_free(sig);
	EVP_ASYM_CIPHER_free(ac);
	EVP_RAND_free(rand);
	return ok;
}

static void
ticket_cipher_fetch(void)
{
	if (algorithms_load())
		ticket_cipher = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
}

static void
openssl_err(char *err, size_t errlen, const char *what)
{
	unsigned long e = ERR_get_error();
	char buf[256];

	if (e != 0)
		ERR_error_string_n(e, buf, sizeof(buf));
	else
		snprintf(buf, sizeof(buf), "unknown error");
	snprintf(err, errlen, "%s: %s", what, buf);
	ERR_clear_error();
}

static int
ticket_key_new(struct ticket_key *k)
{
	if (RAND_bytes(k->name, sizeof(k->name)) != 1 ||
	    RAND_bytes(k->aes, sizeof(k->aes)) != 1 ||
	    RAND_bytes(k->hmac, sizeof(k->hmac)) != 1)
		return -1;
	k->created = time(NULL);
	k->valid = true;
	return 0;
}

static int
ticket_mac_init(EVP_MAC_CTX *hctx, unsigned char *key)
{
	OSSL_PARAM params[3];

	params[0] =
	    OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key, 32);
	params[1] = OSSL_PARAM_construct_utf8_string(
	    OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
	params[2] = OSSL_PARAM_construct_end();
	return EVP_MAC_CTX_set_params(hctx, params);
}

/*
 * OpenSSL's ticket key callback: enc = 1 to seal a new ticket, 0 to open
 * one.  Returns 1 (ok), 2 (ok, but issue a fresh ticket: old key), 0 (not
 * ours or expired: full handshake), -1 (error).
 */
static int
ticket_cb(SSL *s, unsigned char key_name[16], unsigned char *iv,
    EVP_CIPHER_CTX *ctx, EVP_MAC_CTX *hctx, int enc)
{
	struct ticket_key k;
	int ret = 1;

	pthread_mutex_lock(&tk.lock);
	if (!tk.cur.valid ||
	    time(NULL) - tk.cur.created >= TLS_TICKET_ROTATE_S) {
		struct ticket_key n;

		if (ticket_key_new(&n) == 0) {
			tk.prev = tk.cur;
			tk.cur = n;
		}
	}
	if (enc) {
		k = tk.cur;
	} else if (tk.cur.valid && memcmp(key_name, tk.cur.name, 16) == 0) {
		k = tk.cur;
		/*
		 * TLS 1.3 clients use each ticket once (RFC 8446 C.4): a
		 * resumption must bring a fresh one, or every other
		 * connection is a full handshake.
		 */
		if (SSL_version(s) >= TLS1_3_VERSION)
			ret = 2;
	} else if (tk.prev.valid && memcmp(key_name, tk.prev.name, 16) == 0) {
		k = tk.prev;
		ret = 2;
	} else {
		k.valid = false;
	}
	pthread_mutex_unlock(&tk.lock);
	if (!k.valid)
		return enc ? -1 : 0;
	if (enc) {
		if (RAND_bytes(iv, EVP_MAX_IV_LENGTH) != 1)
			return -1;
		memcpy(key_name, k.name, 16);
		if (EVP_EncryptInit_ex(ctx, ticket_cipher, NULL, k.aes, iv) !=
		        1 ||
		    ticket_mac_init(hctx, k.hmac) != 1)
			return -1;
		return 1;
	}
	if (ticket_mac_init(hctx, k.hmac) != 1 ||
	    EVP_DecryptInit_ex(ctx, ticket_cipher, NULL, k.aes, iv) != 1)
		return -1;
	return ret;
}

static EVP_PKEY *
gen_key(enum cfg_key_type type)
{
	switch (type) {
	case CFG_KEY_EC256:
		return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	case CFG_KEY_RSA2048:
		return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	case CFG_KEY_RSA4096:
		return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)4096);
	}
	return NULL;
}

/* A random lower-case label, like the official image's random names. */
static void
random_label(char *buf, size_t len)
{
	unsigned char r[32];

	if (len > sizeof(r) + 1)
		len = sizeof(r) + 1;
	if (RAND_bytes(r, (int)len) != 1)
		memset(r, 0, sizeof(r));
	for (size_t i = 0; i + 1 < len; i++)
		buf[i] = (char)('a' + r[i] % 26);
	buf[len - 1] = '\0';
}

static int
add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX v3;
	X509_EXTENSION *ext;
	int ok;

	X509V3_set_ctx(&v3, issuer, cert, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
	if (ext == NULL)
		return -1;
	ok = X509_add_ext(cert, ext, -1);
	X509_EXTENSION_free(ext);
	return ok == 1 ? 0 : -1;
}

/*
 * A version 3 certificate for key, subject CN=cn, a random serial of bits
 * bits, valid from not_before to not_after: what both kinds below share.
 * Issuer, extensions and signature are the caller's.
 */
static X509 *
cert_skeleton(EVP_PKEY *key, const char *cn, int bits, time_t not_before,
    time_t not_after)
{
	X509 *x = X509_new();
	BIGNUM *bn = BN_new();
	bool ok = x != NULL && bn != NULL &&
	    X509_set_version(x, X509_VERSION_3) == 1 &&
	    BN_rand(bn, bits, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) == 1 &&
	    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL &&
	    X509_time_adj_ex(X509_getm_notBefore(x), 0, 0, &not_before) !=
	        NULL &&
	    X509_time_adj_ex(X509_getm_notAfter(x), 0, 0, &not_after) != NULL &&
	    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN",
	        MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0) == 1 &&
	    X509_set_pubkey(x, key) == 1;

	BN_free(bn);
	if (!ok) {
		X509_free(x);
		return NULL;
	}
	return x;
}

/* Signs x with key; x, or NULL (x freed) when that fails. */
static X509 *
cert_sign(X509 *x, EVP_PKEY *key)
{
	if (X509_sign(x, key, EVP_sha256()) == 0) {
		X509_free(x);
		return NULL;
	}
	return x;
}

/* Makes a certificate for key, named cn, signed by issuer/ikey (or self). */
static X509 *
make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *ikey,
    long days, const char *san)
{
	time_t now = time(NULL);
	X509 *x =
	    cert_skeleton(key, cn, 64, now - 24 * 3600, now + days * 86400);

	if (x == NULL)
		return NULL;
	if (X509_set_issuer_name(
	        x, X509_get_subject_name(issuer != NULL ? issuer : x)) != 1)
		goto fail;
	if (issuer == NULL) {
		if (add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE") !=
		        0 ||
		    add_ext(x, x, NID_key_usage,
		        "critical,keyCertSign,cRLSign") != 0 ||
		    add_ext(x, x, NID_subject_key_identifier, "hash") != 0)
			goto fail;
	} else {
		if (add_ext(x, issuer, NID_basic_constraints, "CA:FALSE") !=
		        0 ||
		    add_ext(x, issuer, NID_ext_key_usage, "serverAuth") != 0 ||
		    add_ext(x, issuer, NID_authority_key_identifier,
		        "keyid:always") != 0 ||
		    (san[0] != '\0' &&
		        add_ext(x, issuer, NID_subject_alt_name, san) != 0))
			goto fail;
	}
	return cert_sign(x, ikey != NULL ? ikey : key);
fail:
	X509_free(x);
	return NULL;
}

/*
 * With tls-names: one self-signed certificate shaped like one an operator
 * makes with `openssl req -x509`: CN the first name, every name and
 * address in subjectAltName, a 128-bit random serial, valid for a year
 * from a midnight (UTC) up to 30 days back, chosen at random, so that
 * nothing in it tells when the relay started.
 */
static X509 *
make_named_cert(EVP_PKEY *key, const char *cn, const char *san)
{
	unsigned char r = 0;
	time_t start = time(NULL);
	X509 *x;

	if (RAND_bytes(&r, 1) != 1)
		return NULL;
	start -= start % 86400 + (time_t)(r % 30) * 86400;
	x = cert_skeleton(key, cn, 128, start, start + 365 * 86400);
	if (x == NULL)
		return NULL;
	if (X509_set_issuer_name(x, X509_get_subject_name(x)) != 1 ||
	    add_ext(x, x, NID_subject_key_identifier, "hash") != 0 ||
	    add_ext(x, x, NID_authority_key_identifier, "keyid:always") != 0 ||
	    add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE") != 0 ||
	    add_ext(x, x, NID_subject_alt_name, san) != 0) {
		X509_free(x);
		return NULL;
	}
	return cert_sign(x, key);
}

/* Appends "PREFIX:item" for each comma/space separated item of list. */
static void
san_append(char *san, size_t len, const char *prefix, const char *list)
{
	char *copy, *save = NULL;

	if (list == NULL || (copy = strdup(list)) == NULL)
		return;
	for (char *t = strtok_r(copy, ", \t", &save); t != NULL;
	     t = strtok_r(NULL, ", \t", &save)) {
		size_t n = strlen(san);

		snprintf(
		    san + n, len - n, "%s%s:%s", n > 0 ? "," : "", prefix, t);
	}
	free(copy);
}

/*
 * The listener's TLS settings as one string (a new one, NULL: no memory):
 * a context is kept across a reload only when they did not change.
 */
static char *
settings_text(const struct cfg_listen *cl)
{
	char *s = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&s, &len);

	if (f == NULL)
		return NULL;
	for (size_t i = 0; i < cl->tls_alpn.n; i++)
		fprintf(f, "%s,", cl->tls_alpn.v[i]);
	fprintf(f, "|%u|%llu|%s|%d", cl->tls_tickets,
	    (unsigned long long)cl->tls_ticket_lifetime_ms,
	    cl->tls_ciphers != NULL ? cl->tls_ciphers : CFG_TLS_CIPHERS,
	    cl->tls_prefer_server);
	if (fclose(f) != 0) {
		free(s);
		return NULL;
	}
	return s;
}

/*
 * ALPN: the first of our protocols (tls-alpn order) the client offers.
 * None in common: the handshake goes on without ALPN rather than failing
 * (nginx sends a no_application_protocol alert; a WhatsApp client that
 * offered something of its own must still get through).
 */
static int
alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
    const unsigned char *in, unsigned int inlen, void *arg)
{
	const struct tls_ctx *t = arg;
	unsigned char *sel;

	(void)ssl;
	if (SSL_select_next_proto(&sel, outlen, t->alpn,
	        (unsigned int)t->alpn_len, in, inlen) != OPENSSL_NPN_NEGOTIATED)
		return SSL_TLSEXT_ERR_NOACK;
	*out = sel;
	return SSL_TLSEXT_ERR_OK;
}

/*
 * Server name indication: acknowledged, whatever the name (one
 * certificate serves them all), as web servers do; an empty server_name
 * extension in the ServerHello (TLS 1.2) or EncryptedExtensions (1.3)
 * that a server without this callback would leave out, which tells.
 */
static int
servername_ack(SSL *ssl, int *alert, void *arg)
{
	(void)ssl;
	(void)alert;
	(void)arg;
	return SSL_TLSEXT_ERR_OK;
}

/*
 * A session id context, as web servers set (nginx: a SHA-1 over its
 * certificates): resumption stays within this certificate, and the
 * sessions in our tickets have the size theirs have.
 */
static int
session_context(SSL_CTX *ssl)
{
	X509 *cert = SSL_CTX_get0_certificate(ssl);
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int len = 0;

	if (cert == NULL || X509_digest(cert, EVP_sha1(), md, &len) != 1)
		return -1;
	return SSL_CTX_set_session_id_context(ssl, md, len) == 1 ? 0 : -1;
}

/* The list's items joined with commas, in a new string (NULL: no memory). */
static char *
join(const struct cfg_strlist *l)
{
	size_t n = 1, off = 0;
	char *s;

	for (size_t i = 0; i < l->n; i++)
		n += strlen(l->v[i]) + 1;
	s = calloc(1, n);
	if (s == NULL)
		return NULL;
	for (size_t i = 0; i < l->n; i++)
		off += (size_t)snprintf(
		    s + off, n - off, "%s%s", i > 0 ? "," : "", l->v[i]);
	return s;
}

/*
 * Generates a CA and a leaf it signs, as the official image does at every
 * start, but in memory only and with the configured key type.
 */
static int
use_generated(SSL_CTX *ssl, const struct tls_ctx *t, char *err, size_t errlen)
{
	EVP_PKEY *cakey = NULL, *key = NULL;
	X509 *ca = NULL, *leaf = NULL;
	char label[13], cn[32], named[256], san[4096] = "";
	int r = -1;

	san_append(san, sizeof(san), "DNS", t->names);
	san_append(san, sizeof(san), "DNS", getenv("SSL_DNS"));
	san_append(san, sizeof(san), "IP", t->ips);
	san_append(san, sizeof(san), "IP", getenv("SSL_IP"));
	cakey = gen_key(t->key_type);
	key = gen_key(t->key_type);
	if (cakey == NULL || key == NULL) {
		openssl_err(err, errlen, "generating a key");
		goto fail;
	}
	if (t->names[0] != '\0') {
		/* The first name: up to a comma (join() wrote them so). */
		snprintf(named, sizeof(named), "%.*s",
		    (int)strcspn(t->names, ","), t->names);
		leaf = make_named_cert(key, named, san);
		if (leaf == NULL) {
			openssl_err(err, errlen,
			    "generating a certificate for tls-names");
			goto fail;
		}
		goto use;
	}
	random_label(label, sizeof(label));
	ca = make_cert(cakey, label, NULL, NULL, 36500, "");
	random_label(label, sizeof(label));
	snprintf(cn, sizeof(cn), "%s.net", label);
	if (ca != NULL)
		leaf = make_cert(key, cn, ca, cakey, 3650, san);
	if (ca == NULL || leaf == NULL) {
		openssl_err(err, errlen, "generating a certificate");
		goto fail;
	}
	/*
	 * The leaf alone is served, as the official image does: clients do
	 * not verify the proxy, and a second certificate only costs every
	 * handshake bytes and a signature check.
	 */
use:
	if (SSL_CTX_use_certificate(ssl, leaf) != 1 ||
	    SSL_CTX_use_PrivateKey(ssl, key) != 1) {
		openssl_err(err, errlen, "using the generated certificate");
		goto fail;
	}
	r = 0;
fail:
	X509_free(leaf);
	X509_free(ca);
	EVP_PKEY_free(key);
	EVP_PKEY_free(cakey);
	return r;
}

static int
use_files(SSL_CTX *ssl, const struct cfg_listen *cl, char *err, size_t errlen)
{
	char what[600];

	snprintf(what, sizeof(what), "certificate %s", cl->cert);
	if (SSL_CTX_use_certificate_chain_file(ssl, cl->cert) != 1) {
		openssl_err(err, errlen, what);
		return -1;
	}
	snprintf(what, sizeof(what), "key %s", cl->key);
	if (SSL_CTX_use_PrivateKey_file(ssl, cl->key, SSL_FILETYPE_PEM) != 1) {
		/* OpenSSL finds a key of another certificate here already. */
		if (ERR_GET_REASON(ERR_peek_last_error()) ==
		    X509_R_KEY_VALUES_MISMATCH)
			snprintf(what, sizeof(what), "key %s does not match %s",
			    cl->key, cl->cert);
		openssl_err(err, errlen, what);
		return -1;
	}
	if (SSL_CTX_check_private_key(ssl) != 1) {
		snprintf(what, sizeof(what), "key %s does not match %s",
		    cl->key, cl->cert);
		openssl_err(err, errlen, what);
		return -1;
	}
	return 0;
}

struct tls_ctx *
tls_ctx_new(const struct cfg_listen *cl, char *err, size_t errlen)
{
	struct tls_ctx *t = calloc(1, sizeof(*t));
	SSL_CTX *ssl = NULL;

	if (t == NULL)
		fatal(1, "out of memory");
	atomic_init(&t->refs, 1);
	t->generated = cl->cert == NULL;
	t->key_type = cl->key_type;
	t->names = join(&cl->tls_names);
	t->ips = join(&cl->tls_ips);
	t->settings = settings_text(cl);
	if (t->names == NULL || t->ips == NULL || t->settings == NULL)
		fatal(1, "out of memory");
	for (size_t i = 0; i < cl->tls_alpn.n; i++) {
		size_t n = strlen(cl->tls_alpn.v[i]);

		if (n == 0 || n > 255 || t->alpn_len + 1 + n > sizeof(t->alpn))
			continue;
		t->alpn[t->alpn_len++] = (unsigned char)n;
		memcpy(t->alpn + t->alpn_len, cl->tls_alpn.v[i], n);
		t->alpn_len += n;
	}
	ERR_clear_error();
	ssl = SSL_CTX_new(TLS_server_method());
	if (ssl == NULL) {
		openssl_err(err, errlen, "SSL_CTX_new");
		goto fail;
	}
	if (SSL_CTX_set_min_proto_version(ssl, TLS1_2_VERSION) != 1) {
		openssl_err(err, errlen, "TLS settings");
		goto fail;
	}
	if (SSL_CTX_set_cipher_list(ssl,
	        cl->tls_ciphers != NULL ? cl->tls_ciphers : CFG_TLS_CIPHERS) !=
	    1) {
		openssl_err(
		    err, errlen, "tls-ciphers (no suite OpenSSL knows)");
		goto fail;
	}
	/*
	 * No renegotiation; a TCP FIN without close_notify is an ordinary end
	 * of stream (the payload has its own integrity, and a plain listener
	 * treats FIN the same way).
	 */
	SSL_CTX_set_options(ssl,
	    SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
	        SSL_OP_IGNORE_UNEXPECTED_EOF);
	if (cl->tls_prefer_server)
		SSL_CTX_set_options(ssl, SSL_OP_CIPHER_SERVER_PREFERENCE);
	if (t->alpn_len > 0)
		SSL_CTX_set_alpn_select_cb(ssl, alpn_select, t);
	/* Give OpenSSL's buffers back while a connection is idle. */
	SSL_CTX_set_mode(ssl,
	    SSL_MODE_ENABLE_PARTIAL_WRITE |
	        SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
	/*
	 * Read what the socket holds, not a record header then its body: a
	 * ClientHello, and the client's Finished with the data after it, each
	 * take one read(2) instead of two or four.
	 */
	SSL_CTX_set_read_ahead(ssl, 1);
	/* Resumption through tickets only: no per-session server memory. */
	SSL_CTX_set_session_cache_mode(ssl, SSL_SESS_CACHE_OFF);
	pthread_once(&ticket_cipher_once, ticket_cipher_fetch);
	if (ticket_cipher == NULL) {
		openssl_err(err, errlen,
		    "loading OpenSSL's algorithms (AES-256-CBC for tickets, "
		    "those of a handshake)");
		goto fail;
	}
	SSL_CTX_set_num_tickets(ssl, cl->tls_tickets);
	/* The lifetime hint in tickets; resumption is refused after it. */
	SSL_CTX_set_timeout(ssl, (long)(cl->tls_ticket_lifetime_ms / 1000));
	SSL_CTX_set_tlsext_ticket_key_evp_cb(ssl, ticket_cb);
	if ((t->generated ? use_generated(ssl, t, err, errlen)
	                  : use_files(ssl, cl, err, errlen)) != 0)
		goto fail;
	SSL_CTX_set_tlsext_servername_callback(ssl, servername_ack);
	if (session_context(ssl) != 0) {
		openssl_err(err, errlen, "session id context");
		goto fail;
	}
	t->ssl = ssl;
	return t;
fail:
	SSL_CTX_free(ssl);
	free(t->names);
	free(t->ips);
	free(t->settings);
	free(t);
	return NULL;
}

void
tls_ctx_ref(struct tls_ctx *t)
{
	atomic_fetch_add(&t->refs, 1);
}

void
tls_ctx_unref(struct tls_ctx *t)
{
	if (t == NULL || atomic_fetch_sub(&t->refs, 1) != 1)
		return;
	SSL_CTX_free(t->ssl);
	free(t->names);
	free(t->ips);
	free(t->settings);
	free(t);
}

bool
tls_ctx_reusable(const struct tls_ctx *t, const struct cfg_listen *cl)
{
	char *names, *ips, *settings;
	bool same;

	/* Files are read again at each reload: that is how certs renew. */
	if (!t->generated || cl->cert != NULL || t->key_type != cl->key_type)
		return false;
	names = join(&cl->tls_names);
	ips = join(&cl->tls_ips);
	settings = settings_text(cl);
	same = names != NULL && ips != NULL && settings != NULL &&
	    strcmp(names, t->names) == 0 && strcmp(ips, t->ips) == 0 &&
	    strcmp(settings, t->settings) == 0;
	free(names);
	free(ips);
	free(settings);
	return same;
}

struct tls_conn *
tls_conn_new(struct tls_ctx *t, int fd)
{
	struct tls_conn *tc = calloc(1, sizeof(*tc));

	if (tc == NULL)
		return NULL;
	tc->ssl = SSL_new(t->ssl);
	if (tc->ssl == NULL || SSL_set_fd(tc->ssl, fd) != 1) {
		ERR_clear_error();
		SSL_free(tc->ssl);
		free(tc);
		return NULL;
	}
	SSL_set_accept_state(tc->ssl);
	return tc;
}

void
tls_conn_free(struct tls_conn *tc)
{
	if (tc == NULL)
		return;
	SSL_free(tc->ssl);
	free(tc);
}

static enum tls_status
status_of(struct tls_conn *tc, int ret)
{
	int e = SSL_get_error(tc->ssl, ret);
	unsigned long why = ERR_peek_error();

	ERR_clear_error();
	switch (e) {
	case SSL_ERROR_WANT_READ:
		return TLS_WANT_READ;
	case SSL_ERROR_WANT_WRITE:
		return TLS_WANT_WRITE;
	case SSL_ERROR_ZERO_RETURN:
		return TLS_EOF;
	case SSL_ERROR_SSL:
		/*
		 * A FIN without close_notify is the peer gone, not a protocol
		 * error: no alert went out, and none could be read.
		 */
		if (ERR_GET_LIB(why) == ERR_LIB_SSL &&
		    ERR_GET_REASON(why) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
			return TLS_FAIL;
		if (log_enabled(LOG_DEBUG)) {
			char text[256];

			ERR_error_string_n(why, text, sizeof(text));
			log_debug("TLS error: %s", text);
		}
		return TLS_ALERT;
	default:
		return TLS_FAIL;
	}
}

enum tls_status
tls_handshake(struct tls_conn *tc)
{
	int r;

	ERR_clear_error();
	r = SSL_do_handshake(tc->ssl);
	if (r == 1)
		return TLS_DONE;
	return status_of(tc, r);
}

size_t
tls_read(struct tls_conn *tc, void *buf, size_t len, enum tls_status *st)
{
	size_t n = 0;

	ERR_clear_error();
	if (SSL_read_ex(tc->ssl, buf, len, &n) == 1)
		return n;
	*st = status_of(tc, 0);
	return 0;
}

size_t
tls_write(struct tls_conn *tc, const void *buf, size_t len, enum tls_status *st)
{
	size_t n = 0;

	ERR_clear_error();
	if (SSL_write_ex(tc->ssl, buf, len, &n) == 1)
		return n;
	*st = status_of(tc, 0);
	return 0;
}

enum tls_status
tls_close_notify(struct tls_conn *tc)
{
	int r;

	if (tc->sent_close)
		return TLS_DONE;
	ERR_clear_error();
	r = SSL_shutdown(tc->ssl);
	if (r >= 0) {
		tc->sent_close = true;
		return TLS_DONE;
	}
	return status_of(tc, r) == TLS_WANT_WRITE ? TLS_WANT_WRITE : TLS_FAIL;
}

bool
tls_conn_resumed(const struct tls_conn *tc)
{
	return SSL_session_reused(tc->ssl) == 1;
}

const char *
tls_status_str(enum tls_status st)
{
	switch (st) {
	case TLS_DONE:
		return "done";
	case TLS_WANT_READ:
		return "want_read";
	case TLS_WANT_WRITE:
		return "want_write";
	case TLS_EOF:
		return "eof";
	case TLS_ALERT:
		return "alert";
	case TLS_FAIL:
		return "fail";
	}
	return "?";
}

/* An ASN1_TIME as seconds since the epoch; 0 when it does not parse. */
static time_t
asn1_time(const ASN1_TIME *a)
{
	struct tm tm;

	if (a == NULL || ASN1_TIME_to_tm(a, &tm) != 1)
		return 0;
	return timegm(&tm);
}

/* The subjectAltNames (DNS and IP) of x as "DNS:a, IP:b" into buf. */
static void
alt_names(X509 *x, char *buf, size_t len)
{
	GENERAL_NAMES *gens =
	    X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	size_t n = 0;

	buf[0] = '\0';
	for (int i = 0; gens != NULL && i < sk_GENERAL_NAME_num(gens); i++) {
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
		char ip[64] = "";
		const ASN1_OCTET_STRING *o;

		if (n >= len)
			break;
		if (g->type == GEN_DNS) {
			n += (size_t)snprintf(buf + n, len - n, "%sDNS:%.*s",
			    n ? ", " : "", ASN1_STRING_length(g->d.dNSName),
			    (const char *)ASN1_STRING_get0_data(g->d.dNSName));
		} else if (g->type == GEN_IPADD) {
			o = g->d.iPAddress;
			if (ASN1_STRING_length(o) == 4)
				inet_ntop(AF_INET, ASN1_STRING_get0_data(o), ip,
				    sizeof(ip));
			else if (ASN1_STRING_length(o) == 16)
				inet_ntop(AF_INET6, ASN1_STRING_get0_data(o),
				    ip, sizeof(ip));
			n += (size_t)snprintf(
			    buf + n, len - n, "%sIP:%s", n ? ", " : "", ip);
		}
	}
	GENERAL_NAMES_free(gens);
}

static void
subject_line(X509 *x, char *buf, size_t len)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *p = NULL;
	long n;

	snprintf(buf, len, "?");
	if (b == NULL)
		return;
	if (X509_NAME_print_ex(
	        b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253) >= 0 &&
	    (n = BIO_get_mem_data(b, &p)) > 0)
		snprintf(buf, len, "%.*s", (int)n, p);
	BIO_free(b);
}

int
tls_ctx_cert_info(const struct tls_ctx *t, struct tls_cert_info *out)
{
	X509 *x = SSL_CTX_get0_certificate(t->ssl);

	memset(out, 0, sizeof(*out));
	if (x == NULL)
		return -1;
	out->not_before = asn1_time(X509_get0_notBefore(x));
	out->not_after = asn1_time(X509_get0_notAfter(x));
	subject_line(x, out->subject, sizeof(out->subject));
	alt_names(x, out->names, sizeof(out->names));
	return 0;
}

/* Runs the client handshake on ssl until done, failed or deadline. */
static int
client_handshake(SSL *ssl, int fd, uint64_t deadline, char *err, size_t errlen)
{
	for (;;) {
		struct pollfd pfd = {.fd = fd};
		struct timespec ts;
		uint64_t now;
		int r = SSL_connect(ssl), e;

		if (r == 1)
			return 0;
		e = SSL_get_error(ssl, r);
		if (e == SSL_ERROR_WANT_READ)
			pfd.events = POLLIN;
		else if (e == SSL_ERROR_WANT_WRITE)
			pfd.events = POLLOUT;
		else if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
			return errf(err, errlen, "the connection was %s",
			    errno == ECONNRESET ? "reset" : "closed");
		else {
			openssl_err(err, errlen, "handshake failed");
			return -1;
		}
		clock_gettime(CLOCK_MONOTONIC, &ts);
		now =
		    (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
		if (now >= deadline ||
		    (r = poll(&pfd, 1, (int)(deadline - now))) == 0)
			return errf(
			    err, errlen, "no answer within the timeout");
		if (r < 0 && errno != EINTR)
			return errf(err, errlen, "poll: %s", strerror(errno));
	}
}

int
tls_client_probe(int fd, const char *sni, unsigned timeout_ms, char *proto,
    size_t protolen, char *subject, size_t subjlen, char *err, size_t errlen)
{
	SSL_CTX *ctx = NULL;
	SSL *ssl = NULL;
	X509 *peer;
	struct timespec ts;
	uint64_t deadline;
	int r = -1;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	deadline = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000 +
	    timeout_ms;
	ERR_clear_error();
	if ((ctx = SSL_CTX_new(TLS_client_method())) == NULL ||
	    (ssl = SSL_new(ctx)) == NULL || SSL_set_fd(ssl, fd) != 1 ||
	    (sni != NULL && SSL_set_tlsext_host_name(ssl, sni) != 1)) {
		openssl_err(err, errlen, "TLS client");
		goto fail;
	}
	/* Whatever the relay serves is looked at, not trusted. */
	SSL_set_verify(ssl, SSL_VERIFY_NONE, NULL);
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) {
		errf(err, errlen, "fcntl: %s", strerror(errno));
		goto fail;
	}
	if (client_handshake(ssl, fd, deadline, err, errlen) != 0)
		goto fail;
	snprintf(proto, protolen, "%s", SSL_get_version(ssl));
	peer = SSL_get1_peer_certificate(ssl);
	if (peer != NULL) {
		subject_line(peer, subject, subjlen);
		X509_free(peer);
	} else {
		snprintf(subject, subjlen, "(no certificate)");
	}
	(void)SSL_shutdown(ssl);
	r = 0;
fail:
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	ERR_clear_error();
	return r;
}

#ifdef LIFELINE_TEST_HOOKS
/* malloc and realloc here are the daemon's: failalloc decides. */
static void *
hook_malloc(size_t n, const char *file, int line)
{
	(void)file;
	(void)line;
	return malloc(n);
}

static void *
hook_realloc(void *p, size_t n, const char *file, int line)
{
	(void)file;
	(void)line;
	return realloc(p, n);
}

static void
hook_free(void *p, const char *file, int line)
{
	(void)file;
	(void)line;
	free(p);
}

void
tls_test_hooks_init(void)
{
	(void)CRYPTO_set_mem_functions(hook_malloc, hook_realloc, hook_free);
}
#endif
