/* Small helpers shared by both agents.  The parsers (sizes, endpoints) do
 * no I/O; the socket helpers return non-blocking, close-on-exec fds. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <malloc.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

int
util_parse_size(const char *s, uint64_t *out, char *err, size_t errlen)
{
  static const char units[] = "KMGT";
  const char *p = s;
  uint64_t v = 0;
  unsigned shift = 0;

  if (!isdigit((unsigned char)*p)) {
    snprintf(err, errlen, "invalid size \"%s\": expected a number of bytes "
             "with an optional K, M, G or T suffix, e.g. 64M", s);
    return -1;
  }
  for (; isdigit((unsigned char)*p); p++) {
    unsigned d = (unsigned)(*p - '0');
    if (v > (UINT64_MAX - d) / 10)
      goto too_large;
    v = v * 10 + d;
  }
  if (*p) {
    const char *u = strchr(units, toupper((unsigned char)*p));
    if (u) {
      shift = 10 * (unsigned)(u - units + 1);
      p++;
      if (p[0] == 'i' && p[1] == 'B')
        p += 2;
      else if (*p == 'B' || *p == 'b')
        p++;
    } else if (*p == 'B' || *p == 'b') {
      p++;
    }
  }
  if (*p) {
    snprintf(err, errlen, "invalid size \"%s\": unexpected \"%s\"; use a "
             "number of bytes with an optional K, M, G or T suffix", s, p);
    return -1;
  }
  if (shift && v > (UINT64_MAX >> shift))
    goto too_large;
  *out = v << shift;
  return 0;

too_large:
  snprintf(err, errlen, "invalid size \"%s\": too large", s);
  return -1;
}

/* "250ms", "2s", "1.5s", "10m", "1h", "7d", or a bare number of seconds;
 * whole milliseconds. */
