/* libaio engine on a libevent loop: completions arrive through an eventfd
 * (io_set_eventfd) and are dispatched to per-operation callbacks on the
 * loop thread.  Submissions beyond the ring depth are queued, never lost. */
#ifndef DUPLEX_AIO_H
#define DUPLEX_AIO_H

#include <libaio.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include <event2/event.h>

struct aio_ctx;
struct aio_op;

/* res: bytes transferred (always the full length on success; a short
 * transfer is resubmitted for the rest by the engine) or -errno. */
typedef void (*aio_cb)(struct aio_op *op, long res);

/* Embed in the caller's request; owned by the caller, must stay alive until
 * the callback has run. */
struct aio_op {
  struct iocb iocb;
  aio_cb cb;
  void *opaque;
  /* engine private */
  int fd;
  int kind;
  char *buf;
  size_t len, done;
  uint64_t off;
  TAILQ_ENTRY(aio_op) q;
};

struct aio_ctx *aio_ctx_new(struct event_base *base, unsigned depth,
                            char *err, size_t errlen);
void aio_ctx_free(struct aio_ctx *ctx);

void aio_pread(struct aio_ctx *ctx, struct aio_op *op, int fd, void *buf,
               size_t len, uint64_t off, aio_cb cb, void *opaque);
void aio_pwrite(struct aio_ctx *ctx, struct aio_op *op, int fd,
                const void *buf, size_t len, uint64_t off, aio_cb cb,
                void *opaque);
/* fdatasync through IOCB_CMD_FDSYNC; falls back to a synchronous
 * fdatasync (callback still deferred to the loop) if the kernel refuses. */
void aio_fdsync(struct aio_ctx *ctx, struct aio_op *op, int fd, aio_cb cb,
                void *opaque);

unsigned aio_inflight(const struct aio_ctx *ctx); /* submitted + queued */

#endif
