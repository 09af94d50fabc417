/* The record of a restore in progress, beside the metadata (META.restore):
 * what is restored from, and which regions of the volume are not restored
 * yet (the "todo" bitmap, the grain of the out-of-sync bitmap).  It
 * exists from the moment the restore may change the volume until the
 * volume and the replica hold the source; a start that finds it resumes
 * the restore.
 *
 * Layout: a 4 KiB header (below, little-endian, CRC-32C over its first
 * 68 bytes), then the todo bitmap's word image.  The file is created
 * whole (temporary file, fsync, rename, fsync of the directory); later
 * only bitmap pages change in place, each batch synced before the caller
 * relies on it.  A bit may be cleared on disk only after its region was
 * written and is durable on this side (or, for a client write, before the
 * write is started: then it must not be restored over). */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "crc32c.h"
#include "internal.h"

#define RS_MAGIC "DPXRST01"

void
restore_hdr_encode(const struct restore_hdr *h, uint8_t out[RESTORE_HDR_LEN])
{
  memset(out, 0, RESTORE_HDR_LEN);
  memcpy(out, RS_MAGIC, 8);
  util_put_le64(out + 8, h->source);
  util_put_le64(out + 16, h->safety);
  util_put_le64(out + 24, h->size);
  util_put_le64(out + 32, h->grain);
  util_put_le64(out + 40, h->flags);
  util_put_le64(out + 48, h->started_wall_ms);
  util_put_le64(out + 56, h->rate);
  out[64] = 1;                          /* version */
  util_put_le32(out + 68, crc32c(0, out, 68));
}

int
restore_hdr_decode(const uint8_t in[RESTORE_HDR_LEN], struct restore_hdr *h,
                   char *err, size_t errlen)
{
  uint32_t c = util_get_le32(in + 68);

  if (memcmp(in, RS_MAGIC, 8) != 0) {
    snprintf(err, errlen, "not a restore record (bad magic)");
    return -1;
  }
  if (crc32c(0, in, 68) != c) {
    snprintf(err, errlen, "restore record header checksum mismatch");
    return -1;
  }
  if (in[64] != 1) {
    snprintf(err, errlen, "restore record version %u, this build reads 1",
             in[64]);
    return -1;
  }
  memset(h, 0, sizeof *h);
  h->source = util_get_le64(in + 8);
  h->safety = util_get_le64(in + 16);
  h->size = util_get_le64(in + 24);
  h->grain = (uint32_t)util_get_le64(in + 32);
  h->flags = (uint32_t)util_get_le64(in + 40);
  h->started_wall_ms = util_get_le64(in + 48);
  h->rate = util_get_le64(in + 56);
  if (h->grain == 0 || h->grain % BDEV_ALIGN != 0 || h->size == 0) {
    snprintf(err, errlen, "restore record: bad grain %u or size %llu",
             h->grain, (unsigned long long)h->size);
    return -1;
  }
  return 0;
}

static int
rs_sync_dir(const char *path)
{
  char *dup = strdup(path);
  int fd, rc = 0;

  if (dup == NULL)
    return -ENOMEM;
  fd = open(dirname(dup), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  free(dup);
  if (fd < 0)
    return -errno;
  if (fsync(fd) == -1)
    rc = -errno;
  close(fd);
  return rc;
}

int
restore_file_create(const char *path, const struct restore_hdr *h,
                    const uint64_t *words, size_t nwords, int *fdp)
{
  char tmp[4200];
  uint8_t hdr[RESTORE_HDR_LEN];
  int fd, rc;

  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    return -errno;
  restore_hdr_encode(h, hdr);
  if ((rc = util_pwrite_all(fd, hdr, sizeof hdr, 0)) < 0 ||
      (rc = util_pwrite_all(fd, words, nwords * sizeof *words,
                            RESTORE_HDR_LEN)) < 0)
    goto fail;
  if (fdatasync(fd) == -1 || rename(tmp, path) == -1) {
    rc = -errno;
    goto fail;
  }
  if ((rc = rs_sync_dir(path)) < 0) {
    close(fd);
    return rc;
  }
  *fdp = fd;
  return 0;
fail:
  close(fd);
  unlink(tmp);
  return rc;
}

int
restore_file_open(const char *path, struct restore_hdr *h, int *fdp,
                  char *err, size_t errlen)
{
  uint8_t hdr[RESTORE_HDR_LEN];
  int fd = open(path, O_RDWR | O_CLOEXEC);
  ssize_t n;

  if (fd < 0) {
    if (errno == ENOENT)
      return 1;
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return -1;
  }
  n = pread(fd, hdr, sizeof hdr, 0);
  if (n != (ssize_t)sizeof hdr) {
    snprintf(err, errlen, "%s: %s", path,
             n < 0 ? strerror(errno) : "truncated header");
    close(fd);
    return -1;
  }
  if (restore_hdr_decode(hdr, h, err, errlen) == -1) {
    close(fd);
    return -1;
  }
  *fdp = fd;
  return 0;
}

int
restore_file_read_words(int fd, uint64_t *words, size_t nwords)
{
  size_t len = nwords * sizeof *words, done = 0;

  while (done < len) {
    ssize_t n = pread(fd, (char *)words + done, len - done,
                      RESTORE_HDR_LEN + (off_t)done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return -errno;
    if (n == 0)
      return -EIO;                      /* truncated */
    done += (size_t)n;
  }
  return 0;
}

int
restore_file_write_header(int fd, const struct restore_hdr *h)
{
  uint8_t hdr[RESTORE_HDR_LEN];
  int rc;

  restore_hdr_encode(h, hdr);
  if ((rc = util_pwrite_all(fd, hdr, sizeof hdr, 0)) < 0)
    return rc;
  return fdatasync(fd) == -1 ? -errno : 0;
}

int
restore_file_write_pages(int fd, const uint64_t *words, size_t nwords,
                         uint64_t first, uint64_t n)
{
  size_t total = nwords * sizeof *words;
  uint64_t off = first * BITMAP_PAGE;
  uint64_t len = n * BITMAP_PAGE;
  int rc;

  if (off >= total)
    return 0;
  if (len > total - off)
    len = total - off;
  rc = util_pwrite_all(fd, (const char *)words + off, len,
                       RESTORE_HDR_LEN + off);
  return rc < 0 ? rc : 0;
}

int
restore_file_remove(const char *path, int fd)
{
  if (fd >= 0)
    close(fd);
  if (unlink(path) == -1 && errno != ENOENT)
    return -errno;
  return rs_sync_dir(path);
}
