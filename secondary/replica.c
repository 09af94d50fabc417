/* The replica volume and the real apply backend: writes and syncs through
 * the libaio engine, zero ranges through bdev_zero (synchronous, but the
 * completion is delivered from the loop like any other, so apply.c sees one
 * kind of backend). */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "internal.h"

#include "duplex.pb-c.h"
#include "log.h"

TAILQ_HEAD(replica_doneq, apply_op);

struct replica {
  struct event_base *base;
  struct aio_ctx *aio;
  struct bdev dev;
  bool open;
  char path[PATH_MAX];
  struct event *zero_ev;        /* delivers zero completions */
  struct replica_doneq zeroed;
  struct apply *apply;          /* of the zeroed ops */
};

static void replica_zero_cb(evutil_socket_t fd, short what, void *arg);

struct replica *
replica_new(struct event_base *base, struct aio_ctx *aio, const char *path)
{
  struct replica *r = calloc(1, sizeof *r);

  if (r == NULL)
    return NULL;
  r->base = base;
  r->aio = aio;
  r->dev.fd = -1;
  snprintf(r->path, sizeof r->path, "%s", path);
  TAILQ_INIT(&r->zeroed);
  if (base != NULL) {
    r->zero_ev = event_new(base, -1, 0, replica_zero_cb, r);
    if (r->zero_ev == NULL) {
      free(r);
      return NULL;
    }
  }
  return r;
}

void
replica_free(struct replica *r)
{
  if (r == NULL)
    return;
  if (r->zero_ev != NULL)
    event_free(r->zero_ev);
  if (r->open)
    bdev_close(&r->dev);
  free(r);
}

/* bdev errors read "volume PATH: reason"; keep the reason. */
static const char *
replica_reason(const struct replica *r, const char *err)
{
  const char *p = strstr(err, r->path);

  if (p != NULL && strncmp(p + strlen(r->path), ": ", 2) == 0)
    return p + strlen(r->path) + 2;
  return err;
}

int
replica_open_existing(struct replica *r, char *err, size_t errlen)
{
  char e[512] = "";

  if (r->open)
    return 0;
  if (bdev_open(r->path, 0, &r->dev, e, sizeof e) == -1) {
    snprintf(err, errlen, "%s", replica_reason(r, e));
    return -1;
  }
  r->open = true;
  log_debug("secondary: replica %s: opened, %llu bytes%s", r->path,
            (unsigned long long)r->dev.size,
            r->dev.direct ? ", O_DIRECT" : "");
  return 0;
}

int
replica_prepare(struct replica *r, uint64_t size_bytes, char *err,
                size_t errlen)
{
  char e[512] = "";

  if (!r->open) {
    if (bdev_open(r->path, size_bytes, &r->dev, e, sizeof e) == -1) {
      snprintf(err, errlen, "secondary: replica %s: %s", r->path,
               replica_reason(r, e));
      return -EIO;
    }
    r->open = true;
    log_info("secondary: replica %s: opened, %llu bytes%s", r->path,
             (unsigned long long)r->dev.size,
             r->dev.direct ? ", O_DIRECT" : "");
  }
  if (r->dev.size < size_bytes) {
    snprintf(err, errlen,
             "secondary: replica %s is %llu bytes but the primary's volume "
             "is %llu bytes; enlarge the replica or point --volume at a "
             "bigger one",
             r->path, (unsigned long long)r->dev.size,
             (unsigned long long)size_bytes);
    return -ENOSPC;
  }
  return 0;
}

int
replica_fd(const struct replica *r)
{
  return r->dev.fd;
}

bool
replica_is_open(const struct replica *r)
{
  return r->open;
}

uint64_t
replica_size(const struct replica *r)
{
  return r->open ? r->dev.size : 0;
}

const char *
replica_path(const struct replica *r)
{
  return r->path;
}

int
replica_sync(struct replica *r)
{
  if (!r->open)
    return 0;
  if (fdatasync(r->dev.fd) == -1)
    return -errno;
  return 0;
}

static void
replica_aio_cb(struct aio_op *aop, long res)
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
replica_zero_cb(evutil_socket_t fd, short what, void *arg)
{
  struct replica *r = arg;
  struct apply_op *op;

  (void)fd;
  (void)what;
  while ((op = TAILQ_FIRST(&r->zeroed)) != NULL) {
    TAILQ_REMOVE(&r->zeroed, op, bq);
    apply_io_done(r->apply, op, op->bres);
  }
}

void
replica_start(void *opaque, struct apply *a, struct apply_op *op)
{
  struct replica *r = opaque;

  switch (op->io) {
  case APPLY_IO_WRITE:
    aio_pwrite(r->aio, &op->aio, r->dev.fd, op->data, op->length, op->offset,
               replica_aio_cb, a);
    break;
  case APPLY_IO_SYNC:
    aio_fdsync(r->aio, &op->aio, r->dev.fd, replica_aio_cb, a);
    break;
  case APPLY_IO_READ:
    aio_pread(r->aio, &op->aio, r->dev.fd, op->mem, op->length, op->offset,
              replica_aio_cb, a);
    break;
  case APPLY_IO_ZERO:
    op->bres = bdev_zero(&r->dev, op->offset, op->length,
                         (op->flags & DUPLEX__OP_FLAG__OP_FLAG_PUNCH) != 0);
    r->apply = a;
    TAILQ_INSERT_TAIL(&r->zeroed, op, bq);
    event_active(r->zero_ev, 0, 0);
    break;
  }
}
