/* The apply backend on a block device or regular file (apply.h): writes,
 * reads and syncs through the libaio engine, zero ranges through
 * bdev_zero (synchronous, but the completion is delivered from the loop
 * like any other, so apply.c sees one kind of backend). */
#include <errno.h>
#include <stddef.h>

#include "apply.h"

#include "duplex.pb-c.h"

static void
apply_bdev_aio_cb(struct aio_op *aop, long res)
{
  struct apply_op *op = (struct apply_op *)((char *)aop -
                                            offsetof(struct apply_op, aio));
  struct apply *a = aop->opaque;
  int r = 0;

  if (res < 0)
    r = (int)res;
  else if (op->io == APPLY_IO_WRITE && (uint64_t)res != op->length)
    r = -EIO; /* the engine resubmits short writes; this cannot happen */
  apply_io_done(a, op, r);
}

static void
apply_bdev_zero_cb(evutil_socket_t fd, short what, void *arg)
{
  struct apply_bdev *b = arg;
  struct apply_op *op;

  (void)fd;
  (void)what;
  while ((op = TAILQ_FIRST(&b->zeroed)) != NULL) {
    TAILQ_REMOVE(&b->zeroed, op, bq);
    apply_io_done(b->apply, op, op->bres);
  }
}

int
apply_bdev_init(struct apply_bdev *b, struct event_base *base,
                struct aio_ctx *aio, struct bdev *dev)
{
  b->aio = aio;
  b->dev = dev;
  b->apply = NULL;
  TAILQ_INIT(&b->zeroed);
  b->zero_ev = NULL;
  if (base != NULL) {
    b->zero_ev = event_new(base, -1, 0, apply_bdev_zero_cb, b);
    if (b->zero_ev == NULL)
      return -1;
  }
  return 0;
}

void
apply_bdev_fini(struct apply_bdev *b)
{
  if (b->zero_ev != NULL)
    event_free(b->zero_ev);
  b->zero_ev = NULL;
}

void
apply_bdev_start(void *opaque, struct apply *a, struct apply_op *op)
{
  struct apply_bdev *b = opaque;

  switch (op->io) {
  case APPLY_IO_WRITE:
    aio_pwrite(b->aio, &op->aio, b->dev->fd, op->data, op->length,
               op->offset, apply_bdev_aio_cb, a);
    break;
  case APPLY_IO_SYNC:
    aio_fdsync(b->aio, &op->aio, b->dev->fd, apply_bdev_aio_cb, a);
    break;
  case APPLY_IO_READ:
    aio_pread(b->aio, &op->aio, b->dev->fd, op->mem, op->length, op->offset,
              apply_bdev_aio_cb, a);
    break;
  case APPLY_IO_ZERO:
    op->bres = bdev_zero(b->dev, op->offset, op->length,
                         (op->flags & DUPLEX__OP_FLAG__OP_FLAG_PUNCH) != 0);
    b->apply = a;
    TAILQ_INSERT_TAIL(&b->zeroed, op, bq);
    event_active(b->zero_ev, 0, 0);
    break;
  }
}
