/* Small helpers shared by both agents: size and address parsing (no I/O),
 * time, uuids, zero detection, aligned buffers, pidfiles. */
#ifndef DUPLEX_UTIL_H
#define DUPLEX_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* "4096", "64K", "64M", "1G", "2T" (binary multiples, optional trailing
 * "iB"/"B").  Returns 0, or -1 with a message in err. */
int util_parse_size(const char *s, uint64_t *out, char *err, size_t errlen);
/* "250ms", "2s", "1.5s", "10m", "1h", "7d", "2w"; a bare number is
 * seconds.  *out in milliseconds. */
int util_parse_duration_ms(const char *s, uint64_t *out, char *err,
                           size_t errlen);

/* An endpoint: "unix:/path/to/sock" or "HOST:PORT" ("[::1]:10809" too). */
struct endpoint {
  bool is_unix;
  char path[108];   /* is_unix */
  char host[256];   /* !is_unix, without brackets */
  char port[16];
};
int util_parse_endpoint(const char *s, struct endpoint *out, char *err,
                        size_t errlen);
struct sockaddr;
/* A peer's address for messages: "192.0.2.1:4242", "[2001:db8::1]:4242",
 * "unix" for a unix socket. */
void util_format_sockaddr(const struct sockaddr *sa, char *out,
                          size_t outlen);
/* "unix:/path", "host:port" or "[v6]:port", for messages. */
void util_endpoint_str(const struct endpoint *ep, char *out, size_t outlen);

/* Listening / connecting sockets for an endpoint, non-blocking, CLOEXEC.
 * util_listen unlinks a stale unix socket first.  Both return an fd or -1
 * with errno set and a message in err. */
int util_listen(const struct endpoint *ep, char *err, size_t errlen);
int util_connect_start(const struct endpoint *ep, char *err, size_t errlen);

/* The port a listening TCP socket got (for port 0), or -1. */
int util_local_port(int fd);

uint64_t util_now_ms(void);  /* CLOCK_MONOTONIC */
uint64_t util_now_ns(void);
uint64_t util_wall_ns(void); /* CLOCK_REALTIME: ns since the Unix epoch */
/* --connect-interval: a duration of 100ms..1h, in ms.  0, or -1 with
 * "--connect-interval VALUE: why" in err. */
int util_parse_connect_interval(const char *s, unsigned *out, char *err,
                                size_t errlen);
/* RFC 3339 UTC to the second, "2026-11-27T03:04:05Z", of a wall time in
 * ns since the Unix epoch (out: at least 21 bytes). */
void util_rfc3339(uint64_t wall_ns, char *out, size_t outlen);

void util_uuid_generate(uint8_t out[16]);
void util_uuid_format(const uint8_t uuid[16], char out[37]);

/* Little-endian integers of on-disk formats. */
void util_put_le32(uint8_t *p, uint32_t v);
void util_put_le64(uint8_t *p, uint64_t v);
uint32_t util_get_le32(const uint8_t *p);
uint64_t util_get_le64(const uint8_t *p);

bool util_is_zero(const void *buf, size_t len);

/* posix_memalign(4096) or abort on OOM (allocation failure of a buffer we
 * sized ourselves is not recoverable input). */
void *util_alloc_aligned(size_t len);

/* pwrite all of buf, retrying short writes and EINTR: 0, or -errno
 * (-ENOSPC when the device accepts nothing more). */
int util_pwrite_all(int fd, const void *buf, size_t len, uint64_t off);

/* Keep freed block buffers in the heap (no mmap per buffer). */
void util_tune_malloc(void);

/* Write "pid\n" to path atomically (tmp + rename).  0 or -1 (errno). */
int util_write_pidfile(const char *path);
/* Write text to path atomically (tmp + rename).  0 or -1 (errno). */
int util_write_file_atomic(const char *path, const char *text);

/* Format bytes as "1.5 GiB" into out. */
void util_format_bytes(uint64_t bytes, char *out, size_t outlen);

#endif
