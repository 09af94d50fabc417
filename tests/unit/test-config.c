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

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_minimal_ok),
    cmocka_unit_test(test_async_buffer),
    cmocka_unit_test(test_errors_name_the_flag),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
