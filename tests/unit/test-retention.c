/* Snapshot retention: --keep parsing and formatting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "retention.h"
#include "util.h"

#define VALID_KEYS "last, hourly, daily, weekly, monthly, yearly"

/* ---- parsing and formatting ---- */

static void
test_parse_good(void **state)
{
  static const struct {
    const char *spec;
    struct keep_policy want;
  } good[] = {
    { "", { 0 } },
    { "last=0", { 0 } },
    { "last=6", { .last = 6 } },
    { "last=6,hourly=24,daily=7", { .last = 6, .hourly = 24, .daily = 7 } },
    { "daily=7,last=6", { .last = 6, .daily = 7 } },
    { "yearly=3,monthly=12,weekly=4,daily=7,hourly=24,last=1",
      { 1, 24, 7, 4, 12, 3, false } },
    { "weekly=1000000", { .weekly = 1000000 } },
    { "monthly=007", { .monthly = 7 } },
    { "hourly=0,daily=0", { 0 } },
  };
  char err[512];

  (void)state;
  for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
    struct keep_policy p = { 99, 99, 99, 99, 99, 99, true };

    if (retention_parse(good[i].spec, &p, err, sizeof err) != 0)
      fail_msg("\"%s\" refused: %s", good[i].spec, err);
    if (p.last != good[i].want.last || p.hourly != good[i].want.hourly ||
        p.daily != good[i].want.daily || p.weekly != good[i].want.weekly ||
        p.monthly != good[i].want.monthly ||
        p.yearly != good[i].want.yearly || p.manual)
      fail_msg("\"%s\" parsed as %u,%u,%u,%u,%u,%u manual=%d", good[i].spec,
               p.last, p.hourly, p.daily, p.weekly, p.monthly, p.yearly,
               p.manual);
  }
}

static void
test_parse_bad(void **state)
{
  static const struct {
    const char *spec;
    const char *says;   /* the message names the bad part like this */
  } bad[] = {
    { "foo=3", "unknown key \"foo\" in \"foo=3\"" },
    { "last=6,Daily=7", "unknown key \"Daily\"" },
    { " last=6", "unknown key \" last\"" },
    { "=5", "unknown key \"\" in \"=5\"" },
    { "last=1,hourly=2,last=3", "\"last\" given twice (again in \"last=3\")" },
    { "last", "rule \"last\" has no \"=N\"" },
    { "last=6,daily", "rule \"daily\" has no \"=N\"" },
    { "last=", "rule \"last=\" has no number after \"=\"" },
    { "last=-1", "rule \"last=-1\": N is not a whole number from 0 to "
                 "1000000" },
    { "last=+1", "rule \"last=+1\": N is not a whole number" },
    { "last=1.5", "rule \"last=1.5\": N is not a whole number" },
    { "last==1", "rule \"last==1\": N is not a whole number" },
    { "last=6 ", "rule \"last=6 \": N is not a whole number" },
    { "last=0x10", "N is not a whole number" },
    { "hourly=1000001", "rule \"hourly=1000001\": N is too large (at most "
                        "1000000)" },
    { "daily=99999999999999999999999", "N is too large" },
    { "last=6,", "empty rule after the last comma" },
    { ",last=6", "empty rule before the first comma" },
    { "last=6,,daily=7", "empty rule between two commas" },
    { ",", "empty rule before the first comma" },
    { "last=6;daily=7", "N is not a whole number" },
    { "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa=1",
      "unknown key \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...\"" },
  };
  char err[512];

  (void)state;
  for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
    struct keep_policy p = { 1, 2, 3, 4, 5, 6, true };

    err[0] = '\0';
    if (retention_parse(bad[i].spec, &p, err, sizeof err) != -1)
      fail_msg("\"%s\" accepted", bad[i].spec);
    if (!strstr(err, bad[i].says))
      fail_msg("\"%s\": message \"%s\" does not say \"%s\"", bad[i].spec,
               err, bad[i].says);
    if (strncmp(err, "invalid keep policy: ", 21) != 0 ||
        !strstr(err, VALID_KEYS) || strchr(err, '\n'))
      fail_msg("\"%s\": message \"%s\" is not one line listing the valid "
               "keys", bad[i].spec, err);
    if (p.last != 1 || p.hourly != 2 || p.daily != 3 || p.weekly != 4 ||
        p.monthly != 5 || p.yearly != 6 || !p.manual)
      fail_msg("\"%s\": the policy was changed on failure", bad[i].spec);
  }

  /* A short buffer gets a truncated, terminated message. */
  {
    struct keep_policy p;
    char small[16];

    memset(small, 'x', sizeof small);
    assert_int_equal(retention_parse("nope=1", &p, small, sizeof small), -1);
    assert_int_equal(strlen(small), sizeof small - 1);
  }
}

static void
test_format(void **state)
{
  static const struct {
    struct keep_policy p;
    const char *want;
  } cases[] = {
    { { 0 }, "" },
    { { .manual = true }, "" },
    { { .last = 6, .hourly = 24, .daily = 7 }, "last=6,hourly=24,daily=7" },
    { { .yearly = 1 }, "yearly=1" },
    { { 1000000, 1000000, 1000000, 1000000, 1000000, 1000000, true },
      "last=1000000,hourly=1000000,daily=1000000,weekly=1000000,"
      "monthly=1000000,yearly=1000000" },
  };
  char out[128], err[256];

  (void)state;
  for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
    struct keep_policy back;

    retention_format(&cases[i].p, out, sizeof out);
    assert_string_equal(out, cases[i].want);
    /* What it writes reads back as the same counts. */
    if (retention_parse(out, &back, err, sizeof err) != 0)
      fail_msg("\"%s\" does not parse back: %s", out, err);
    assert_true(back.last == cases[i].p.last &&
                back.hourly == cases[i].p.hourly &&
                back.daily == cases[i].p.daily &&
                back.weekly == cases[i].p.weekly &&
                back.monthly == cases[i].p.monthly &&
                back.yearly == cases[i].p.yearly);
  }

  /* Truncated to the buffer, always terminated. */
  for (size_t len = 1; len < 30; len++) {
    struct keep_policy p = { .last = 6, .hourly = 24, .daily = 7 };
    char *buf = malloc(len);

    assert_non_null(buf);
    retention_format(&p, buf, len);
    assert_true(strlen(buf) < len);
    assert_memory_equal(buf, "last=6,hourly=24,daily=7", strlen(buf));
    free(buf);
  }
  retention_format(&cases[2].p, out, 0);   /* writes nothing */
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_parse_good),
    cmocka_unit_test(test_parse_bad),
    cmocka_unit_test(test_format),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
