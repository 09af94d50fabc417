/* Snapshot retention: --keep parsing and formatting, and the selection
 * checked against hand-written tables and against a reference written
 * differently (calendar strings from gmtime/strftime in bucket maps, not a
 * newest-first walk) on 1000 random stores. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
  retention_why_format(RETENTION_LAST | RETENTION_DAILY | RETENTION_NEWEST,
                       out, sizeof out);
  assert_string_equal(out, "last,daily,newest");
  retention_why_format(0, out, sizeof out);
  assert_string_equal(out, "");
  retention_why_format(0xfff, out, sizeof out);
  assert_string_equal(out, "copying,unknown,manual,all,last,hourly,daily,"
                           "weekly,monthly,yearly,oldest,newest");
  retention_why_format(RETENTION_LAST | RETENTION_DAILY, out, 8);
  assert_string_equal(out, "last,da");
}

/* ---- selection tables ---- */

#define S SNAP_SCHEDULE
#define M SNAP_MANUAL
#define RS SNAP_BEFORE_RESYNC
#define RR SNAP_BEFORE_RESTORE

struct snap {
  uint64_t id;
  const char *at;       /* "YYYY-MM-DD HH:MM:SS", UTC */
  unsigned reason;
  bool copying;
};

struct select_case {
  const char *name;
  const char *keep;     /* --keep */
  bool manual;          /* --keep-manual */
  struct snap snaps[16];
  /* The kept ones newest first, "id:why,why" separated by spaces. */
  const char *want;
};

static int64_t
test_time(const char *at)
{
  struct tm tm = { 0 };
  int y, mo, d, h, mi, s;

  if (sscanf(at, "%d-%d-%d %d:%d:%d", &y, &mo, &d, &h, &mi, &s) != 6)
    fail_msg("bad time \"%s\" in a test table", at);
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = s;
  return (int64_t)timegm(&tm);
}

/* The kept items of a selected (newest first) array, "id:why,why ...". */
static void
test_kept_string(const struct retention_item *it, size_t n, char *out,
                 size_t outlen)
{
  size_t off = 0;

  out[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    char why[160];

    if (!it[i].keep)
      continue;
    retention_why_format(it[i].why_mask, why, sizeof why);
    off += (size_t)snprintf(out + off, outlen - off, "%s%llu:%s",
                            off ? " " : "", (unsigned long long)it[i].id, why);
    assert_true(off < outlen);
  }
}

/* Consistency every selection must have: sorted newest first, keep iff
 * why_mask, why names the first bit, the count returned. */
static void
test_check_consistent(const struct retention_item *it, size_t n,
                      size_t kept)
{
  size_t count = 0;

  for (size_t i = 0; i < n; i++) {
    char why[160];

    if (i > 0)
      assert_true(it[i - 1].created_unix > it[i].created_unix ||
                  (it[i - 1].created_unix == it[i].created_unix &&
                   it[i - 1].id > it[i].id));
    assert_int_equal(it[i].keep, it[i].why_mask != 0);
    if (!it[i].keep) {
      assert_null(it[i].why);
      continue;
    }
    count++;
    retention_why_format(it[i].why_mask, why, sizeof why);
    why[strcspn(why, ",")] = '\0';
    assert_non_null(it[i].why);
    assert_string_equal(it[i].why, why);
  }
  assert_int_equal(count, kept);
}

static void
test_run_cases(const struct select_case *cases, size_t ncases)
{
  for (size_t c = 0; c < ncases; c++) {
    struct retention_item items[16];
    struct keep_policy p;
    char err[256], got[1024];
    size_t n = 0, kept;

    if (retention_parse(cases[c].keep, &p, err, sizeof err) != 0)
      fail_msg("%s: %s", cases[c].name, err);
    p.manual = cases[c].manual;
    /* Listed oldest first in the table; given in reverse and rotated, so
     * the selection cannot rely on the caller's order. */
    while (n < 16 && cases[c].snaps[n].id)
      n++;
    for (size_t i = 0; i < n; i++) {
      const struct snap *s = &cases[c].snaps[n - 1 - (i + 3) % n];

      items[i] = (struct retention_item){
        .id = s->id, .created_unix = test_time(s->at), .reason = s->reason,
        .complete = !s->copying, .keep = (i % 2) == 0, .why = "stale",
        .why_mask = 0xdead,
      };
    }
    kept = retention_select(&p, items, n);
    test_check_consistent(items, n, kept);
    test_kept_string(items, n, got, sizeof got);
    if (strcmp(got, cases[c].want) != 0)
      fail_msg("%s: kept \"%s\", want \"%s\"", cases[c].name, got,
               cases[c].want);
  }
}

