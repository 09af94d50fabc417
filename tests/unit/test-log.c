/* Logging: the foreground line format, %m, errno kept, level filter. */
#include <errno.h>
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"

/* Run fn with stderr captured; return what it wrote. */
static char *
capture(void (*fn)(void))
{
  FILE *tmp = tmpfile();
  int saved = dup(2);
  char *out = calloc(1, 4096);
  size_t n;

  fflush(stderr);
  dup2(fileno(tmp), 2);
  fn();
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  rewind(tmp);
  n = fread(out, 1, 4095, tmp);
  out[n] = '\0';
  fclose(tmp);
  return out;
}

static void
log_enoent(void)
{
  errno = ENOENT;
  log_error("volume %s: open: %m", "/dev/vdb");
  assert_int_equal(errno, ENOENT);
  log_debug("hidden");
  log_info("info %d", 1);
}

static void
test_format(void **state)
{
  regex_t re;
  char *out;

  (void)state;
  log_init("duplex-primary", true);
  out = capture(log_enoent);
  assert_int_equal(regcomp(&re,
      "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z "
      "duplex-primary\\[[0-9]+\\]: error: volume /dev/vdb: open: No such file "
      "or directory\n"
      "[^ ]+Z duplex-primary\\[[0-9]+\\]: info: info 1\n$",
      REG_EXTENDED), 0);
  if (regexec(&re, out, 0, NULL, 0) != 0)
    fail_msg("unexpected log output: %s", out);
  regfree(&re);
  free(out);
}

static void
log_debug_line(void)
{
  log_debug("now shown");
}

static void
test_levels(void **state)
{
  char *out;

  (void)state;
  assert_false(log_enabled(LOG_LVL_DEBUG));
  log_set_level(LOG_LVL_DEBUG);
  assert_true(log_enabled(LOG_LVL_DEBUG));
  out = capture(log_debug_line);
  assert_non_null(strstr(out, ": debug: now shown\n"));
  free(out);
  log_set_level(LOG_LVL_ERROR);
  assert_false(log_enabled(LOG_LVL_WARN));
  out = capture(log_debug_line);
  assert_string_equal(out, "");
  free(out);
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_format),
    cmocka_unit_test(test_levels),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
