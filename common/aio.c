/* libaio engine on a libevent loop.  The kernel signals completions on an
 * eventfd (io_set_eventfd); the loop reads it and reaps events with a zero
 * timeout.  Operations beyond the ring depth wait in a FIFO queue.  Every
 * callback runs from the event loop, never from inside aio_pread/pwrite/
 * fdsync, so callers may submit while holding state they are building.
 *
 * Submissions are gathered until the loop runs the submit event, so what
 * one callback queues (a burst of replicated writes, a batch of resync
 * reads) reaches the kernel in one io_submit: one syscall, and one block
 * plug, so one notification of a virtio disk instead of one per op. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "aio.h"
#include "log.h"
#include "util.h"

enum aio_kind { AIO_READ, AIO_WRITE, AIO_FSYNC };

#define AIO_BATCH 64

TAILQ_HEAD(aio_list, aio_op);

struct aio_ctx {
  struct event_base *base;
  io_context_t io;
  int efd;
  struct event *ev;      /* efd readable: completions to reap */
  struct event *done_ev; /* activated to deliver ctx->done */
  struct event *submit_ev; /* activated to submit ctx->queue */
  unsigned depth;
  unsigned submitted;    /* in the kernel */
  unsigned pending;      /* accepted, callback not run yet */
  bool no_aio_fsync;     /* the kernel refused IOCB_CMD_FDSYNC once */
  struct aio_list queue; /* not yet submitted (or remainder of a short I/O) */
  struct aio_list done;  /* finished outside the kernel, callback pending */
};

/* The iocb belongs to us again once the kernel returned it or refused it,
 * so the result of an op finished outside the kernel waits in its
 * u.c.offset field until the loop delivers it. */
static void
aio_finish_later(struct aio_ctx *ctx, struct aio_op *op, long res)
{
  op->iocb.u.c.offset = res;
  TAILQ_INSERT_TAIL(&ctx->done, op, q);
  event_active(ctx->done_ev, EV_READ, 0);
}

static void
aio_prep(struct aio_ctx *ctx, struct aio_op *op)
{
  size_t left = op->len - op->done;

  switch (op->kind) {
  case AIO_READ:
    io_prep_pread(&op->iocb, op->fd, op->buf + op->done, left,
                  (long long)(op->off + op->done));
    break;
  case AIO_WRITE:
    io_prep_pwrite(&op->iocb, op->fd, op->buf + op->done, left,
                   (long long)(op->off + op->done));
    break;
  default:
    io_prep_fdsync(&op->iocb, op->fd);
    break;
  }
  io_set_eventfd(&op->iocb, ctx->efd);
  op->iocb.data = op;
}

static void
aio_sync_fallback(struct aio_ctx *ctx, struct aio_op *op)
{
  long res = fdatasync(op->fd) == 0 ? 0 : -errno;
  aio_finish_later(ctx, op, res);
}