int
util_parse_duration_ms(const char *s, uint64_t *out, char *err,
                       size_t errlen)
{
  static const struct {
    const char *name;
    uint64_t ms;
  } units[] = {
    { "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "min", 60000 },
    { "h", 3600000 }, { "d", 86400000 }, { "w", 604800000 },
  };
  const char *p = s;
  uint64_t whole = 0, frac = 0, frac_div = 1, unit = 1000, v;
  size_t i;

  if (!isdigit((unsigned char)*p))
    goto bad;
  for (; isdigit((unsigned char)*p); p++) {
    if (whole > (UINT64_MAX / 10 - 9))
      goto too_large;
    whole = whole * 10 + (uint64_t)(*p - '0');
  }
  if (*p == '.') {
    p++;
    if (!isdigit((unsigned char)*p))
      goto bad;
    for (; isdigit((unsigned char)*p); p++)
      if (frac_div < 1000000) {
        frac = frac * 10 + (uint64_t)(*p - '0');
        frac_div *= 10;
      }
  }
  if (*p) {
    for (i = 0; i < sizeof units / sizeof units[0]; i++)
      if (strcmp(p, units[i].name) == 0)
        break;
    if (i == sizeof units / sizeof units[0])
      goto bad;
    unit = units[i].ms;
  }
  if (whole > UINT64_MAX / unit / 2)
    goto too_large;
  v = whole * unit + frac * unit / frac_div;
  *out = v;
  return 0;

bad:
  snprintf(err, errlen, "invalid duration \"%s\": expected a number with "
           "an optional unit ms, s, m, h, d or w (seconds without one), "
           "e.g. 500ms or 10m", s);
  return -1;
too_large:
  snprintf(err, errlen, "invalid duration \"%s\": too large", s);
  return -1;
}

static int
util_parse_port(const char *s, const char *whole, struct endpoint *out,
                char *err, size_t errlen)
{
  size_t n = strlen(s);
  unsigned long v;

  if (n == 0 || n > 5 || strspn(s, "0123456789") != n) {
    snprintf(err, errlen, "invalid endpoint \"%s\": port \"%s\" is not a "
             "number from 0 to 65535", whole, s);
    return -1;
  }
  v = strtoul(s, NULL, 10);
  if (v > 65535) {
    snprintf(err, errlen, "invalid endpoint \"%s\": port %lu is out of range "
             "0..65535", whole, v);
    return -1;
  }
  snprintf(out->port, sizeof out->port, "%lu", v);
  return 0;
}

/* "unix:PATH", "HOST:PORT" or "[V6ADDR]:PORT".  An empty host (":10809")
 * means every address when listening and the loopback when connecting. */
int
util_parse_endpoint(const char *s, struct endpoint *out, char *err,
                    size_t errlen)
{
  const char *host, *colon;
  size_t hostlen;

  memset(out, 0, sizeof *out);
  if (strncmp(s, "unix:", 5) == 0) {
    const char *path = s + 5;
    if (!*path) {
      snprintf(err, errlen, "invalid endpoint \"%s\": empty socket path", s);
      return -1;
    }
    if (strlen(path) >= sizeof out->path) {
      snprintf(err, errlen, "invalid endpoint \"%s\": socket path longer "
               "than %zu bytes", s, sizeof out->path - 1);
      return -1;
    }
    out->is_unix = true;
    strcpy(out->path, path);
    return 0;
  }

  if (s[0] == '[') {
    const char *close = strchr(s, ']');
    if (!close || close[1] != ':') {
      snprintf(err, errlen, "invalid endpoint \"%s\": expected [ADDRESS]:PORT",
               s);
      return -1;
    }
    host = s + 1;
    hostlen = (size_t)(close - host);
    colon = close + 1;
  } else {
    colon = strrchr(s, ':');
    if (!colon) {
      snprintf(err, errlen, "invalid endpoint \"%s\": expected HOST:PORT or "
               "unix:PATH", s);
      return -1;
    }
    if (memchr(s, ':', (size_t)(colon - s))) {
      snprintf(err, errlen, "invalid endpoint \"%s\": write IPv6 addresses "
               "in brackets, e.g. [::1]:10809", s);
      return -1;
    }
    host = s;
    hostlen = (size_t)(colon - s);
  }
  if (hostlen >= sizeof out->host) {
    snprintf(err, errlen, "invalid endpoint \"%s\": host name too long", s);
    return -1;
  }
  memcpy(out->host, host, hostlen);
  out->host[hostlen] = '\0';
  return util_parse_port(colon + 1, s, out, err, errlen);
}

void
util_endpoint_str(const struct endpoint *ep, char *out, size_t outlen)
{
  if (ep->is_unix)
    snprintf(out, outlen, "unix:%s", ep->path);
  else if (strchr(ep->host, ':'))
    snprintf(out, outlen, "[%s]:%s", ep->host, ep->port);
  else
    snprintf(out, outlen, "%s:%s", ep->host, ep->port);
}

static void
util_set_nodelay(int fd)
{
  int one = 1;
  /* Replication and NBD traffic is latency bound: never wait for Nagle. */
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* A socket file at path that nobody accepts on is left over from a process
 * that died: remove it.  One that still answers belongs to a live process
 * and is not stolen. */
static int
util_unlink_stale(const char *path, char *err, size_t errlen)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  struct stat st;
  int fd, r;

  if (lstat(path, &st) == -1)
    return errno == ENOENT ? 0 : -1;
  if (!S_ISSOCK(st.st_mode)) {
    snprintf(err, errlen, "cannot listen on unix:%s: the path exists and is "
             "not a socket; remove it or choose another path", path);
    errno = EEXIST;
    return -1;
  }
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd == -1)
    return -1;
  strcpy(sa.sun_path, path);
  r = connect(fd, (struct sockaddr *)&sa, sizeof sa);
  if (r == 0 || errno == EAGAIN) {
    close(fd);
    snprintf(err, errlen, "cannot listen on unix:%s: another process is "
             "listening there; stop it or choose another path", path);
    errno = EADDRINUSE;
    return -1;
  }
  close(fd);
  if (unlink(path) == -1 && errno != ENOENT)
    return -1;
  return 0;
}

static int
util_listen_unix(const struct endpoint *ep, char *err, size_t errlen)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  int fd = -1, saved;

  if (util_unlink_stale(ep->path, err, errlen) == -1) {
    if (errno != EEXIST && errno != EADDRINUSE)
      snprintf(err, errlen, "cannot listen on unix:%s: %m", ep->path);
    return -1;
  }
  strcpy(sa.sun_path, ep->path);
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd == -1 || bind(fd, (struct sockaddr *)&sa, sizeof sa) == -1 ||
      listen(fd, SOMAXCONN) == -1)
    goto err;
  return fd;

err:
  saved = errno;
  snprintf(err, errlen, "cannot listen on unix:%s: %m", ep->path);
  if (fd != -1)
    close(fd);
  errno = saved;
  return -1;
}

