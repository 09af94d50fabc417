/* In-memory bitmap of volume regions, one bit per `grain` bytes, kept in
 * 64-bit words.  The number of set bits is maintained on every change so
 * bitmap_dirty_bytes is O(1) (status polls it). */
#include <stdlib.h>
#include <string.h>

#include "bitmap.h"
#include "util.h"

struct bitmap {
  uint64_t size;   /* volume bytes */
  uint32_t grain;
  unsigned shift;  /* log2(grain) */
  uint64_t nbits;
  uint64_t nwords;
  uint64_t nset;
  uint64_t *w;
};

struct bitmap *
bitmap_new(uint64_t size_bytes, uint32_t grain)
{
  struct bitmap *bm;

  if (grain < 512 || (grain & (grain - 1)))
    return NULL;
  bm = calloc(1, sizeof *bm);
  if (!bm)
    return NULL;
  bm->size = size_bytes;
  bm->grain = grain;
  bm->shift = (unsigned)__builtin_ctz(grain);
  bm->nbits = (size_bytes >> bm->shift) + ((size_bytes & (grain - 1)) != 0);
  bm->nwords = (bm->nbits + 63) / 64;
  bm->w = calloc(bm->nwords ? bm->nwords : 1, sizeof *bm->w);
  if (!bm->w) {
    free(bm);
    return NULL;
  }
  return bm;
}

void
bitmap_free(struct bitmap *bm)
{
  if (!bm)
    return;
  free(bm->w);
  free(bm);
}

uint32_t
bitmap_grain(const struct bitmap *bm)
{
  return bm->grain;
}

uint64_t
bitmap_bits(const struct bitmap *bm)
{
  return bm->nbits;
}

/* Mask of bits [lo, hi) within one word, 0 <= lo < hi <= 64. */
static uint64_t
bitmap_mask(unsigned lo, unsigned hi)
{
  uint64_t m = hi == 64 ? ~0ull : (1ull << hi) - 1;
  return m & ~((1ull << lo) - 1);
}

/* Set or clear bits [first, end). */
static void
bitmap_change(struct bitmap *bm, uint64_t first, uint64_t end, bool set)
{
  while (first < end) {
    uint64_t wi = first / 64;
    unsigned lo = (unsigned)(first % 64);
    unsigned hi = (unsigned)MIN((uint64_t)64, lo + (end - first));
    uint64_t m = bitmap_mask(lo, hi);
    uint64_t old = bm->w[wi];

    if (set) {
      bm->nset += (uint64_t)__builtin_popcountll(~old & m);
      bm->w[wi] = old | m;
    } else {
      bm->nset -= (uint64_t)__builtin_popcountll(old & m);
      bm->w[wi] = old & ~m;
    }
    first += hi - lo;
  }
}

void
bitmap_set_range(struct bitmap *bm, uint64_t off, uint64_t len)
{
  uint64_t end;

  if (len == 0 || off >= bm->size)
    return;
  end = len > bm->size - off ? bm->size : off + len;
  bitmap_change(bm, off >> bm->shift, ((end - 1) >> bm->shift) + 1, true);
}

void
bitmap_clear_range(struct bitmap *bm, uint64_t off, uint64_t len)
{
  uint64_t end, first, last;

  if (len == 0 || off >= bm->size)
    return;
  end = len > bm->size - off ? bm->size : off + len;
  first = (off >> bm->shift) + ((off & (bm->grain - 1)) != 0);
  /* The last bit may cover less than a grain: reaching the end of the
   * volume covers it whole. */
  last = end == bm->size ? bm->nbits : end >> bm->shift;
  if (first < last)
    bitmap_change(bm, first, last, false);
}

void
bitmap_set_all(struct bitmap *bm)
{
  if (bm->nbits == 0)
    return;
  memset(bm->w, 0xff, bm->nwords * sizeof *bm->w);
  if (bm->nbits % 64)
    bm->w[bm->nwords - 1] = bitmap_mask(0, (unsigned)(bm->nbits % 64));
  bm->nset = bm->nbits;
}

void
bitmap_clear_all(struct bitmap *bm)
{
  memset(bm->w, 0, bm->nwords * sizeof *bm->w);
  bm->nset = 0;
}

static bool
bitmap_bit(const struct bitmap *bm, uint64_t bit)
{
  return (bm->w[bit / 64] >> (bit % 64)) & 1;
}

bool
bitmap_test(const struct bitmap *bm, uint64_t off)
{
  return off < bm->size && bitmap_bit(bm, off >> bm->shift);
}

/* First bit in [from, limit) whose value is `want`, else limit
 * (limit <= nbits).  Whole words that cannot match are skipped. */
static uint64_t
bitmap_find(const struct bitmap *bm, uint64_t from, uint64_t limit, bool want)
{
  uint64_t wi, w, last;

  if (from >= limit)
    return limit;
  wi = from / 64;
  last = (limit - 1) / 64;
  w = (want ? bm->w[wi] : ~bm->w[wi]) & ~((1ull << (from % 64)) - 1);
  while (w == 0) {
    if (++wi > last)
      return limit;
    w = want ? bm->w[wi] : ~bm->w[wi];
  }
  return MIN(wi * 64 + (uint64_t)__builtin_ctzll(w), limit);
}

bool
bitmap_next_run(const struct bitmap *bm, uint64_t from, uint64_t max_len,
                uint64_t *off, uint64_t *len)
{
  uint64_t first, end, max_bits;

  if (bm->nset == 0 || from >= bm->size)
    return false;
  /* The run must start at or after from: a bit only partly after it is
   * skipped. */
  first = (from >> bm->shift) + ((from & (bm->grain - 1)) != 0);
  first = bitmap_find(bm, first, bm->nbits, true);
  if (first >= bm->nbits)
    return false;
  max_bits = MAX(max_len >> bm->shift, (uint64_t)1);
  end = bitmap_find(bm, first + 1, first + MIN(max_bits, bm->nbits - first),
                    false);
  *off = first << bm->shift;
  *len = MIN(end << bm->shift, bm->size) - *off;
  return true;
}

uint64_t
bitmap_dirty_bytes(const struct bitmap *bm)
{
  uint64_t bytes = bm->nset << bm->shift;
  uint64_t tail = bm->size & (bm->grain - 1);

  if (tail && bitmap_bit(bm, bm->nbits - 1))
    bytes -= bm->grain - tail;
  return bytes;
}
