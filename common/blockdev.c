/* The local volume: open (O_DIRECT where possible), size, zeroing and
 * allocation queries.  I/O on the data path goes through aio.c; the
 * functions here are synchronous and used off the hot path. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blockdev.h"
#include "log.h"
#include "util.h"

#define BDEV_ZERO_CHUNK (1024u * 1024)
/* A write-back at open taking longer than this is logged. */
#define BDEV_WRITEBACK_LOG_MS 100

static int
bdev_create(const char *path, uint64_t size, char *err, size_t errlen)
{
  char sz[32];
  int fd;

  if (size % BDEV_ALIGN) {
    snprintf(err, errlen, "volume %s: size %" PRIu64 " is not a multiple of "
             "%u bytes", path, size, BDEV_ALIGN);
    return -1;
  }
  fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd == -1) {
    if (errno == EEXIST)
      return 0; /* created meanwhile: open it like any existing one */
    snprintf(err, errlen, "volume %s: cannot create: %m", path);
    return -1;
  }
  if (ftruncate(fd, (off_t)size) == -1) {
    snprintf(err, errlen, "volume %s: cannot size new file to %" PRIu64
             " bytes: %m", path, size);
    close(fd);
    unlink(path);
    return -1;
  }
  close(fd);
  util_format_bytes(size, sz, sizeof sz);
  log_info("volume %s: created a sparse file of %s", path, sz);
  return 0;
}

/* Data written to the volume through the page cache just before the agent
 * starts (an image copied in with cp, dd or head) may still be dirty in the
 * kernel, and O_DIRECT bypasses the cache.  Write it all back, durably,
 * once, here, before the first O_DIRECT access and before any of it is
 * replicated, rather than rely on each direct read writing back the pages
 * it covers (Linux's file systems and block devices do, range by range
 * inside io_submit, but without a cache flush: a power cut could then take
 * data the secondary already holds).  EINVAL: the file cannot be synced. */
static int
bdev_writeback(struct bdev *b, char *err, size_t errlen)
{
  uint64_t t0 = util_now_ms(), ms;

  if (fdatasync(b->fd) == -1 && errno != EINVAL) {
    snprintf(err, errlen, "volume %s: cannot write back the data the kernel "
             "has cached for it (fdatasync): %m; recent writes to it through "
             "the page cache may be lost, check the disk", b->path);
    return -1;
  }
  ms = util_now_ms() - t0;
  if (ms > BDEV_WRITEBACK_LOG_MS)
    log_info("volume %s: wrote back the data the kernel had cached for it "
             "in %.1f s, before the first O_DIRECT access", b->path,
             ms / 1000.0);
  return 0;
}

static int
bdev_open_mode(const char *path, uint64_t create_size, bool readonly,
               struct bdev *out, char *err, size_t errlen)
{
  struct stat st;
  int mode = readonly ? O_RDONLY : O_RDWR;
  int fd;

  memset(out, 0, sizeof *out);
  out->fd = -1;
  if (strlen(path) >= sizeof out->path) {
    snprintf(err, errlen, "volume %s: path too long", path);
    return -1;
  }
  if (create_size > 0 && access(path, F_OK) == -1 && errno == ENOENT &&
      bdev_create(path, create_size, err, errlen) == -1)
    return -1;

  out->direct = true;
  fd = open(path, mode | O_DIRECT | O_CLOEXEC);
  if (fd == -1 && errno == EINVAL) {
    log_info("volume %s: the file system does not support O_DIRECT; using "
             "buffered I/O", path);
    out->direct = false;
    fd = open(path, mode | O_CLOEXEC);
  }
  if (fd == -1) {
    snprintf(err, errlen, "volume %s: cannot open: %m", path);
    return -1;
  }
  out->fd = fd;
  strcpy(out->path, path);

  if (fstat(fd, &st) == -1) {
    snprintf(err, errlen, "volume %s: stat: %m", path);
    goto err;
  }
  if (S_ISBLK(st.st_mode)) {
    out->is_blockdev = true;
    if (ioctl(fd, BLKGETSIZE64, &out->size) == -1) {
      snprintf(err, errlen, "volume %s: cannot get the device size: %m",
               path);
      goto err;
    }
  } else if (S_ISREG(st.st_mode)) {
    out->size = (uint64_t)st.st_size;
  } else {
    snprintf(err, errlen, "volume %s: not a regular file or block device",
             path);
    goto err;
  }
  /* Two agents on one volume would corrupt it: take an advisory lock that
   * a second agent (or another copy of this one) would see. */
  if (flock(fd, LOCK_EX | LOCK_NB) == -1) {
    if (errno == EWOULDBLOCK)
      snprintf(err, errlen, "volume %s: in use by another process (it holds "
               "a lock on it); stop that process first", path);
    else
      snprintf(err, errlen, "volume %s: cannot lock: %m", path);
    goto err;
  }
  if (out->size == 0) {
    snprintf(err, errlen, "volume %s: size is 0; give it a size first, e.g. "
             "truncate -s 1G %s", path, path);
    goto err;
  }
  if (out->size % BDEV_ALIGN) {
    snprintf(err, errlen, "volume %s: size %" PRIu64 " is not a multiple of "
             "%u bytes", path, out->size, BDEV_ALIGN);
    goto err;
  }
  /* Read-only (tail capture): whatever writes the device writes it back
   * itself, and reads see each write once it has completed. */
  if (out->direct && !readonly && bdev_writeback(out, err, errlen) == -1)
    goto err;
  return 0;

err:
  close(fd);
  out->fd = -1;
  return -1;
}

