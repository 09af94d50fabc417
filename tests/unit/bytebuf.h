/* A growing byte buffer for unit tests that build stored or wire formats
 * by hand (independently of the encoders they check). */
#ifndef DUPLEX_TESTS_BYTEBUF_H
#define DUPLEX_TESTS_BYTEBUF_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct bb {
  uint8_t *p;
  size_t len, cap;
};

static inline void
bb_bytes(struct bb *b, const void *src, size_t n)
{
  if (b->len + n > b->cap) {
    b->cap = (b->len + n) * 2 + 64;
    b->p = realloc(b->p, b->cap);
    assert_non_null(b->p);
  }
  if (n)
    memcpy(b->p + b->len, src, n);
  b->len += n;
}

/* v as n little-endian bytes. */
static inline void
bb_le(struct bb *b, uint64_t v, unsigned n)
{
  uint8_t x[8];

  for (unsigned i = 0; i < n; i++)
    x[i] = (uint8_t)(v >> (8 * i));
  bb_bytes(b, x, n);
}

#endif