static void
test_select_calendar(void **state)
{
  static const struct select_case cases[] = {
    { "last only", "last=3", false,
      { { 1, "2026-11-26 10:00:00", S, false },
        { 2, "2026-11-26 10:10:00", S, false },
        { 3, "2026-11-26 10:20:00", S, false },
        { 4, "2026-11-26 10:30:00", S, false },
        { 5, "2026-11-26 10:40:00", S, false } },
      "5:last,newest 4:last 3:last" },
    { "last larger than the store keeps all", "last=10", false,
      { { 1, "2026-11-26 10:00:00", S, false },
        { 2, "2026-11-26 10:10:00", S, false },
        { 3, "2026-11-26 10:20:00", S, false } },
      "3:last,newest 2:last 1:last" },
    { "hourly across a day boundary", "hourly=3", false,
      { { 1, "2026-11-26 22:10:00", S, false },
        { 2, "2026-11-26 22:40:00", S, false },
        { 3, "2026-11-26 23:05:00", S, false },
        { 4, "2026-11-26 23:50:00", S, false },
        { 5, "2026-11-27 00:10:00", S, false },
        { 6, "2026-11-27 00:30:00", S, false },
        { 7, "2026-11-27 01:00:00", S, false } },
      "7:hourly,newest 6:hourly 4:hourly" },
    /* restic PR #4366: a rule with counts left when the walk reaches the
     * oldest snapshot keeps it even in an hour already kept. */
    { "hourly with counts left keeps the oldest", "hourly=10", false,
      { { 1, "2026-11-26 22:10:00", S, false },
        { 2, "2026-11-26 22:40:00", S, false },
        { 3, "2026-11-26 23:05:00", S, false },
        { 4, "2026-11-26 23:50:00", S, false },
        { 5, "2026-11-27 00:10:00", S, false },
        { 6, "2026-11-27 00:30:00", S, false },
        { 7, "2026-11-27 01:00:00", S, false } },
      "7:hourly,newest 6:hourly 4:hourly 2:hourly 1:oldest" },
    { "hour boundary is exact", "hourly=2", false,
      { { 1, "2026-11-26 12:59:59", S, false },
        { 2, "2026-11-26 13:00:00", S, false },
        { 3, "2026-11-26 13:59:59", S, false } },
      "3:hourly,newest 1:hourly" },
    { "daily keeps the newest of each day", "daily=2", false,
      { { 1, "2026-11-24 01:00:00", S, false },
        { 2, "2026-11-24 23:00:00", S, false },
        { 3, "2026-11-25 00:00:00", S, false },
        { 4, "2026-11-25 12:00:00", S, false },
        { 5, "2026-11-25 23:59:59", S, false },
        { 6, "2026-11-26 00:00:00", S, false },
        { 7, "2026-11-26 06:00:00", S, false },
        { 8, "2026-11-26 07:00:00", S, false } },
      "8:daily,newest 5:daily" },
    { "daily skips days without snapshots", "daily=3", false,
      { { 1, "2026-11-01 08:00:00", S, false },
        { 2, "2026-11-02 08:00:00", S, false },
        { 3, "2026-11-02 11:00:00", S, false },
        { 4, "2026-11-04 09:00:00", S, false },
        { 5, "2026-11-05 10:00:00", S, false } },
      "5:daily,newest 4:daily 3:daily" },
    /* 2020-12-28 (Mon) .. 2021-01-03 (Sun) is ISO week 2020-W53. */
    { "weekly across the ISO year boundary", "weekly=2", false,
      { { 1, "2020-12-27 12:00:00", S, false },   /* 2020-W52 */
        { 2, "2020-12-28 00:00:00", S, false },   /* 2020-W53 */
        { 3, "2020-12-31 12:00:00", S, false },
        { 4, "2021-01-03 23:59:59", S, false },
        { 5, "2021-01-04 00:00:00", S, false } }, /* 2021-W01 */
      "5:weekly,newest 4:weekly" },
    { "weekly with counts left keeps the oldest", "weekly=5", false,
      { { 1, "2020-12-27 12:00:00", S, false },
        { 2, "2020-12-28 00:00:00", S, false },
        { 3, "2020-12-31 12:00:00", S, false },
        { 4, "2021-01-03 23:59:59", S, false },
        { 5, "2021-01-04 00:00:00", S, false } },
      "5:weekly,newest 4:weekly 1:weekly" },
    /* 2019-12-30 (Mon) is in 2020-W01, 2019-12-29 (Sun) in 2019-W52. */
    { "weekly: ISO week 1 starting in December", "weekly=2", false,
      { { 1, "2019-12-23 10:00:00", S, false },
        { 2, "2019-12-29 23:00:00", S, false },
        { 3, "2019-12-30 01:00:00", S, false },
        { 4, "2020-01-05 10:00:00", S, false } },
      "4:weekly,newest 2:weekly" },
    { "monthly", "monthly=3", false,
      { { 1, "2025-12-31 23:59:59", S, false },
        { 2, "2026-01-15 00:00:00", S, false },
        { 3, "2026-01-31 23:59:59", S, false },
        { 4, "2026-02-01 00:00:00", S, false },
        { 5, "2026-02-28 12:00:00", S, false },
        { 6, "2026-03-01 00:00:00", S, false } },
      "6:monthly,newest 5:monthly 3:monthly" },
    { "monthly: a leap day", "monthly=2", false,
      { { 1, "2024-02-28 10:00:00", S, false },
        { 2, "2024-02-29 23:59:59", S, false },
        { 3, "2024-03-01 00:00:00", S, false },
        { 4, "2024-03-02 00:00:00", S, false } },
      "4:monthly,newest 2:monthly" },
    { "yearly", "yearly=2", false,
      { { 1, "2024-06-01 00:00:00", S, false },
        { 2, "2025-01-01 00:00:00", S, false },
        { 3, "2025-12-31 23:59:59", S, false },
        { 4, "2026-01-01 00:00:00", S, false } },
      "4:yearly,newest 3:yearly" },
    { "before 1970", "daily=2,yearly=3", false,
      { { 1, "1968-12-31 23:00:00", S, false },
        { 2, "1969-12-31 22:00:00", S, false },
        { 3, "1969-12-31 23:59:59", S, false },
        { 4, "1970-01-01 00:00:00", S, false } },
      "4:daily,yearly,newest 3:daily,yearly 1:yearly" },
    { "each rule counts on its own", "last=2,hourly=2,daily=2", false,
      { { 1, "2026-11-25 09:00:00", S, false },
        { 2, "2026-11-25 10:00:00", S, false },
        { 3, "2026-11-26 08:00:00", S, false },
        { 4, "2026-11-26 09:00:00", S, false },
        { 5, "2026-11-26 09:30:00", S, false } },
      "5:last,hourly,daily,newest 4:last 3:hourly 2:daily" },
    { "same second: the higher id is newer", "last=1,hourly=1", false,
      { { 1, "2026-11-26 09:00:00", S, false },
        { 3, "2026-11-26 09:00:00", S, false },
        { 2, "2026-11-26 09:00:00", S, false } },
      "3:last,hourly,newest" },
    { "empty policy keeps all", "", false,
      { { 1, "2026-11-26 09:00:00", S, false },
        { 2, "2026-11-26 09:00:01", RS, false },
        { 3, "2026-11-26 09:00:02", S, false } },
      "3:all,newest 2:all,newest 1:all" },
    { "all zeros is the empty policy", "last=0,daily=0", true,
      { { 1, "2026-11-26 09:00:00", M, false },
        { 2, "2026-11-26 09:00:01", S, false },
        { 3, "2026-11-26 09:00:02", S, false } },
      "3:all,newest 2:all 1:all,newest" },
  };

  (void)state;
  test_run_cases(cases, ARRAY_SIZE(cases));
}