int
bdev_open(const char *path, uint64_t create_size, struct bdev *out,
          char *err, size_t errlen)
{
  return bdev_open_mode(path, create_size, false, out, err, errlen);
}

int
bdev_open_readonly(const char *path, struct bdev *out, char *err,
                   size_t errlen)
{
  return bdev_open_mode(path, 0, true, out, err, errlen);
}

void
bdev_close(struct bdev *b)
{
  if (b->fd != -1)
    close(b->fd);
  b->fd = -1;
}

static int
bdev_pread_all(int fd, char *buf, size_t len, uint64_t off)
{
  while (len > 0) {
    ssize_t r = pread(fd, buf, len, (off_t)off);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (r == 0)
      return -EIO;
    buf += r;
    len -= (size_t)r;
    off += (uint64_t)r;
  }
  return 0;
}

/* Zero part of one BDEV_ALIGN block by read-modify-write, for O_DIRECT
 * volumes where a partial block cannot be written directly. */
static int
bdev_zero_partial(struct bdev *b, char *bounce, uint64_t off, uint64_t len)
{
  uint64_t block = off - off % BDEV_ALIGN;
  int r;

  r = bdev_pread_all(b->fd, bounce, BDEV_ALIGN, block);
  if (r < 0)
    return r;
  memset(bounce + (off - block), 0, len);
  return util_pwrite_all(b->fd, bounce, BDEV_ALIGN, block);
}

/* Fallback for devices and file systems without fallocate zeroing. */
static int
bdev_zero_write(struct bdev *b, uint64_t off, uint64_t len)
{
  char *zeroes = util_alloc_aligned(BDEV_ZERO_CHUNK);
  char *bounce = util_alloc_aligned(BDEV_ALIGN);
  uint64_t end = off + len;
  int r = 0;

  memset(zeroes, 0, BDEV_ZERO_CHUNK);
  while (off < end) {
    uint64_t n = MIN(end - off, (uint64_t)BDEV_ZERO_CHUNK);

    if (b->direct && (off % BDEV_ALIGN || n < BDEV_ALIGN)) {
      /* Unaligned head or short tail: up to the next block boundary. */
      n = MIN(n, BDEV_ALIGN - off % BDEV_ALIGN);
      r = bdev_zero_partial(b, bounce, off, n);
    } else {
      if (b->direct)
        n -= n % BDEV_ALIGN; /* the unaligned tail comes next round */
      r = util_pwrite_all(b->fd, zeroes, n, off);
    }
    if (r < 0)
      break;
    off += n;
  }
  free(bounce);
  free(zeroes);
  return r;
}

static bool
bdev_fallocate_unsupported(int e)
{
  return e == EOPNOTSUPP || e == EINVAL || e == ENODEV || e == ENOSYS;
}

int
bdev_zero(struct bdev *b, uint64_t off, uint64_t len, bool punch)
{
  if (len == 0)
    return 0;
  if (off > b->size || len > b->size - off)
    return -EINVAL;

  /* Punching deallocates and reads back zeroes; on a block device it only
   * succeeds where the device guarantees zeroes after a discard. */
  if (punch) {
    if (fallocate(b->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  (off_t)off, (off_t)len) == 0)
      return 0;
    if (!bdev_fallocate_unsupported(errno))
      return -errno;
  }
  if (fallocate(b->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, (off_t)off,
                (off_t)len) == 0)
    return 0;
  if (!bdev_fallocate_unsupported(errno))
    return -errno;
  return bdev_zero_write(b, off, len);
}

uint64_t
bdev_next_data(struct bdev *b, uint64_t off)
{
  off_t r;

  if (off >= b->size)
    return b->size;
  if (b->is_blockdev)
    return off;
  r = lseek(b->fd, (off_t)off, SEEK_DATA);
  if (r == -1)
    return errno == ENXIO ? b->size : off;
  return MIN((uint64_t)r, b->size);
}

uint64_t
bdev_next_hole(struct bdev *b, uint64_t off)
{
  off_t r;

  if (off >= b->size || b->is_blockdev)
    return b->size;
  r = lseek(b->fd, (off_t)off, SEEK_HOLE);
  if (r == -1)
    return b->size;
  return MIN((uint64_t)r, b->size);
}
