/* A block device or image file as the block sender's source: reads through
 * the agent's aio engine, holes from SEEK_DATA/SEEK_HOLE. */
#include <stdlib.h>

#include "sender-bdev.h"

struct bdev_read {
  struct aio_op aio;
  sender_read_done_fn done;
  void *cookie;
};

static void
bdev_read_done(struct aio_op *op, long res)
{
  struct bdev_read *r = op->opaque;
  sender_read_done_fn done = r->done;
  void *cookie = r->cookie;

  free(r);
  done(cookie, res);
}

static void
bdev_src_read(void *arg, uint64_t off, uint64_t len, void *buf,
              sender_read_done_fn done, void *cookie)
{
  struct sender_bdev *sb = arg;
  struct bdev_read *r = calloc(1, sizeof *r);

  if (!r)
    abort();
  r->done = done;
  r->cookie = cookie;
  aio_pread(sb->aio, &r->aio, sb->vol->fd, buf, len, off, bdev_read_done, r);
}

static uint64_t
bdev_src_next_data(void *arg, uint64_t off)
{
  struct sender_bdev *sb = arg;
  return bdev_next_data(sb->vol, off);
}

static uint64_t
bdev_src_next_hole(void *arg, uint64_t off)
{
  struct sender_bdev *sb = arg;
  return bdev_next_hole(sb->vol, off);
}

struct sender_source
sender_bdev_source(struct sender_bdev *sb)
{
  struct sender_source src = {
    .name = sb->vol->path,
    .read = bdev_src_read,
    .next_data = bdev_src_next_data,
    .next_hole = bdev_src_next_hole,
    .arg = sb,
  };
  return src;
}