static void
test_select_duplex_rules(void **state)
{
  static const struct select_case cases[] = {
    { "manual snapshots are kept without --keep-manual", "last=1", false,
      { { 1, "2026-11-26 08:00:00", M, false },
        { 2, "2026-11-26 09:00:00", M, false },
        { 3, "2026-11-26 10:00:00", S, false },
        { 4, "2026-11-26 11:00:00", S, false },
        { 5, "2026-11-26 12:00:00", S, false } },
      "5:last,newest 2:manual,newest 1:manual" },
    /* Manual ones out of the policy take no count from it. */
    { "manual ones do not use up a count", "hourly=2", false,
      { { 1, "2026-11-26 08:10:00", S, false },
        { 2, "2026-11-26 09:10:00", S, false },
        { 3, "2026-11-26 09:20:00", S, false },
        { 4, "2026-11-26 10:10:00", M, false },
        { 5, "2026-11-26 11:10:00", M, false } },
      "5:manual,newest 4:manual 3:hourly,newest 1:hourly" },
    { "--keep-manual applies the policy to them", "last=2", true,
      { { 1, "2026-11-26 08:00:00", M, false },
        { 2, "2026-11-26 09:00:00", M, false },
        { 3, "2026-11-26 10:00:00", S, false },
        { 4, "2026-11-26 11:00:00", M, false },
        { 5, "2026-11-26 12:00:00", S, false } },
      "5:last,newest 4:last,newest" },
    { "--keep-manual still keeps the newest manual", "last=1", true,
      { { 1, "2026-11-26 08:00:00", M, false },
        { 2, "2026-11-26 09:00:00", M, false },
        { 3, "2026-11-26 10:00:00", S, false },
        { 4, "2026-11-26 11:00:00", S, false } },
      "4:last,newest 2:newest" },
    { "copying ones are always kept", "last=1", false,
      { { 1, "2026-11-26 08:00:00", S, true },
        { 2, "2026-11-26 09:00:00", S, false },
        { 3, "2026-11-26 10:00:00", S, false },
        { 4, "2026-11-26 11:00:00", S, true } },
      "4:copying 3:last,newest 1:copying" },
    /* A copy that fails must not have cost its hour the complete one. */
    { "copying ones do not use up a count", "hourly=1", false,
      { { 1, "2026-11-26 10:10:00", S, false },
        { 2, "2026-11-26 10:20:00", S, false },
        { 3, "2026-11-26 10:30:00", S, true } },
      "3:copying 2:hourly,newest" },
    { "copying manual and copying with --keep-manual", "last=1", true,
      { { 1, "2026-11-26 08:00:00", M, true },
        { 2, "2026-11-26 09:00:00", S, false },
        { 3, "2026-11-26 10:00:00", M, true } },
      "3:copying 2:last,newest 1:copying" },
    { "newest of every reason is kept", "last=1", false,
      { { 1, "2026-11-20 08:00:00", RS, false },
        { 2, "2026-11-21 08:00:00", RR, false },
        { 3, "2026-11-22 08:00:00", RS, false },
        { 4, "2026-11-23 08:00:00", RR, false },
        { 5, "2026-11-24 08:00:00", S, false },
        { 6, "2026-11-25 08:00:00", S, false },
        { 7, "2026-11-26 08:00:00", S, false } },
      "7:last,newest 4:newest 3:newest" },
    { "before-resync and before-restore count like scheduled ones",
      "daily=2", false,
      { { 1, "2026-11-24 08:00:00", S, false },
        { 2, "2026-11-25 08:00:00", S, false },
        { 3, "2026-11-25 09:00:00", RS, false },
        { 4, "2026-11-26 07:00:00", RR, false },
        { 5, "2026-11-26 08:00:00", RS, false },
        { 6, "2026-11-26 08:00:00", S, false } },
      "6:daily,newest 5:newest 4:newest 3:daily" },
    { "the newest complete one, not a copying one", "last=1", false,
      { { 1, "2026-11-24 08:00:00", RS, false },
        { 2, "2026-11-25 08:00:00", S, false },
        { 3, "2026-11-26 08:00:00", RS, true } },
      "3:copying 2:last,newest 1:newest" },
    { "an unknown reason is never expired", "last=1", true,
      { { 1, "2026-11-24 08:00:00", 0, false },
        { 2, "2026-11-25 08:00:00", 9, false },
        { 3, "2026-11-26 08:00:00", S, false },
        { 4, "2026-11-26 09:00:00", S, false } },
      "4:last,newest 2:unknown 1:unknown" },
  };

  (void)state;
  test_run_cases(cases, ARRAY_SIZE(cases));
}

