/* Snapshot retention (--keep last=N,hourly=N,daily=N,weekly=N,monthly=N,
 * yearly=N): the policy, parsed and formatted.  Pure logic, no I/O. */
#ifndef DUPLEX_STORE_RETENTION_H
#define DUPLEX_STORE_RETENTION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The largest N a rule accepts (a million hourly snapshots is 114 years). */
#define RETENTION_MAX 1000000u

/* A policy with every count 0 keeps every snapshot ("keep all"; restic
 * refuses an empty policy instead). */
struct keep_policy {
  unsigned last, hourly, daily, weekly, monthly, yearly;
  bool manual;   /* --keep-manual: the policy expires manual snapshots too */
};

/* Parse a --keep value: "last=6,hourly=24,daily=7", any subset of last,
 * hourly, daily, weekly, monthly, yearly in any order, each at most once,
 * N in 0..RETENTION_MAX.  An empty string is the empty policy (keep all).
 * Sets every count of *out and clears out->manual (the caller sets it from
 * --keep-manual afterwards).  0, or -1 with a one-line message in err
 * naming the bad part and listing the valid keys; *out is then untouched. */
int retention_parse(const char *spec, struct keep_policy *out, char *err,
                    size_t errlen);

/* The policy as retention_parse reads it ("last=6,hourly=24,daily=7", the
 * non-zero counts in the order above), for logs and status; "" for the
 * empty policy.  --keep-manual is not part of it.  Truncated to outlen. */
void retention_format(const struct keep_policy *p, char *out, size_t outlen);

#endif