/* Move queued ops into the kernel while the ring has room. */
static void
aio_pump(struct aio_ctx *ctx)
{
  struct iocb *iocbs[AIO_BATCH];
  struct aio_op *ops[AIO_BATCH];

  while (ctx->submitted < ctx->depth && !TAILQ_EMPTY(&ctx->queue)) {
    unsigned room = MIN(ctx->depth - ctx->submitted, (unsigned)AIO_BATCH);
    int n = 0, r;
    struct aio_op *op;

    while (n < (int)room && (op = TAILQ_FIRST(&ctx->queue))) {
      TAILQ_REMOVE(&ctx->queue, op, q);
      if (op->kind == AIO_FSYNC && ctx->no_aio_fsync) {
        aio_sync_fallback(ctx, op);
        continue;
      }
      aio_prep(ctx, op);
      ops[n] = op;
      iocbs[n++] = &op->iocb;
    }
    if (n == 0)
      continue;

    r = io_submit(ctx->io, n, iocbs);
    if (r > 0)
      ctx->submitted += (unsigned)r;
    else
      r = 0;
    /* Put back what the kernel did not take, in order. */
    for (int i = n - 1; i >= r; i--)
      TAILQ_INSERT_HEAD(&ctx->queue, ops[i], q);
    if (r < n) {
      /* Ask again for the first refused op alone to learn why. */
      struct iocb *one;

      op = TAILQ_FIRST(&ctx->queue);
      one = &op->iocb;
      r = io_submit(ctx->io, 1, &one);
      if (r == 1) {
        TAILQ_REMOVE(&ctx->queue, op, q);
        ctx->submitted++;
        continue;
      }
      if (r == -EAGAIN && ctx->submitted > 0)
        return; /* out of kernel resources: retry on the next completion */
      TAILQ_REMOVE(&ctx->queue, op, q);
      if (op->kind == AIO_FSYNC && r == -EINVAL) {
        log_info("asynchronous fdatasync not supported here; using "
                 "synchronous fdatasync");
        ctx->no_aio_fsync = true;
        aio_sync_fallback(ctx, op);
      } else {
        aio_finish_later(ctx, op, r < 0 ? r : -EIO);
      }
    }
  }
}

static void
aio_submit_cb(evutil_socket_t fd, short what, void *arg)
{
  (void)fd;
  (void)what;
  aio_pump(arg);
}

static void
aio_deliver(struct aio_ctx *ctx, struct aio_op *op, long res)
{
  ctx->pending--;
  op->cb(op, res);
}

static void
aio_done_cb(evutil_socket_t fd, short what, void *arg)
{
  struct aio_ctx *ctx = arg;
  struct aio_list batch = TAILQ_HEAD_INITIALIZER(batch);
  struct aio_op *op;

  (void)fd;
  (void)what;
  /* Callbacks may queue more: deliver only what is here now. */
  TAILQ_CONCAT(&batch, &ctx->done, q);
  while ((op = TAILQ_FIRST(&batch))) {
    TAILQ_REMOVE(&batch, op, q);
    aio_deliver(ctx, op, (long)op->iocb.u.c.offset);
  }
  aio_pump(ctx);
}

/* One reaped event: finished, failed, or short (resubmit the rest). */
static void
aio_complete(struct aio_ctx *ctx, struct aio_op *op, long res)
{
  if (res < 0 || op->kind == AIO_FSYNC) {
    aio_deliver(ctx, op, res);
    return;
  }
  if (res == 0) {
    /* No progress: a read past the end, or a full device. */
    aio_deliver(ctx, op, op->kind == AIO_READ ? -EIO : -ENOSPC);
    return;
  }
  op->done += (size_t)res;
  if (op->done < op->len) {
    TAILQ_INSERT_HEAD(&ctx->queue, op, q);
    return;
  }
  aio_deliver(ctx, op, (long)op->len);
}

static void
aio_event_cb(evutil_socket_t fd, short what, void *arg)
{
  struct aio_ctx *ctx = arg;
  struct io_event events[AIO_BATCH];
  struct timespec zero = { 0, 0 };
  uint64_t count;
  int n;

  (void)what;
  if (read(fd, &count, sizeof count) == -1 && errno != EAGAIN)
    log_error("aio: reading the completion eventfd: %m");
  do {
    n = io_getevents(ctx->io, 0, AIO_BATCH, events, &zero);
    if (n < 0) {
      if (n == -EINTR)
        continue;
      errno = -n;
      log_error("aio: io_getevents: %m");
      break;
    }
    ctx->submitted -= (unsigned)n;
    for (int i = 0; i < n; i++)
      aio_complete(ctx, events[i].data, (long)events[i].res);
  } while (n == AIO_BATCH);
  aio_pump(ctx);
}