static void
test_select_small(void **state)
{
  struct keep_policy p = { .last = 1 };
  struct retention_item one = { .id = 1, .created_unix = 0,
                                .reason = SNAP_SCHEDULE, .complete = true };

  (void)state;
  assert_int_equal(retention_select(&p, NULL, 0), 0);
  assert_int_equal(retention_select(&p, &one, 1), 1);
  assert_true(one.keep);
  assert_string_equal(one.why, "last");
  assert_int_equal(one.why_mask, RETENTION_LAST | RETENTION_NEWEST);
}

/* Extreme timestamps are bucketed without overflow (UBSan watches). */
static void
test_select_extreme_times(void **state)
{
  static const int64_t t[] = {
    INT64_MIN, INT64_MIN + 1, -86400 * 3 - 1, -1, 0, 1, INT64_MAX - 1,
    INT64_MAX,
  };
  struct keep_policy p = { 0, 100, 100, 100, 100, 100, false };
  struct retention_item items[ARRAY_SIZE(t)];
  char got[512];
  size_t kept;

  (void)state;
  for (size_t i = 0; i < ARRAY_SIZE(t); i++)
    items[i] = (struct retention_item){ .id = i + 1, .created_unix = t[i],
                                        .reason = SNAP_SCHEDULE,
                                        .complete = true };
  kept = retention_select(&p, items, ARRAY_SIZE(t));
  test_check_consistent(items, ARRAY_SIZE(t), kept);
  test_kept_string(items, ARRAY_SIZE(t), got, sizeof got);
  /* 0 and 1 share every bucket, so do INT64_MAX - 1 and INT64_MAX;
   * 1969-12-31 (Wednesday) is in the ISO week of 1970-01-01, 1969-12-28
   * (Sunday) in the week before and in the month of 1969-12-31. */
  assert_string_equal(got,
                      "8:hourly,daily,weekly,monthly,yearly,newest "
                      "6:hourly,daily,weekly,monthly,yearly "
                      "4:hourly,daily,monthly,yearly "
                      "3:hourly,daily,weekly "
                      "2:hourly,daily,weekly,monthly,yearly "
                      "1:oldest");
}

