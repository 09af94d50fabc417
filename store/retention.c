/* Snapshot retention: the --keep policy parser and restic's `forget`
 * selection (internal/restic/snapshot_policy.go, doc/060_forget.rst),
 * with calendar buckets in UTC.  No I/O; the selection sorts in place. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "retention.h"

/* The rules in the order of --keep, of retention_format and of their
 * RETENTION_* bits (RETENTION_LAST << index). */
enum retention_rule { RULE_LAST, RULE_HOURLY, RULE_DAILY, RULE_WEEKLY,
                      RULE_MONTHLY, RULE_YEARLY, RULE_N };

static const char *const retention_keys[RULE_N] = {
  "last", "hourly", "daily", "weekly", "monthly", "yearly",
};

/* Names of the enum retention_why bits, lowest bit first. */
static const char *const retention_why_names[] = {
  "copying", "unknown", "manual", "all", "last", "hourly", "daily",
  "weekly", "monthly", "yearly", "oldest", "newest",
};

#define RETENTION_SYNTAX "expected KEY=N[,KEY=N...] with KEY one of last, " \
  "hourly, daily, weekly, monthly, yearly (each at most once) and N from " \
  "0 to 1000000, e.g. last=6,hourly=24,daily=7"
_Static_assert(RETENTION_MAX == 1000000u, "RETENTION_SYNTAX names the maximum");
/* How much of a bad rule an error message quotes. */
#define RETENTION_QUOTE_MAX 40

/* The counts of a policy in rule order. */
static void
retention_counts(const struct keep_policy *p, unsigned c[RULE_N])
{
  c[RULE_LAST] = p->last;
  c[RULE_HOURLY] = p->hourly;
  c[RULE_DAILY] = p->daily;
  c[RULE_WEEKLY] = p->weekly;
  c[RULE_MONTHLY] = p->monthly;
  c[RULE_YEARLY] = p->yearly;
}

/* One rule "KEY=N" of len bytes (no comma in it): its index and N, or -1
 * with the message. */
static int
retention_parse_rule(const char *s, size_t len, unsigned seen,
                     enum retention_rule *rule, unsigned *n, char *err,
                     size_t errlen)
{
  const char *eq = memchr(s, '=', len);
  int quote = (int)(len > RETENTION_QUOTE_MAX ? RETENTION_QUOTE_MAX : len);
  const char *more = len > RETENTION_QUOTE_MAX ? "..." : "";
  size_t klen, i;
  unsigned v = 0;
  bool big = false;

  if (!eq) {
    snprintf(err, errlen, "invalid keep policy: rule \"%.*s%s\" has no "
             "\"=N\"; " RETENTION_SYNTAX, quote, s, more);
    return -1;
  }
  klen = (size_t)(eq - s);
  for (i = 0; i < RULE_N; i++)
    if (strlen(retention_keys[i]) == klen &&
        memcmp(retention_keys[i], s, klen) == 0)
      break;
  if (i == RULE_N) {
    snprintf(err, errlen, "invalid keep policy: unknown key \"%.*s%s\" in "
             "\"%.*s%s\"; " RETENTION_SYNTAX,
             (int)(klen > RETENTION_QUOTE_MAX ? RETENTION_QUOTE_MAX : klen),
             s, klen > RETENTION_QUOTE_MAX ? "..." : "", quote, s, more);
    return -1;
  }
  if (seen & (1u << i)) {
    snprintf(err, errlen, "invalid keep policy: \"%s\" given twice (again "
             "in \"%.*s%s\"); " RETENTION_SYNTAX, retention_keys[i], quote, s,
             more);
    return -1;
  }
  if (klen + 1 == len) {
    snprintf(err, errlen, "invalid keep policy: rule \"%.*s%s\" has no "
             "number after \"=\"; " RETENTION_SYNTAX, quote, s, more);
    return -1;
  }
  for (const char *p = eq + 1; p < s + len; p++) {
    if (*p < '0' || *p > '9') {
      snprintf(err, errlen, "invalid keep policy: rule \"%.*s%s\": N is not "
               "a whole number from 0 to %u; " RETENTION_SYNTAX, quote, s,
               more, RETENTION_MAX);
      return -1;
    }
    if (!big) {
      v = v * 10 + (unsigned)(*p - '0');
      big = v > RETENTION_MAX;
    }
  }
  if (big) {
    snprintf(err, errlen, "invalid keep policy: rule \"%.*s%s\": N is too "
             "large (at most %u); " RETENTION_SYNTAX, quote, s, more,
             RETENTION_MAX);
    return -1;
  }
  *rule = (enum retention_rule)i;
  *n = v;
  return 0;
}

