/* The changed ranges between two snapshots as text: one "OFFSET LENGTH"
 * line per range, or JSON (EBS ListChangedBlocks):
 *   {"from": A, "to": B, "block_size": 4096, "size_bytes": N,
 *    "ranges": [{"offset": O, "length": L}, ...], "changed_bytes": C}
 * Shared by duplex-store diff and duplexctl snapshot diff. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store-internal.h"

struct diff_text {
  char *p;
  size_t len, cap;
  bool json;
  uint64_t n, bytes;
};

static void
dt_printf(struct diff_text *d, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void
dt_printf(struct diff_text *d, const char *fmt, ...)
{
  va_list ap;
  int n;

  for (;;) {
    va_start(ap, fmt);
    n = vsnprintf(d->p + d->len, d->cap - d->len, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < d->cap - d->len) {
      d->len += (size_t)n;
      return;
    }
    d->cap = d->cap * 2 + (size_t)(n > 0 ? n : 0) + 256;
    d->p = realloc(d->p, d->cap);
    if (!d->p)
      abort();
  }
}

static int
dt_range(uint64_t start, uint64_t count, void *arg)
{
  struct diff_text *d = arg;

  if (d->json)
    dt_printf(d, "%s\n    {\"offset\": %" PRIu64 ", \"length\": %" PRIu64
              "}", d->n ? "," : "", start * STORE_BLOCK,
              count * STORE_BLOCK);
  else
    dt_printf(d, "%" PRIu64 " %" PRIu64 "\n", start * STORE_BLOCK,
              count * STORE_BLOCK);
  d->n++;
  d->bytes += count * STORE_BLOCK;
  return 0;
}

int
store_diff_text(struct store *s, uint64_t a, uint64_t b, bool json,
                char **out, size_t *outlen, char *err, size_t errlen)
{
  struct store_map ma, mb;
  struct diff_text d = { .json = json, .cap = 256 };
  int rc;

  *out = NULL;
  *outlen = 0;
  if ((rc = store_map_resolve(s, a, &ma, err, errlen)) < 0)
    return rc;
  if ((rc = store_map_resolve(s, b, &mb, err, errlen)) < 0) {
    store_map_free(&ma);
    return rc;
  }
  d.p = malloc(d.cap);
  if (!d.p)
    abort();
  d.p[0] = '\0';
  if (json)
    dt_printf(&d, "{\"from\": %" PRIu64 ", \"to\": %" PRIu64 ", "
              "\"block_size\": %u, \"size_bytes\": %" PRIu64 ", "
              "\"ranges\": [", a, b, STORE_BLOCK, mb.blocks * STORE_BLOCK);
  map_diff(&ma, &mb, dt_range, &d);
  if (json)
    dt_printf(&d, "%s], \"changed_bytes\": %" PRIu64 "}\n",
              d.n ? "\n  " : "", d.bytes);
  store_map_free(&ma);
  store_map_free(&mb);
  *out = d.p;
  *outlen = d.len;
  return 0;
}