/* ---- the reference: bucket maps keyed by calendar strings ---- */

struct ref_snap {
  uint64_t id;
  int64_t t;
  unsigned reason;
  bool complete;
  uint32_t mask;        /* out */
};

static bool
ref_newer(const struct ref_snap *a, const struct ref_snap *b)
{
  return a->t > b->t || (a->t == b->t && a->id > b->id);
}

static void
ref_key(int rule, int64_t t, char *out, size_t outlen)
{
  time_t tt = (time_t)t;
  struct tm tm;
  size_t len = 0;

  if (!gmtime_r(&tt, &tm))
    fail_msg("gmtime_r(%lld) failed", (long long)t);
  switch (rule) {
  case 1: len = strftime(out, outlen, "%Y-%m-%d %H", &tm); break;
  case 2: len = strftime(out, outlen, "%Y-%m-%d", &tm); break;
  case 3: len = strftime(out, outlen, "%G-W%V", &tm); break;  /* ISO week */
  case 4: len = strftime(out, outlen, "%Y-%m", &tm); break;
  case 5: len = strftime(out, outlen, "%Y", &tm); break;
  }
  if (len == 0)
    fail_msg("strftime failed");
}

/* Which snapshots a policy keeps: for each rule, the newest snapshot of
 * each of its N newest buckets; the oldest snapshot too when the others
 * fill fewer than N buckets; outside the policy the duplex rules. */
