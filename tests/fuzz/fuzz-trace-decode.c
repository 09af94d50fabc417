/* libFuzzer target for the tail capture's record decoder: any raw record,
 * with this kernel's layout or one whose field offsets come from the input,
 * must decode to a range inside 2^64 bytes or be refused, never read past
 * the record. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#include "../unit/trace-formats.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check(const struct trace_layout *l, const uint8_t *rec, size_t len)
{
  struct trace_change c;
  /* The record in a buffer of exactly its size: ASan sees any overread. */
  uint8_t *copy = malloc(len ? len : 1);

  if (!copy)
    abort();
  if (len)
    memcpy(copy, rec, len);
  if (trace_decode(l, copy, len, &c) == 0) {
    if (len < l->min_len || c.off + c.len < c.off)
      abort();
    if ((c.kind == TRACE_WRITE || c.kind == TRACE_DISCARD ||
         c.kind == TRACE_OTHER) && c.len == 0)
      abort();
  }
  free(copy);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static struct trace_layout real;
  static int have;
  char err[256];

  if (!have) {
    if (trace_layout_parse(fmt_new, sizeof fmt_new - 1, &real, err, sizeof err))
      abort();
    have = 1;
  }
  check(&real, data, size);
  /* A layout from the first bytes: fields anywhere in a 64-byte record. */
  if (size >= 5) {
    struct trace_layout l = { 0 };
    unsigned max = 0;
    l.dev = (struct trace_field){ data[0] % 60, 4 };
    l.sector = (struct trace_field){ data[1] % 56, 8 };
    l.nr_sector = (struct trace_field){ data[2] % 60, 4 };
    l.error = (struct trace_field){ data[3] % 60, 4 };
    l.rwbs = (struct trace_field){ data[4] % 48, 16 };
#define UPTO(f) if (l.f.off + l.f.size > max) max = l.f.off + l.f.size
    UPTO(dev);
    UPTO(sector);
    UPTO(nr_sector);
    UPTO(error);
    UPTO(rwbs);
    l.min_len = max;
    check(&l, data + 5, size - 5);
  }
  return 0;
}