static int
util_getaddrinfo(const struct endpoint *ep, int flags, struct addrinfo **res,
                 char *err, size_t errlen)
{
  struct addrinfo hints = {
    .ai_family = AF_UNSPEC,
    .ai_socktype = SOCK_STREAM,
    .ai_flags = flags | AI_NUMERICSERV | AI_ADDRCONFIG,
  };
  char name[400];
  int r;

  r = getaddrinfo(ep->host[0] ? ep->host : NULL, ep->port, &hints, res);
  if (r == EAI_ADDRFAMILY || r == EAI_NONAME) {
    /* AI_ADDRCONFIG hides loopback-only families on hosts without other
     * addresses (CI containers); retry without it. */
    hints.ai_flags &= ~AI_ADDRCONFIG;
    r = getaddrinfo(ep->host[0] ? ep->host : NULL, ep->port, &hints, res);
  }
  if (r != 0) {
    util_endpoint_str(ep, name, sizeof name);
    snprintf(err, errlen, "cannot resolve %s: %s", name,
             r == EAI_SYSTEM ? strerror(errno) : gai_strerror(r));
    errno = r == EAI_SYSTEM ? errno : EADDRNOTAVAIL;
    return -1;
  }
  return 0;
}

int
util_listen(const struct endpoint *ep, char *err, size_t errlen)
{
  struct addrinfo *res, *ai;
  char name[400];
  int fd = -1, one = 1, saved = 0;

  if (ep->is_unix)
    return util_listen_unix(ep, err, errlen);

  if (util_getaddrinfo(ep, AI_PASSIVE, &res, err, errlen) == -1)
    return -1;
  for (ai = res; ai; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                ai->ai_protocol);
    if (fd == -1) {
      saved = errno;
      continue;
    }
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    util_set_nodelay(fd);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
        listen(fd, SOMAXCONN) == 0)
      break;
    saved = errno;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd == -1) {
    util_endpoint_str(ep, name, sizeof name);
    errno = saved;
    snprintf(err, errlen, "cannot listen on %s: %m", name);
    return -1;
  }
  return fd;
}

int
util_connect_start(const struct endpoint *ep, char *err, size_t errlen)
{
  struct addrinfo *res = NULL, *ai;
  char name[400];
  int fd = -1, saved = 0;

  util_endpoint_str(ep, name, sizeof name);
  if (ep->is_unix) {
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    strcpy(sa.sun_path, ep->path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd == -1 || connect(fd, (struct sockaddr *)&sa, sizeof sa) == -1) {
      saved = errno;
      if (fd != -1)
        close(fd);
      errno = saved;
      snprintf(err, errlen, "cannot connect to %s: %m", name);
      return -1;
    }
    return fd;
  }

  /* Name resolution is synchronous; peers are configured by address or a
   * name from /etc/hosts or a local resolver. */
  if (util_getaddrinfo(ep, 0, &res, err, errlen) == -1)
    return -1;
  for (ai = res; ai; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                ai->ai_protocol);
    if (fd == -1) {
      saved = errno;
      continue;
    }
    util_set_nodelay(fd);
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 || errno == EINPROGRESS)
      break;
    saved = errno;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd == -1) {
    errno = saved;
    snprintf(err, errlen, "cannot connect to %s: %m", name);
    return -1;
  }
  return fd;
}

int
util_local_port(int fd)
{
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;

  if (getsockname(fd, (struct sockaddr *)&ss, &len) == -1)
    return -1;
  if (ss.ss_family == AF_INET)
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
  if (ss.ss_family == AF_INET6)
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  return -1;
}

void
util_format_sockaddr(const struct sockaddr *sa, char *out, size_t outlen)
{
  char host[INET6_ADDRSTRLEN] = "?";

  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
    snprintf(out, outlen, "%s:%u", host, ntohs(in->sin_port));
  } else if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
    snprintf(out, outlen, "[%s]:%u", host, ntohs(in6->sin6_port));
  } else {
    snprintf(out, outlen, "unix");
  }
}

int
util_parse_connect_interval(const char *s, unsigned *out, char *err,
                            size_t errlen)
{
  char why[128];
  uint64_t ms;

  if (util_parse_duration_ms(s, &ms, why, sizeof why) == -1) {
    snprintf(err, errlen, "--connect-interval %s: %s", s, why);
    return -1;
  }
  if (ms < 100 || ms > 3600 * 1000) {
    snprintf(err, errlen, "--connect-interval %s: must be 100ms..1h", s);
    return -1;
  }
  *out = (unsigned)ms;
  return 0;
}