static void
ref_select(const struct keep_policy *p, struct ref_snap *s, size_t n)
{
  const unsigned counts[6] = { p->last, p->hourly, p->daily, p->weekly,
                               p->monthly, p->yearly };
  struct ref_snap **in = calloc(n + 1, sizeof *in);
  struct bucket {
    char key[48];
    struct ref_snap *newest;
  } *b = calloc(n + 1, sizeof *b);
  size_t m = 0;
  bool empty = true;

  assert_non_null(in);
  assert_non_null(b);
  for (size_t i = 0; i < n; i++) {
    bool known = s[i].reason >= 1 && s[i].reason <= 4;

    s[i].mask = 0;
    if (!s[i].complete)
      s[i].mask |= RETENTION_COPYING;
    if (!known)
      s[i].mask |= RETENTION_UNKNOWN;
    if (s[i].reason == SNAP_MANUAL && !p->manual)
      s[i].mask |= RETENTION_MANUAL;
    if (s[i].complete && known &&
        (s[i].reason != SNAP_MANUAL || p->manual))
      in[m++] = &s[i];
    if (s[i].complete && known) {
      bool newest = true;

      for (size_t j = 0; j < n; j++)
        if (j != i && s[j].complete && s[j].reason == s[i].reason &&
            ref_newer(&s[j], &s[i]))
          newest = false;
      if (newest)
        s[i].mask |= RETENTION_NEWEST;
    }
  }
  for (int r = 0; r < 6; r++)
    if (counts[r])
      empty = false;

  for (int r = 0; r < 6 && m > 0; r++) {
    struct ref_snap *oldest = in[0];
    size_t nb = 0, others = 0;

    if (empty) {
      for (size_t i = 0; i < m; i++)
        in[i]->mask |= RETENTION_ALL;
      break;
    }
    if (counts[r] == 0)
      continue;
    for (size_t i = 1; i < m; i++)
      if (ref_newer(oldest, in[i]))
        oldest = in[i];
    /* Bucket map: key -> newest snapshot in it ("last": one per id). */
    for (size_t i = 0; i < m; i++) {
      char key[48];
      size_t j;

      if (r == 0)
        snprintf(key, sizeof key, "id %llu", (unsigned long long)in[i]->id);
      else
        ref_key(r, in[i]->t, key, sizeof key);
      for (j = 0; j < nb; j++)
        if (strcmp(b[j].key, key) == 0)
          break;
      if (j == nb) {
        snprintf(b[nb].key, sizeof b[nb].key, "%s", key);
        b[nb++].newest = in[i];
      } else if (ref_newer(in[i], b[j].newest)) {
        b[j].newest = in[i];
      }
    }
    /* The N buckets with the newest snapshots. */
    for (size_t k = 0; k < counts[r] && k < nb; k++) {
      size_t best = k;

      for (size_t j = k + 1; j < nb; j++)
        if (ref_newer(b[j].newest, b[best].newest))
          best = j;
      struct bucket tmp = b[k];
      b[k] = b[best];
      b[best] = tmp;
      b[k].newest->mask |= RETENTION_LAST << r;
    }
    /* Buckets the others fill: all, less one if the oldest is alone. */
    others = nb;
    for (size_t j = 0; j < nb; j++)
      if (b[j].newest == oldest)
        others--;
    if (others < counts[r] && !(oldest->mask & (RETENTION_LAST << r)))
      oldest->mask |= RETENTION_OLDEST;
  }
  free(in);
  free(b);
}