int
retention_parse(const char *spec, struct keep_policy *out, char *err,
                size_t errlen)
{
  unsigned c[RULE_N] = { 0 }, seen = 0;
  const char *s = spec;

  while (*spec != '\0') {      /* "" is the empty policy: keep all */
    const char *comma = strchr(s, ',');
    size_t len = comma ? (size_t)(comma - s) : strlen(s);
    enum retention_rule rule;
    unsigned n;

    if (len == 0) {
      snprintf(err, errlen, "invalid keep policy: empty rule %s; "
               RETENTION_SYNTAX,
               s == spec ? "before the first comma"
               : !comma ? "after the last comma" : "between two commas");
      return -1;
    }
    if (retention_parse_rule(s, len, seen, &rule, &n, err, errlen) != 0)
      return -1;
    seen |= 1u << rule;
    c[rule] = n;
    if (!comma)
      break;
    s = comma + 1;
  }
  *out = (struct keep_policy){
    .last = c[RULE_LAST], .hourly = c[RULE_HOURLY], .daily = c[RULE_DAILY],
    .weekly = c[RULE_WEEKLY], .monthly = c[RULE_MONTHLY],
    .yearly = c[RULE_YEARLY], .manual = false,
  };
  return 0;
}

void
retention_format(const struct keep_policy *p, char *out, size_t outlen)
{
  unsigned c[RULE_N];
  size_t off = 0;

  if (outlen == 0)
    return;
  out[0] = '\0';
  retention_counts(p, c);
  for (int r = 0; r < RULE_N && off < outlen; r++) {
    int w;

    if (c[r] == 0)
      continue;
    w = snprintf(out + off, outlen - off, "%s%s=%u", off ? "," : "",
                 retention_keys[r], c[r]);
    if (w < 0)
      break;
    off += (size_t)w;
  }
}

void
retention_why_format(uint32_t why_mask, char *out, size_t outlen)
{
  size_t off = 0;

  if (outlen == 0)
    return;
  out[0] = '\0';
  for (size_t b = 0; b < sizeof retention_why_names /
         sizeof retention_why_names[0] && off < outlen; b++) {
    int w;

    if (!(why_mask & (1u << b)))
      continue;
    w = snprintf(out + off, outlen - off, "%s%s", off ? "," : "",
                 retention_why_names[b]);
    if (w < 0)
      break;
    off += (size_t)w;
  }
}

/* ---- selection ---- */

static int64_t
retention_floor_div(int64_t a, int64_t b)
{
  int64_t q = a / b;

  if (a % b != 0 && (a < 0) != (b < 0))
    q--;
  return q;
}

/* Proleptic Gregorian year and month (1-12) of a day counted from
 * 1970-01-01, by counting 400-year eras from 0000-03-01 (a year that
 * starts in March ends with the leap day). */
static void
retention_civil(int64_t days, int64_t *year, int *month)
{
  int64_t z = days + 719468;            /* days since 0000-03-01 */
  int64_t era = retention_floor_div(z, 146097);
  int64_t doe = z - era * 146097;       /* day of era, 0..146096 */
  int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  int64_t mp = (5 * doy + 2) / 153;     /* month from March, 0..11 */
  int m = (int)(mp < 10 ? mp + 3 : mp - 9);

  *year = yoe + era * 400 + (m <= 2);
  *month = m;
}

/* The bucket of a snapshot taken at t for a calendar rule: equal values
 * mean the same UTC hour, day, ISO week, month or year. */
static int64_t
retention_bucket(enum retention_rule rule, int64_t t)
{
  int64_t day = retention_floor_div(t, 86400);
  int64_t year;
  int month;

  switch (rule) {
  case RULE_HOURLY:
    return retention_floor_div(t, 3600);
  case RULE_DAILY:
    return day;
  case RULE_WEEKLY:
    /* ISO weeks run Monday to Sunday, and an ISO year-week pair names
     * exactly one such week (2020-12-31 and 2021-01-03 are both in
     * 2020-W53); 1970-01-01 was a Thursday, so Monday is day -3. */
    return retention_floor_div(day + 3, 7);
  case RULE_MONTHLY:
    retention_civil(day, &year, &month);
    return year * 12 + month - 1;
  case RULE_YEARLY:
    retention_civil(day, &year, &month);
    return year;
  case RULE_LAST:
  case RULE_N:
    break;
  }
  abort();
}