struct aio_ctx *
aio_ctx_new(struct event_base *base, unsigned depth, char *err, size_t errlen)
{
  struct aio_ctx *ctx = calloc(1, sizeof *ctx);
  int r;

  if (!ctx) {
    snprintf(err, errlen, "aio: out of memory");
    return NULL;
  }
  ctx->base = base;
  ctx->depth = depth ? depth : 1;
  ctx->efd = -1;
  TAILQ_INIT(&ctx->queue);
  TAILQ_INIT(&ctx->done);
  r = io_setup((int)ctx->depth, &ctx->io);
  if (r < 0) {
    errno = -r;
    if (r == -EAGAIN)
      snprintf(err, errlen, "aio: io_setup(%u): %m; the system-wide limit "
               "fs.aio-max-nr is exhausted, raise it with sysctl", ctx->depth);
    else
      snprintf(err, errlen, "aio: io_setup(%u): %m", ctx->depth);
    ctx->io = 0;
    goto err;
  }
  ctx->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (ctx->efd == -1) {
    snprintf(err, errlen, "aio: eventfd: %m");
    goto err;
  }
  ctx->ev = event_new(base, ctx->efd, EV_READ | EV_PERSIST, aio_event_cb, ctx);
  ctx->done_ev = event_new(base, -1, 0, aio_done_cb, ctx);
  ctx->submit_ev = event_new(base, -1, 0, aio_submit_cb, ctx);
  if (!ctx->ev || !ctx->done_ev || !ctx->submit_ev ||
      event_add(ctx->ev, NULL) == -1) {
    snprintf(err, errlen, "aio: cannot register the completion event");
    goto err;
  }
  return ctx;

err:
  aio_ctx_free(ctx);
  return NULL;
}

/* Operations still in the kernel are waited for by io_destroy; their
 * callbacks, like those of queued operations, are not run. */
void
aio_ctx_free(struct aio_ctx *ctx)
{
  if (!ctx)
    return;
  if (ctx->pending)
    log_debug("aio: freeing the engine with %u operations pending",
              ctx->pending);
  if (ctx->ev)
    event_free(ctx->ev);
  if (ctx->done_ev)
    event_free(ctx->done_ev);
  if (ctx->submit_ev)
    event_free(ctx->submit_ev);
  if (ctx->io)
    io_destroy(ctx->io);
  if (ctx->efd != -1)
    close(ctx->efd);
  free(ctx);
}

static void
aio_start(struct aio_ctx *ctx, struct aio_op *op, int kind, int fd, void *buf,
          size_t len, uint64_t off, aio_cb cb, void *opaque)
{
  op->cb = cb;
  op->opaque = opaque;
  op->fd = fd;
  op->kind = kind;
  op->buf = buf;
  op->len = len;
  op->done = 0;
  op->off = off;
  ctx->pending++;
  if (kind != AIO_FSYNC && len == 0) {
    aio_finish_later(ctx, op, 0);
    return;
  }
  TAILQ_INSERT_TAIL(&ctx->queue, op, q);
  /* Completion callbacks pump on their way out; anything else waits for
   * the submit event, which runs once the current callback returns. */
  event_active(ctx->submit_ev, EV_READ, 0);
}

void
aio_pread(struct aio_ctx *ctx, struct aio_op *op, int fd, void *buf,
          size_t len, uint64_t off, aio_cb cb, void *opaque)
{
  aio_start(ctx, op, AIO_READ, fd, buf, len, off, cb, opaque);
}

void
aio_pwrite(struct aio_ctx *ctx, struct aio_op *op, int fd, const void *buf,
           size_t len, uint64_t off, aio_cb cb, void *opaque)
{
  /* The engine never writes through buf; the field is shared with reads. */
  aio_start(ctx, op, AIO_WRITE, fd, (void *)buf, len, off, cb, opaque);
}

void
aio_fdsync(struct aio_ctx *ctx, struct aio_op *op, int fd, aio_cb cb,
           void *opaque)
{
  aio_start(ctx, op, AIO_FSYNC, fd, NULL, 0, 0, cb, opaque);
}

unsigned
aio_inflight(const struct aio_ctx *ctx)
{
  return ctx->pending;
}
