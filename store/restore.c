/* Restoring a snapshot onto a file or block device from the store alone.
 * The target is read in 1 MiB steps and only blocks whose contents differ
 * from the snapshot's are written, so restoring onto an older state of the
 * same volume (a previous restore) writes only what changed; zero ranges
 * of a regular file are punched (they read back as zeros, cost no
 * space). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store-internal.h"
#include "util.h"

#define RESTORE_STEP 256u          /* blocks per read of the target */

int
restore_io(int fd, bool write_, void *buf, size_t len, uint64_t off,
           const char *path, char *err, size_t errlen)
{
  size_t done = 0;

  while (done < len) {
    ssize_t n = write_ ? pwrite(fd, (char *)buf + done, len - done,
                                (off_t)(off + done))
                       : pread(fd, (char *)buf + done, len - done,
                               (off_t)(off + done));
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 || (n == 0 && write_)) {
      int e = n < 0 ? errno : EIO;
      snprintf(err, errlen, "%s: %s of %zu bytes at %" PRIu64 ": %s", path,
               write_ ? "write" : "read", len - done, off + done,
               strerror(e));
      return -e;
    }
    if (n == 0) {               /* past the end of the file: zeros */
      memset((char *)buf + done, 0, len - done);
      return 0;
    }
    done += (size_t)n;
  }
  return 0;
}

int
restore_zero(int fd, bool blockdev, uint64_t off, uint64_t len,
             const char *path, char *err, size_t errlen)
{
  static const uint8_t zeros[STORE_BLOCK * 16];

  if (blockdev) {
    uint64_t range[2] = { off, len };
    if (ioctl(fd, BLKZEROOUT, range) == 0)
      return 0;
  } else if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                       (off_t)off, (off_t)len) == 0) {
    return 0;
  }
  while (len > 0) {
    size_t n = (size_t)MIN(len, sizeof zeros);
    int rc = restore_io(fd, true, (void *)zeros, n, off, path, err, errlen);
    if (rc < 0)
      return rc;
    off += n;
    len -= n;
  }
  return 0;
}

int
store_restore(struct store *s, uint64_t id, const char *path,
              struct restore_stats *st, char *err, size_t errlen)
{
  struct store_map map;
  struct stat sb;
  uint8_t *cur = NULL;
  uint64_t size, blocks;
  bool blockdev;
  int fd = -1, rc;

  memset(st, 0, sizeof *st);
  if ((rc = store_map_resolve(s, id, &map, err, errlen)) < 0)
    return rc;
  size = map.blocks * STORE_BLOCK;
  blocks = map.blocks;
  fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd == -1 || fstat(fd, &sb) == -1) {
    rc = -errno;
    snprintf(err, errlen, "%s: %s", path, strerror(-rc));
    goto out;
  }
  blockdev = S_ISBLK(sb.st_mode);
  if (blockdev) {
    uint64_t devsize;
    if (ioctl(fd, BLKGETSIZE64, &devsize) == -1) {
      rc = -errno;
      snprintf(err, errlen, "%s: size: %s", path, strerror(-rc));
      goto out;
    }
    if (devsize < size) {
      snprintf(err, errlen, "%s: the device holds %" PRIu64 " bytes, the "
               "snapshot %" PRIu64, path, devsize, size);
      rc = -ENOSPC;
      goto out;
    }
  } else if (S_ISREG(sb.st_mode)) {
    if ((uint64_t)sb.st_size != size && ftruncate(fd, (off_t)size) == -1) {
      rc = -errno;
      snprintf(err, errlen, "%s: cannot size it to %" PRIu64 " bytes: %s",
               path, size, strerror(-rc));
      goto out;
    }
  } else {
    snprintf(err, errlen, "%s: not a regular file or a block device", path);
    rc = -EINVAL;
    goto out;
  }
  cur = malloc((size_t)RESTORE_STEP * STORE_BLOCK);
  if (!cur)
    abort();
  for (uint64_t b0 = 0; b0 < blocks; b0 += RESTORE_STEP) {
    uint64_t n = MIN(RESTORE_STEP, blocks - b0), run = 0, rstart = 0;
    int kind = 0, k;            /* of the pending run: 1 write, 2 zero */

    rc = restore_io(fd, false, cur, (size_t)n * STORE_BLOCK,
                    b0 * STORE_BLOCK, path, err, errlen);
    if (rc < 0)
      goto out;
    /* Blocks to change are rewritten in place in cur; runs of them are
     * written (or zeroed) with one call each. */
    for (uint64_t i = 0; i <= n; i++) {
      const struct store_hash *h = NULL;
      uint8_t *have = cur + i * STORE_BLOCK;
      k = 0;
      if (i < n) {
        st->blocks++;
        h = store_map_lookup(&map, b0 + i);
        if (!h) {
          k = util_is_zero(have, STORE_BLOCK) ? 0 : 2;
        } else {
          struct store_hash got;
          if (util_is_zero(have, STORE_BLOCK)) {
            k = 1;
          } else {
            format_hash(have, STORE_BLOCK, &got);
            k = memcmp(got.b, h->b, STORE_HASH_LEN) == 0 ? 0 : 1;
          }
        }
      }
      if (run && k != kind) {
        if (kind == 1)
          rc = restore_io(fd, true, cur + (rstart - b0) * STORE_BLOCK,
                          (size_t)run * STORE_BLOCK, rstart * STORE_BLOCK,
                          path, err, errlen);
        else
          rc = restore_zero(fd, blockdev, rstart * STORE_BLOCK,
                            run * STORE_BLOCK, path, err, errlen);
        if (rc < 0)
          goto out;
        if (kind == 1)
          st->written_blocks += run;
        else
          st->zeroed_blocks += run;
        run = 0;
      }
      if (i == n)
        break;
      if (k == 0) {
        st->same_blocks++;
        continue;
      }
      if (k == 1 && (rc = store_read_blob(s, h, have, err, errlen)) < 0) {
        char sub[600];
        snprintf(sub, sizeof sub, "snapshot %" PRIu64 ", offset %" PRIu64
                 ": %s", id, (b0 + i) * STORE_BLOCK, err);
        snprintf(err, errlen, "%s", sub);
        goto out;
      }
      if (!run)
        rstart = b0 + i;
      kind = k;
      run++;
    }
  }
  if (fdatasync(fd) == -1) {
    rc = -errno;
    snprintf(err, errlen, "%s: fdatasync: %s", path, strerror(-rc));
    goto out;
  }
  rc = 0;

out:
  free(cur);
  if (fd >= 0)
    close(fd);
  store_map_free(&map);
  return rc;
}
