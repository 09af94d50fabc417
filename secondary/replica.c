/* The replica volume, and the apply backend on it (common/apply-bdev.c). */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "internal.h"

#include "log.h"

struct replica {
  struct event_base *base;
  struct aio_ctx *aio;
  struct bdev dev;
  bool open;
  char path[PATH_MAX];
  struct apply_bdev be;         /* the apply backend on dev */
};

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
  if (apply_bdev_init(&r->be, base, aio, &r->dev) == -1) {
    free(r);
    return NULL;
  }
  return r;
}

void
replica_free(struct replica *r)
{
  if (r == NULL)
    return;
  apply_bdev_fini(&r->be);
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

void
replica_start(void *opaque, struct apply *a, struct apply_op *op)
{
  struct replica *r = opaque;

  apply_bdev_start(&r->be, a, op);
}
