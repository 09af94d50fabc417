/* failwrite: an LD_PRELOAD shim for fault-injection tests.  While a trigger
 * file exists, writes to one chosen file fail with EIO; the process is
 * otherwise untouched, so an agent can be driven into its metadata error
 * paths without test-only code in the agent.
 *
 *   FAILWRITE_PATH     the file whose writes fail (matched by device and
 *                      inode, whatever name or fd the process uses)
 *   FAILWRITE_TRIGGER  failures happen only while this path exists
 *   FAILWRITE_RANGE    optional OFFSET+LENGTH: only writes overlapping these
 *                      bytes fail (fsync/fdatasync then succeed); without
 *                      it every write and sync of the file fails
 *   FAILWRITE_LOG      optional: one line appended per injected failure
 *
 * Intercepted: write, writev, pwrite, pwrite64, pwritev, pwritev64,
 * pwritev2, fsync, fdatasync.  (libaio's io_submit is not: the agents'
 * data path is out of its reach by design.) */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

static void *
failwrite_next(const char *name)
{
  void *f = dlsym(RTLD_NEXT, name);
  if (!f) {
    fprintf(stderr, "failwrite: dlsym(%s): %s\n", name, dlerror());
    abort();
  }
  return f;
}

/* The byte range writes must overlap to fail; false if none is set. */
static bool
failwrite_range(uint64_t *start, uint64_t *len)
{
  const char *s = getenv("FAILWRITE_RANGE");
  char *end;

  if (!s || !*s)
    return false;
  *start = strtoull(s, &end, 0);
  if (*end != '+') {
    fprintf(stderr, "failwrite: FAILWRITE_RANGE=%s is not OFFSET+LENGTH\n",
            s);
    abort();
  }
  *len = strtoull(end + 1, NULL, 0);
  return true;
}

static void
failwrite_note(const char *call, int fd, int64_t off, size_t len)
{
  const char *path = getenv("FAILWRITE_LOG");
  int lfd;

  if (!path)
    return;
  lfd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (lfd == -1)
    return;
  dprintf(lfd, "%s fd %d offset %" PRId64 " length %zu: EIO\n", call, fd,
          off, len);
  close(lfd);
}

/* Should this call on fd fail?  off < 0: a sync (no byte range). */
static bool
failwrite_hit(const char *call, int fd, int64_t off, size_t len)
{
  const char *target = getenv("FAILWRITE_PATH");
  const char *trigger = getenv("FAILWRITE_TRIGGER");
  struct stat a, b;
  uint64_t start, rlen;
  int saved = errno;
  bool hit = false;

  if (!target || !trigger || access(trigger, F_OK) == -1)
    goto out;
  if (fstat(fd, &a) == -1 || stat(target, &b) == -1)
    goto out;
  if (a.st_dev != b.st_dev || a.st_ino != b.st_ino)
    goto out;
  if (failwrite_range(&start, &rlen)) {
    if (off < 0)
      goto out;
    if ((uint64_t)off >= start + rlen || (uint64_t)off + len <= start)
      goto out;
  }
  hit = true;
  failwrite_note(call, fd, off, len);
out:
  errno = saved;
  return hit;
}

static size_t
failwrite_iov_len(const struct iovec *iov, int n)
{
  size_t len = 0;
  for (int i = 0; i < n; i++)
    len += iov[i].iov_len;
  return len;
}

static int64_t
failwrite_pos(int fd)
{
  int saved = errno;
  off_t pos = lseek(fd, 0, SEEK_CUR);
  errno = saved;
  return pos < 0 ? 0 : (int64_t)pos;
}

#define FAILWRITE_EIO() do { errno = EIO; return -1; } while (0)

ssize_t
write(int fd, const void *buf, size_t len)
{
  static ssize_t (*real)(int, const void *, size_t);
  if (!real)
    real = failwrite_next("write");
  if (failwrite_hit("write", fd, failwrite_pos(fd), len))
    FAILWRITE_EIO();
  return real(fd, buf, len);
}

ssize_t
writev(int fd, const struct iovec *iov, int n)
{
  static ssize_t (*real)(int, const struct iovec *, int);
  if (!real)
    real = failwrite_next("writev");
  if (failwrite_hit("writev", fd, failwrite_pos(fd), failwrite_iov_len(iov, n)))
    FAILWRITE_EIO();
  return real(fd, iov, n);
}

ssize_t
pwrite(int fd, const void *buf, size_t len, off_t off)
{
  static ssize_t (*real)(int, const void *, size_t, off_t);
  if (!real)
    real = failwrite_next("pwrite");
  if (failwrite_hit("pwrite", fd, off, len))
    FAILWRITE_EIO();
  return real(fd, buf, len, off);
}

ssize_t
pwrite64(int fd, const void *buf, size_t len, off64_t off)
{
  static ssize_t (*real)(int, const void *, size_t, off64_t);
  if (!real)
    real = failwrite_next("pwrite64");
  if (failwrite_hit("pwrite64", fd, off, len))
    FAILWRITE_EIO();
  return real(fd, buf, len, off);
}

ssize_t
pwritev(int fd, const struct iovec *iov, int n, off_t off)
{
  static ssize_t (*real)(int, const struct iovec *, int, off_t);
  if (!real)
    real = failwrite_next("pwritev");
  if (failwrite_hit("pwritev", fd, off, failwrite_iov_len(iov, n)))
    FAILWRITE_EIO();
  return real(fd, iov, n, off);
}

ssize_t
pwritev64(int fd, const struct iovec *iov, int n, off64_t off)
{
  static ssize_t (*real)(int, const struct iovec *, int, off64_t);
  if (!real)
    real = failwrite_next("pwritev64");
  if (failwrite_hit("pwritev64", fd, off, failwrite_iov_len(iov, n)))
    FAILWRITE_EIO();
  return real(fd, iov, n, off);
}

ssize_t
pwritev2(int fd, const struct iovec *iov, int n, off_t off, int flags)
{
  static ssize_t (*real)(int, const struct iovec *, int, off_t, int);
  if (!real)
    real = failwrite_next("pwritev2");
  if (failwrite_hit("pwritev2", fd, off < 0 ? failwrite_pos(fd) : off,
                    failwrite_iov_len(iov, n)))
    FAILWRITE_EIO();
  return real(fd, iov, n, off, flags);
}

int
fsync(int fd)
{
  static int (*real)(int);
  if (!real)
    real = failwrite_next("fsync");
  if (failwrite_hit("fsync", fd, -1, 0))
    FAILWRITE_EIO();
  return real(fd);
}

int
fdatasync(int fd)
{
  static int (*real)(int);
  if (!real)
    real = failwrite_next("fdatasync");
  if (failwrite_hit("fdatasync", fd, -1, 0))
    FAILWRITE_EIO();
  return real(fd);
}
