/* duplex-primary command line parsing: required flags, values, errors that
 * name the flag. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "internal.h"

static char pem[] = "/tmp/duplex-test-config.pem";

static int
setup(void **state)
{
  FILE *f = fopen(pem, "w");
  (void)state;
  if (!f)
    return -1;
  fputs("x\n", f);
  fclose(f);
  return 0;
}

static int
teardown(void **state)
{
  (void)state;
  remove(pem);
  return 0;
}

#define BASE_ARGS                                                              \
  "duplex-primary", "--volume", "/v", "--meta", "/m", "--nbd",                 \
      "unix:/tmp/s", "--peer", "127.0.0.1:7789", "--tls-cert", pem,            \
      "--tls-key", pem, "--tls-ca", pem, "--peer-name", "sec"

static void
test_minimal_ok(void **state)
{
  char *argv[] = { BASE_ARGS, "--mode", "sync", NULL };
  struct config cfg;
  char err[256];
  (void)state;
  assert_int_equal(config_parse((int)ARRAY_SIZE(argv) - 1, argv, &cfg, err,
                                sizeof err), 0);
  assert_int_equal(cfg.mode, REPL_SYNC);
  assert_int_equal(cfg.n_nbd, 1);
  assert_true(cfg.nbd[0].is_unix);
  assert_string_equal(cfg.peer.port, "7789");
  assert_int_equal(cfg.async_buffer, DEFAULT_ASYNC_BUFFER);
}

static void
test_async_buffer(void **state)
{
  char *argv[] = { BASE_ARGS, "--mode", "async", "--async-buffer", "16M",
                   NULL };
  struct config cfg;
  char err[256];
  (void)state;
  assert_int_equal(config_parse((int)ARRAY_SIZE(argv) - 1, argv, &cfg, err,
                                sizeof err), 0);
  assert_int_equal(cfg.mode, REPL_ASYNC);
  assert_int_equal(cfg.async_buffer, 16 * 1024 * 1024);
}

static void
expect_error(char **argv, int argc, const char *needle)
{
  struct config cfg;
  char err[256] = "";
  assert_int_equal(config_parse(argc, argv, &cfg, err, sizeof err), -1);
  if (!strstr(err, needle))
    fail_msg("error '%s' does not mention '%s'", err, needle);
}

static void
test_errors_name_the_flag(void **state)
{
  char *bad_mode[] = { BASE_ARGS, "--mode", "fast", NULL };
  char *no_mode[] = { BASE_ARGS, NULL };
  char *bad_buf[] = { BASE_ARGS, "--mode", "async", "--async-buffer", "12Q",
                      NULL };
  char *bad_peer[] = { BASE_ARGS, "--mode", "sync", "--peer", "nohost",
                       NULL };
  char *unknown[] = { BASE_ARGS, "--mode", "sync", "--bogus", NULL };
  char *missing_file[] = { "duplex-primary", "--volume", "/v", "--meta", "/m",
                           "--nbd", "unix:/s", "--peer", "h:1", "--mode",
                           "sync", "--tls-cert", "/nonexistent.pem",
                           "--tls-key", pem, "--tls-ca", pem, "--peer-name",
                           "s", NULL };
  (void)state;
  expect_error(bad_mode, (int)ARRAY_SIZE(bad_mode) - 1, "--mode");
  expect_error(no_mode, (int)ARRAY_SIZE(no_mode) - 1, "--mode");
  expect_error(bad_buf, (int)ARRAY_SIZE(bad_buf) - 1, "--async-buffer");
  expect_error(bad_peer, (int)ARRAY_SIZE(bad_peer) - 1, "--peer");
  expect_error(unknown, (int)ARRAY_SIZE(unknown) - 1, "--bogus");
  expect_error(missing_file, (int)ARRAY_SIZE(missing_file) - 1,
               "--tls-cert /nonexistent.pem");
}

#define TAIL_ARGS                                                              \
  "duplex-primary", "--capture", "tail", "--volume", "/dev/loop0", "--meta",  \
      "/m", "--peer", "127.0.0.1:7789", "--tls-cert", pem, "--tls-key", pem,   \
      "--tls-ca", pem, "--peer-name", "sec"

static void
test_tail_capture(void **state)
{
  char *ok[] = { TAIL_ARGS, "--snapshot-every", "5", "--freeze", "/mnt",
                 "--trace-buffer", "64K", "--pre-hook", "true", NULL };
  char *sync[] = { TAIL_ARGS, "--mode", "sync", NULL };
  char *nbd[] = { TAIL_ARGS, "--nbd", "unix:/tmp/s", NULL };
  char *freeze_alone[] = { TAIL_ARGS, "--freeze", "/mnt", NULL };
  char *buf[] = { TAIL_ARGS, "--trace-buffer", "12K", NULL };
  char *hook_nbd[] = { BASE_ARGS, "--mode", "async", "--pre-hook", "x",
                       NULL };
  char *bad[] = { TAIL_ARGS, "--capture", "ebpf", NULL };
  struct config cfg;
  char err[256];
  (void)state;

  assert_int_equal(config_parse((int)ARRAY_SIZE(ok) - 1, ok, &cfg, err,
                                sizeof err), 0);
  assert_int_equal(cfg.capture, CAPTURE_TAIL);
  assert_int_equal(cfg.mode, REPL_ASYNC); /* implied */
  assert_int_equal(cfg.n_nbd, 0);
  assert_int_equal(cfg.snapshot_every_ms, 5000);
  assert_int_equal(cfg.freeze_timeout_ms, 10000);
  assert_int_equal(cfg.trace_buffer_pages, 16);
  assert_string_equal(cfg.freeze, "/mnt");
  assert_string_equal(cfg.pre_hook, "true");
  expect_error(sync, (int)ARRAY_SIZE(sync) - 1, "--mode sync");
  expect_error(nbd, (int)ARRAY_SIZE(nbd) - 1, "--nbd");
  expect_error(freeze_alone, (int)ARRAY_SIZE(freeze_alone) - 1,
               "--snapshot-every");
  expect_error(buf, (int)ARRAY_SIZE(buf) - 1, "power of two");
  expect_error(hook_nbd, (int)ARRAY_SIZE(hook_nbd) - 1, "--capture tail");
  expect_error(bad, (int)ARRAY_SIZE(bad) - 1, "--capture ebpf");
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_minimal_ok),
    cmocka_unit_test(test_async_buffer),
    cmocka_unit_test(test_errors_name_the_flag),
    cmocka_unit_test(test_tail_capture),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