/* A small deterministic generator (xorshift64*), the same on every libc. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t
rng(void)
{
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 2685821657736338717ull;
}

static uint64_t
rng_below(uint64_t n)
{
  return rng() % n;
}

static int
cmp_by_id(const void *a, const void *b)
{
  const struct retention_item *x = a, *y = b;

  return x->id < y->id ? -1 : x->id > y->id;
}

/* The same decisions in the same order (fields, not padding bytes). */
static void
test_same_selection(const struct retention_item *a,
                    const struct retention_item *b, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(a[i].id, b[i].id);
    assert_int_equal(a[i].keep, b[i].keep);
    assert_int_equal(a[i].why_mask, b[i].why_mask);
    assert_ptr_equal(a[i].why, b[i].why);
  }
}

static void
test_select_random(void **state)
{
  /* Spreads from seconds to years, so buckets of every rule collide. */
  static const int64_t spread[] = {
    60, 3600, 4 * 3600, 86400, 7 * 86400, 40 * 86400, 400 * 86400,
    5 * 365 * 86400ll, 60 * 365 * 86400ll,
  };
  enum { MAXN = 80 };

  (void)state;
  for (int c = 0; c < 1000; c++) {
    struct retention_item items[MAXN], again[MAXN];
    struct ref_snap ref[MAXN];
    struct keep_policy p = { 0 };
    size_t n = (size_t)rng_below(MAXN + 1), kept, ref_kept = 0;
    /* 1600-01-01 .. 2500-01-01 */
    int64_t base = -11676096000ll + (int64_t)rng_below(28401840000ull);
    int64_t span = spread[rng_below(ARRAY_SIZE(spread))];
    unsigned *count[6] = { &p.last, &p.hourly, &p.daily, &p.weekly,
                           &p.monthly, &p.yearly };
    char spec[128];

    for (int r = 0; r < 6; r++)
      if (rng_below(3) == 0)
        *count[r] = (unsigned)rng_below(rng_below(4) == 0 ? 40 : 6);
    p.manual = rng_below(2);
    for (size_t i = 0; i < n; i++) {
      uint64_t kind = rng_below(20);

      items[i] = (struct retention_item){
        /* Unique ids, not in time order (a clock set back). */
        .id = 1 + i * 3 + rng_below(3),
        /* Some in the same second. */
        .created_unix = rng_below(8) == 0 && i > 0
                            ? items[i - 1].created_unix
                            : base + (int64_t)rng_below((uint64_t)span),
        .reason = kind < 12 ? SNAP_SCHEDULE : kind < 15 ? SNAP_MANUAL
                : kind < 17 ? SNAP_BEFORE_RESYNC : kind < 19
                ? SNAP_BEFORE_RESTORE : (unsigned)rng_below(256),
        .complete = rng_below(10) != 0,
      };
      ref[i] = (struct ref_snap){ items[i].id, items[i].created_unix,
                                  items[i].reason, items[i].complete, 0 };
    }
    retention_format(&p, spec, sizeof spec);
    ref_select(&p, ref, n);

    kept = retention_select(&p, items, n);
    test_check_consistent(items, n, kept);
    for (size_t i = 0; i < n; i++) {
      size_t j = 0;

      while (ref[j].id != items[i].id)
        j++;
      if (ref[j].mask)
        ref_kept++;
      if (items[i].why_mask != ref[j].mask) {
        char got[160], want[160];

        retention_why_format(items[i].why_mask, got, sizeof got);
        retention_why_format(ref[j].mask, want, sizeof want);
        fail_msg("case %d (--keep \"%s\"%s, %zu snapshots): id %llu at %lld "
                 "reason %u%s: kept for \"%s\", reference \"%s\"", c, spec,
                 p.manual ? " --keep-manual" : "", n,
                 (unsigned long long)items[i].id,
                 (long long)items[i].created_unix, items[i].reason,
                 items[i].complete ? "" : " copying", got, want);
      }
    }
    assert_int_equal(kept, ref_kept);

    /* Any order in, the same decisions out. */
    memcpy(again, items, n * sizeof *items);
    for (size_t i = n; i > 1; i--) {
      size_t j = (size_t)rng_below(i);
      struct retention_item tmp = again[i - 1];

      again[i - 1] = again[j];
      again[j] = tmp;
    }
    assert_int_equal(retention_select(&p, again, n), kept);
    test_same_selection(again, items, n);
    /* By id, for a caller that looks them up that way. */
    qsort(again, n, sizeof *again, cmp_by_id);
    assert_int_equal(retention_select(&p, again, n), kept);
    test_same_selection(again, items, n);
  }
}

