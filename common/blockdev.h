/* The local volume of an agent: a regular file or a block device, opened
 * with O_DIRECT where the file system allows it.  All offsets and lengths
 * given to the aio engine for such a volume are multiples of BDEV_ALIGN and
 * buffers come from util_alloc_aligned. */
#ifndef DUPLEX_BLOCKDEV_H
#define DUPLEX_BLOCKDEV_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BDEV_ALIGN 4096u

struct bdev {
  int fd;
  bool is_blockdev;
  bool direct;      /* O_DIRECT in effect */
  uint64_t size;
  char path[PATH_MAX];
};

/* Open path read-write.  If it does not exist and create_size > 0, create a
 * sparse regular file of that size.  Refuses sizes that are not a multiple
 * of BDEV_ALIGN.  With O_DIRECT, first writes back (fdatasync) whatever the
 * page cache holds for it, logged when slow.  0, or -1 with
 * "volume PATH: ..." in err. */
int bdev_open(const char *path, uint64_t create_size, struct bdev *out,
              char *err, size_t errlen);
/* Open for reading only (a device that others write: tail capture). */
int bdev_open_readonly(const char *path, struct bdev *out, char *err,
                       size_t errlen);
void bdev_close(struct bdev *b);

/* Make [off, off+len) read as zeroes, synchronously: punch=true deallocates
 * (FALLOC_FL_PUNCH_HOLE), else FALLOC_FL_ZERO_RANGE; falls back to writing
 * zeroes where fallocate is not supported.  0 or -errno. */
int bdev_zero(struct bdev *b, uint64_t off, uint64_t len, bool punch);

/* For resync: the first offset >= off that may hold data (SEEK_DATA on
 * regular files; off itself on block devices or when unsupported), and the
 * end of that data extent (SEEK_HOLE, or size). */
uint64_t bdev_next_data(struct bdev *b, uint64_t off);
uint64_t bdev_next_hole(struct bdev *b, uint64_t off);

#endif
