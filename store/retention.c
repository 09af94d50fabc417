/* Snapshot retention: the --keep policy parser.  No I/O. */
#include <stdio.h>
#include <string.h>

#include "retention.h"

/* The rules in the order of --keep and of retention_format. */
enum retention_rule { RULE_LAST, RULE_HOURLY, RULE_DAILY, RULE_WEEKLY,
                      RULE_MONTHLY, RULE_YEARLY, RULE_N };

static const char *const retention_keys[RULE_N] = {
  "last", "hourly", "daily", "weekly", "monthly", "yearly",
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
