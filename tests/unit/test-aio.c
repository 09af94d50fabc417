/* aio engine: more operations than the ring holds, callbacks only from
 * the loop, read-back, fdsync, errors and the short-read rule. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "aio.h"
#include "util.h"

#define NOPS 40
#define BLK 4096

struct env {
  struct event_base *base;
  struct aio_ctx *aio;
  char path[64];
  int fd;
  int completed;
  bool submitting; /* a callback during submission would be a bug */
};

struct op {
  struct aio_op aio;
  struct env *env;
  long res;
  bool done;
};

static void
op_cb(struct aio_op *aop, long res)
{
  struct op *o = aop->opaque;

  assert_false(o->env->submitting);
  assert_false(o->done);
  o->res = res;
  o->done = true;
  o->env->completed++;
}

static void
run_until(struct env *e, int completed)
{
  for (int i = 0; i < 10000 && e->completed < completed; i++)
    event_base_loop(e->base, EVLOOP_ONCE);
  assert_int_equal(e->completed, completed);
}

static int
setup(void **state)
{
  struct env *e = calloc(1, sizeof *e);
  char err[256];

  e->base = event_base_new();
  e->aio = aio_ctx_new(e->base, 8, err, sizeof err);
  if (!e->aio) {
    fprintf(stderr, "%s\n", err);
    return -1;
  }
  strcpy(e->path, "/tmp/duplex-aio-XXXXXX");
  e->fd = mkstemp(e->path);
  if (e->fd == -1 || ftruncate(e->fd, NOPS * BLK) == -1)
    return -1;
  close(e->fd);
  /* O_DIRECT where the file system has it, like a real volume. */
  e->fd = open(e->path, O_RDWR | O_DIRECT);
  if (e->fd == -1)
    e->fd = open(e->path, O_RDWR);
  *state = e;
  return 0;
}

static int
teardown(void **state)
{
  struct env *e = *state;

  aio_ctx_free(e->aio);
  event_base_free(e->base);
  close(e->fd);
  unlink(e->path);
  free(e);
  return 0;
}

static void
test_write_read_back(void **state)
{
  struct env *e = *state;
  struct op ops[NOPS];
  char *buf = util_alloc_aligned(NOPS * BLK);
  char *rbuf = util_alloc_aligned(NOPS * BLK);

  for (int i = 0; i < NOPS * BLK; i++)
    buf[i] = (char)(i * 7 + i / BLK);
  memset(ops, 0, sizeof ops);
  e->submitting = true;
  for (int i = 0; i < NOPS; i++) {
    ops[i].env = e;
    aio_pwrite(e->aio, &ops[i].aio, e->fd, buf + i * BLK, BLK,
               (uint64_t)i * BLK, op_cb, &ops[i]);
  }
  e->submitting = false;
  assert_int_equal(aio_inflight(e->aio), NOPS);
  run_until(e, NOPS);
  assert_int_equal(aio_inflight(e->aio), 0);
  for (int i = 0; i < NOPS; i++)
    assert_int_equal(ops[i].res, BLK);

  memset(&ops[0], 0, sizeof ops[0]);
  ops[0].env = e;
  e->submitting = true;
  aio_fdsync(e->aio, &ops[0].aio, e->fd, op_cb, &ops[0]);
  e->submitting = false;
  run_until(e, NOPS + 1);
  assert_int_equal(ops[0].res, 0);

  memset(&ops[0], 0, sizeof ops[0]);
  ops[0].env = e;
  aio_pread(e->aio, &ops[0].aio, e->fd, rbuf, NOPS * BLK, 0, op_cb, &ops[0]);
  run_until(e, NOPS + 2);
  assert_int_equal(ops[0].res, NOPS * BLK);
  assert_memory_equal(buf, rbuf, NOPS * BLK);
  free(buf);
  free(rbuf);
}

static void
test_errors_arrive_from_loop(void **state)
{
  struct env *e = *state;
  char *buf = util_alloc_aligned(2 * BLK);
  struct op o[3];

  memset(o, 0, sizeof o);
  for (int i = 0; i < 3; i++)
    o[i].env = e;
  e->submitting = true;
  /* A bad fd is refused by io_submit: reported through the loop. */
  aio_pread(e->aio, &o[0].aio, 9999, buf, BLK, 0, op_cb, &o[0]);
  /* Straddling the end of the file: the first half reads, the rest hits
   * end of file and the op fails as a whole. */
  aio_pread(e->aio, &o[1].aio, e->fd, buf, 2 * BLK,
            (uint64_t)(NOPS - 1) * BLK, op_cb, &o[1]);
  /* Zero-length: completes with 0. */
  aio_pwrite(e->aio, &o[2].aio, e->fd, buf, 0, 0, op_cb, &o[2]);
  e->submitting = false;
  assert_int_equal(e->completed, 0);
  run_until(e, 3);
  assert_int_equal(o[0].res, -EBADF);
  assert_int_equal(o[1].res, -EIO);
  assert_int_equal(o[2].res, 0);
  free(buf);
}

/* A callback may submit the next operation (the usual chaining). */
static void
chain_cb(struct aio_op *aop, long res)
{
  struct op *o = aop->opaque;

  assert_int_equal(res, BLK);
  o->env->completed++;
  if (o->env->completed < 20)
    aio_pwrite(o->env->aio, aop, o->env->fd, aop->buf, BLK,
               (uint64_t)o->env->completed * BLK, chain_cb, o);
}

static void
test_chained_submission(void **state)
{
  struct env *e = *state;
  char *buf = util_alloc_aligned(BLK);
  struct op o = { .env = e };

  memset(buf, 3, BLK);
  aio_pwrite(e->aio, &o.aio, e->fd, buf, BLK, 0, chain_cb, &o);
  run_until(e, 20);
  assert_int_equal(aio_inflight(e->aio), 0);
  free(buf);
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(test_write_read_back, setup, teardown),
    cmocka_unit_test_setup_teardown(test_errors_arrive_from_loop, setup,
                                    teardown),
    cmocka_unit_test_setup_teardown(test_chained_submission, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