static bool
retention_reason_known(unsigned reason)
{
  return reason >= SNAP_MANUAL && reason <= SNAP_BEFORE_RESTORE;
}

/* Newest first; the id (which grows with every snapshot) orders snapshots
 * taken in the same second, so the result does not depend on the order
 * the caller listed them in. */
static int
retention_cmp(const void *a, const void *b)
{
  const struct retention_item *x = a, *y = b;

  if (x->created_unix != y->created_unix)
    return x->created_unix > y->created_unix ? -1 : 1;
  if (x->id != y->id)
    return x->id > y->id ? -1 : 1;
  if (x->reason != y->reason)
    return x->reason < y->reason ? -1 : 1;
  return (int)y->complete - (int)x->complete;
}

static bool
retention_in_policy(const struct keep_policy *p,
                    const struct retention_item *it)
{
  return it->complete && retention_reason_known(it->reason) &&
         (it->reason != SNAP_MANUAL || p->manual);
}

/* restic's ApplyPolicy over the snapshots the policy applies to, newest
 * first: each rule keeps the first snapshot of every bucket it has not
 * seen last until its count is used up; the oldest snapshot is kept by a
 * rule that has counts left even in a bucket already kept ("oldest"). */
static void
retention_apply(const struct keep_policy *p, struct retention_item *items,
                size_t n)
{
  struct {
    unsigned left;
    bool have_last;
    int64_t last;
  } rules[RULE_N];
  unsigned c[RULE_N];
  size_t oldest = n, nr = 0;
  bool empty = true;

  retention_counts(p, c);
  for (int r = 0; r < RULE_N; r++) {
    rules[r].left = c[r];
    rules[r].have_last = false;
    rules[r].last = 0;
    if (rules[r].left)
      empty = false;
  }
  for (size_t i = 0; i < n; i++)
    if (retention_in_policy(p, &items[i]))
      oldest = i;

  for (size_t i = 0; i < n; i++) {
    struct retention_item *it = &items[i];

    if (!retention_in_policy(p, it))
      continue;
    if (empty) {
      it->why_mask |= RETENTION_ALL;
      continue;
    }
    for (int r = 0; r < RULE_N; r++) {
      int64_t val;

      if (rules[r].left == 0)
        continue;
      /* "last" puts every snapshot in a bucket of its own. */
      val = r == RULE_LAST ? (int64_t)nr
                           : retention_bucket((enum retention_rule)r,
                                              it->created_unix);
      if (!rules[r].have_last || val != rules[r].last) {
        it->why_mask |= (uint32_t)RETENTION_LAST << r;
        rules[r].have_last = true;
        rules[r].last = val;
        rules[r].left--;
      } else if (i == oldest) {
        it->why_mask |= RETENTION_OLDEST;
        rules[r].left--;
      }
    }
    nr++;
  }
}

size_t
retention_select(const struct keep_policy *p, struct retention_item *items,
                 size_t n)
{
  bool newest_seen[SNAP_BEFORE_RESTORE + 1] = { false };
  size_t kept = 0;

  if (n > 1)
    qsort(items, n, sizeof *items, retention_cmp);
  for (size_t i = 0; i < n; i++) {
    struct retention_item *it = &items[i];

    it->why_mask = 0;
    if (!it->complete)
      it->why_mask |= RETENTION_COPYING;
    if (!retention_reason_known(it->reason))
      it->why_mask |= RETENTION_UNKNOWN;
    else if (it->reason == SNAP_MANUAL && !p->manual)
      it->why_mask |= RETENTION_MANUAL;
    if (it->complete && retention_reason_known(it->reason) &&
        !newest_seen[it->reason]) {
      it->why_mask |= RETENTION_NEWEST;
      newest_seen[it->reason] = true;
    }
  }
  retention_apply(p, items, n);

  for (size_t i = 0; i < n; i++) {
    struct retention_item *it = &items[i];

    it->keep = it->why_mask != 0;
    it->why = NULL;
    if (it->keep) {
      kept++;
      it->why = retention_why_names[__builtin_ctz(it->why_mask)];
    }
  }
  return kept;
}