static uint64_t
util_clock_ns(clockid_t clock)
{
  struct timespec ts;

  clock_gettime(clock, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t
util_wall_ns(void)
{
  return util_clock_ns(CLOCK_REALTIME);
}
void
util_rfc3339(uint64_t wall_ns, char *out, size_t outlen)
{
  time_t t = (time_t)(wall_ns / 1000000000ull);
  struct tm tm;

  gmtime_r(&t, &tm);
  strftime(out, outlen, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

uint64_t
util_now_ns(void)
{
  return util_clock_ns(CLOCK_MONOTONIC);
}

uint64_t
util_now_ms(void)
{
  return util_now_ns() / 1000000u;
}

void
util_uuid_generate(uint8_t out[16])
{
  size_t got = 0;

  while (got < 16) {
    ssize_t r = getrandom(out + got, 16 - got, 0);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      /* getrandom exists since Linux 3.17; nothing sane to fall back to. */
      abort();
    }
    got += (size_t)r;
  }
  out[6] = (uint8_t)((out[6] & 0x0f) | 0x40); /* version 4 */
  out[8] = (uint8_t)((out[8] & 0x3f) | 0x80); /* RFC 4122 variant */
}

void
util_uuid_format(const uint8_t uuid[16], char out[37])
{
  static const char hex[] = "0123456789abcdef";
  char *p = out;

  for (int i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10)
      *p++ = '-';
    *p++ = hex[uuid[i] >> 4];
    *p++ = hex[uuid[i] & 15];
  }
  *p = '\0';
}

/* If the first 16 bytes are zero and every byte equals the one 16 bytes
 * before it, all are zero.  memcmp is vectorised, so this runs at memory
 * bandwidth without a hand-written loop. */
bool
util_is_zero(const void *buf, size_t len)
{
  const unsigned char *p = buf;
  size_t head = MIN(len, (size_t)16);

  for (size_t i = 0; i < head; i++)
    if (p[i])
      return false;
  if (len <= 16)
    return true;
  return memcmp(p, p + 16, len - 16) == 0;
}

void *
util_alloc_aligned(size_t len)
{
  void *p;

  if (len == 0)
    len = 4096;
  if (posix_memalign(&p, 4096, len) != 0) {
    fprintf(stderr, "out of memory allocating %zu bytes\n", len);
    abort();
  }
  return p;
}

int
util_pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
  const char *p = buf;

  while (len > 0) {
    ssize_t r = pwrite(fd, p, len, (off_t)off);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (r == 0)
      return -ENOSPC;
    p += r;
    len -= (size_t)r;
    off += (uint64_t)r;
  }
  return 0;
}

void
util_tune_malloc(void)
{
  /* Block buffers (up to 32 MiB) come and go at line rate: keep them in
   * the heap instead of mmap/munmap per buffer, which costs a page fault
   * and a page clear per 4 KiB every time.  The heap then stays at the peak
   * of buffers in flight, which the agents bound. */
  mallopt(M_MMAP_THRESHOLD, 64 * 1024 * 1024);
  mallopt(M_TRIM_THRESHOLD, 256 * 1024 * 1024);
}

int
util_write_file_atomic(const char *path, const char *text)
{
  char tmp[4096];
  size_t len = strlen(text);
  int fd, saved;
  ssize_t r;

  if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path,
                       (long)getpid()) >= sizeof tmp) {
    errno = ENAMETOOLONG;
    return -1;
  }
  fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd == -1)
    return -1;
  r = write(fd, text, len);
  if (r != (ssize_t)len) {
    if (r >= 0)
      errno = EIO;
    goto err;
  }
  if (close(fd) == -1) {
    fd = -1;
    goto err;
  }
  fd = -1;
  if (rename(tmp, path) == -1)
    goto err;
  return 0;

err:
  saved = errno;
  if (fd != -1)
    close(fd);
  unlink(tmp);
  errno = saved;
  return -1;
}

int
util_write_pidfile(const char *path)
{
  char line[32];

  snprintf(line, sizeof line, "%ld\n", (long)getpid());
  return util_write_file_atomic(path, line);
}

void
util_format_bytes(uint64_t bytes, char *out, size_t outlen)
{
  static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB",
                                       "PiB", "EiB" };
  unsigned u = 0;

  while (u + 1 < ARRAY_SIZE(units) && bytes >= (1ull << (10 * (u + 1))))
    u++;
  if (u == 0 || bytes % (1ull << (10 * u)) == 0)
    snprintf(out, outlen, "%" PRIu64 " %s", bytes >> (10 * u), units[u]);
  else
    snprintf(out, outlen, "%.1f %s", (double)bytes / (double)(1ull << (10 * u)),
             units[u]);
}

void
util_put_le32(uint8_t *p, uint32_t v)
{
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

void
util_put_le64(uint8_t *p, uint64_t v)
{
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

uint32_t
util_get_le32(const uint8_t *p)
{
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}

uint64_t
util_get_le64(const uint8_t *p)
{
  return (uint64_t)util_get_le32(p) | (uint64_t)util_get_le32(p + 4) << 32;
}
