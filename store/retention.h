/* Snapshot retention (--keep last=N,hourly=N,daily=N,weekly=N,monthly=N,
 * yearly=N): which snapshots of a store to keep, with the semantics of
 * restic's `forget`.  Pure logic, no I/O: the caller lists the catalog's
 * snapshots, asks which to keep and deletes the others. */
#ifndef DUPLEX_STORE_RETENTION_H
#define DUPLEX_STORE_RETENTION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "format.h"   /* enum snap_reason: the manifest's reason byte */

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

/* Why a snapshot is kept: retention_select sets every bit that applies.
 * The order is the order retention_why_format lists them in. */
enum retention_why {
  RETENTION_COPYING = 1u << 0,   /* not complete: still being copied */
  RETENTION_UNKNOWN = 1u << 1,   /* reason byte this version does not know */
  RETENTION_MANUAL = 1u << 2,    /* manual, and no --keep-manual */
  RETENTION_ALL = 1u << 3,       /* the policy is empty */
  RETENTION_LAST = 1u << 4,
  RETENTION_HOURLY = 1u << 5,
  RETENTION_DAILY = 1u << 6,
  RETENTION_WEEKLY = 1u << 7,
  RETENTION_MONTHLY = 1u << 8,
  RETENTION_YEARLY = 1u << 9,
  RETENTION_OLDEST = 1u << 10,   /* oldest, while a rule has counts left */
  RETENTION_NEWEST = 1u << 11,   /* newest complete one of its reason */
};

struct retention_item {
  uint64_t id;               /* catalog id: breaks ties of created_unix */
  int64_t created_unix;      /* seconds, UTC */
  unsigned reason;           /* enum snap_reason */
  bool complete;             /* false while the copier still runs */
  bool keep;                 /* out */
  uint32_t why_mask;         /* out: enum retention_why bits, 0 if expired */
  const char *why;           /* out: the first of why_mask ("copying",
                              * "unknown", "manual", "all", "last",
                              * "hourly", "daily", "weekly", "monthly",
                              * "yearly", "oldest", "newest"), or NULL */
};

/* Decide keep for each of items[n], given in any order.  Reorders items
 * newest first (created_unix descending, then id descending), as restic
 * sorts before it applies a policy.  Returns the number kept.
 *
 * The policy applies to the complete snapshots of reasons schedule,
 * before-resync and before-restore, and to manual ones with --keep-manual,
 * exactly as restic's `forget` applies one to a group:
 * - last=N keeps the N newest;
 * - hourly/daily/weekly/monthly/yearly=N walk newest to oldest and keep a
 *   snapshot whose hour (day, ISO week, month, year) differs from the one
 *   of the last snapshot that rule kept, until the rule has kept N;
 * - each rule counts on its own: one snapshot can use up a count of
 *   several rules;
 * - the oldest snapshot is kept as well while any rule still has counts
 *   left when the walk reaches it (restic's "oldest hourly snapshot" and
 *   so on, restic PR #4366 for issue #3624).
 * Calendar buckets are in UTC, not local time as in restic: duplex agents
 * run in UTC in our deployments, and UTC makes the result the same on
 * every machine (no DST hour that occurs twice or not at all).
 *
 * Besides the policy, never expired: a snapshot that is not complete, one
 * whose reason is unknown, a manual one without --keep-manual, and the
 * newest complete snapshot of each reason. */
size_t retention_select(const struct keep_policy *p,
                        struct retention_item *items, size_t n);

/* why_mask as a comma-separated list ("last,hourly,daily") into out,
 * truncated to outlen; "" for 0. */
void retention_why_format(uint32_t why_mask, char *out, size_t outlen);

#endif