/* --snapshot-every 10m --keep last=6,hourly=24,daily=7 (AWS DRS's default:
 * every 10 minutes for an hour, hourly for a day, daily for a week) after
 * 8 days of snapshots. */
static void
test_select_drs(void **state)
{
  enum { N = 8 * 144 };
  struct retention_item *items = calloc(N, sizeof *items);
  struct ref_snap *ref = calloc(N, sizeof *ref);
  struct keep_policy p;
  char err[256];
  int64_t first = test_time("2026-11-18 13:07:00");
  int64_t newest = first + (N - 1) * 600;   /* 2026-11-26 12:57 */
  size_t kept, want = 0, last = 0, hourly = 0, daily = 0;

  (void)state;
  assert_non_null(items);
  assert_non_null(ref);
  assert_int_equal(newest, test_time("2026-11-26 12:57:00"));
  assert_int_equal(retention_parse("last=6,hourly=24,daily=7", &p, err,
                                   sizeof err), 0);
  for (size_t i = 0; i < N; i++) {
    items[i] = (struct retention_item){ .id = i + 1,
                                        .created_unix = first + (int64_t)i * 600,
                                        .reason = SNAP_SCHEDULE,
                                        .complete = true };
    ref[i] = (struct ref_snap){ items[i].id, items[i].created_unix,
                                SNAP_SCHEDULE, true, 0 };
  }
  kept = retention_select(&p, items, N);
  test_check_consistent(items, N, kept);
  ref_select(&p, ref, N);

  /* By hand: the 6 newest (12:07 .. 12:57 on the 26th); the :57 of the
   * 24 hours from 2026-11-25 13:00 to 2026-11-26 12:59; the 23:57 of the
   * 20th .. 25th and 12:57 of the 26th.  12:57 is in all three, 25th
   * 23:57 in two: 6 + 23 + 5 = 34. */
  for (size_t i = 0; i < N; i++) {
    const struct retention_item *it = &items[i];
    int64_t age = newest - it->created_unix;       /* 0 for the newest */
    int64_t tod = it->created_unix % 86400;         /* time of day */
    bool l = age < 6 * 600;
    bool h = tod % 3600 == 57 * 60 && age < 24 * 3600;
    bool d = (tod == 23 * 3600 + 57 * 60 || age == 0) &&
             age <= 5 * 86400 + 13 * 3600;
    uint32_t mask = (l ? RETENTION_LAST : 0) | (h ? RETENTION_HOURLY : 0) |
                    (d ? RETENTION_DAILY : 0) | (age == 0 ? RETENTION_NEWEST
                                                          : 0);

    last += l;
    hourly += h;
    daily += d;
    want += mask != 0;
    if (it->why_mask != mask)
      fail_msg("snapshot %llu (age %lld s): mask %#x, want %#x",
               (unsigned long long)it->id, (long long)age, it->why_mask,
               mask);
    if (ref[it->id - 1].mask != mask)
      fail_msg("reference disagrees on snapshot %llu",
               (unsigned long long)it->id);
  }
  assert_int_equal(last, 6);
  assert_int_equal(hourly, 24);
  assert_int_equal(daily, 7);
  assert_int_equal(want, 34);
  assert_int_equal(kept, 34);
  free(items);
  free(ref);
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_parse_good),
    cmocka_unit_test(test_parse_bad),
    cmocka_unit_test(test_format),
    cmocka_unit_test(test_select_calendar),
    cmocka_unit_test(test_select_duplex_rules),
    cmocka_unit_test(test_select_small),
    cmocka_unit_test(test_select_extreme_times),
    cmocka_unit_test(test_select_drs),
    cmocka_unit_test(test_select_random),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
