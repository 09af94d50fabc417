/* In-memory bitmap of volume regions, one bit per `grain` bytes, kept in
 * 64-bit words.  The number of set bits is maintained on every change so
 * bitmap_dirty_bytes is O(1) (status polls it), and so is a second, small
 * bitmap of the 4 KiB pages of the word image that changed since they were
 * last taken for writing to disk. */
#include <stdlib.h>
#include <string.h>

#include "bitmap.h"
#include "util.h"

/* The word image is persisted as bytes (common/meta.h): bit i must be bit
 * i % 8 of byte i / 8, which 64-bit words give only on a little-endian
 * host. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "the bitmap's word image is its on-disk format only on "
               "little-endian hosts");

#define BITMAP_PAGE_WORDS (BITMAP_PAGE / 8u)

struct bitmap {
  uint64_t size;   /* volume bytes */
  uint32_t grain;
  unsigned shift;  /* log2(grain) */
  uint64_t nbits;
  uint64_t nwords;
  uint64_t nset;
  uint64_t *w;
  uint64_t npages; /* BITMAP_PAGE pages of the word image */
  uint64_t ndirty; /* pages flagged in pd */
  uint64_t *pd;    /* one bit per page: changed since last taken */
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
  bm->npages = (bm->nwords + BITMAP_PAGE_WORDS - 1) / BITMAP_PAGE_WORDS;
  bm->w = calloc(bm->nwords ? bm->nwords : 1, sizeof *bm->w);
  bm->pd = calloc(bm->npages ? (bm->npages + 63) / 64 : 1, sizeof *bm->pd);
  if (!bm->w || !bm->pd) {
    bitmap_free(bm);
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
  free(bm->pd);
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

/* Flag the page holding word wi as changed. */
static void
bitmap_touch(struct bitmap *bm, uint64_t wi)
{
  uint64_t page = wi / BITMAP_PAGE_WORDS;
  uint64_t b = 1ull << (page % 64);

  if (!(bm->pd[page / 64] & b)) {
    bm->pd[page / 64] |= b;
    bm->ndirty++;
  }
}

/* Store a new value of word wi, keeping the count and the page flags. */
static void
bitmap_store(struct bitmap *bm, uint64_t wi, uint64_t v)
{
  uint64_t old = bm->w[wi];

  if (v == old)
    return;
  bm->nset += (uint64_t)__builtin_popcountll(v & ~old);
  bm->nset -= (uint64_t)__builtin_popcountll(old & ~v);
  bm->w[wi] = v;
  bitmap_touch(bm, wi);
}

/* Mask of the bits of word wi that lie inside the volume. */
static uint64_t
bitmap_valid_mask(const struct bitmap *bm, uint64_t wi)
{
  if (wi + 1 < bm->nwords || bm->nbits % 64 == 0)
    return ~0ull;
  return bitmap_mask(0, (unsigned)(bm->nbits % 64));
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

    bitmap_store(bm, wi, set ? bm->w[wi] | m : bm->w[wi] & ~m);
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
  for (uint64_t wi = 0; wi < bm->nwords; wi++)
    bitmap_store(bm, wi, bitmap_valid_mask(bm, wi));
}

void
bitmap_clear_all(struct bitmap *bm)
{
  for (uint64_t wi = 0; wi < bm->nwords; wi++)
    bitmap_store(bm, wi, 0);
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

/* First bit of words[] in [from, limit) whose value is `want`, else limit.
 * Whole words that cannot match are skipped. */
static uint64_t
bitmap_find_in(const uint64_t *words, uint64_t from, uint64_t limit,
               bool want)
{
  uint64_t wi, w, last;

  if (from >= limit)
    return limit;
  wi = from / 64;
  last = (limit - 1) / 64;
  w = (want ? words[wi] : ~words[wi]) & ~((1ull << (from % 64)) - 1);
  while (w == 0) {
    if (++wi > last)
      return limit;
    w = want ? words[wi] : ~words[wi];
  }
  return MIN(wi * 64 + (uint64_t)__builtin_ctzll(w), limit);
}

/* The same over the bitmap's own bits (limit <= nbits). */
static uint64_t
bitmap_find(const struct bitmap *bm, uint64_t from, uint64_t limit, bool want)
{
  return bitmap_find_in(bm->w, from, limit, want);
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

uint64_t *
bitmap_words(struct bitmap *bm)
{
  return bm->w;
}

size_t
bitmap_word_count(const struct bitmap *bm)
{
  return (size_t)bm->nwords;
}

void
bitmap_recount(struct bitmap *bm)
{
  uint64_t n = 0;

  if (bm->nwords)
    bm->w[bm->nwords - 1] &= bitmap_valid_mask(bm, bm->nwords - 1);
  for (uint64_t wi = 0; wi < bm->nwords; wi++)
    n += (uint64_t)__builtin_popcountll(bm->w[wi]);
  bm->nset = n;
}

void
bitmap_or_words(struct bitmap *bm, const uint64_t *words, size_t n)
{
  uint64_t end = MIN((uint64_t)n, bm->nwords);

  for (uint64_t wi = 0; wi < end; wi++)
    if (words[wi] & ~bm->w[wi])
      bitmap_store(bm, wi, (bm->w[wi] | words[wi]) &
                               bitmap_valid_mask(bm, wi));
}

uint64_t
bitmap_page_count(const struct bitmap *bm)
{
  return bm->npages;
}

uint64_t
bitmap_page_of(const struct bitmap *bm, uint64_t byte_off)
{
  return (byte_off >> bm->shift) / 64 / BITMAP_PAGE_WORDS;
}

bool
bitmap_page_dirty(const struct bitmap *bm, uint64_t page)
{
  return page < bm->npages && (bm->pd[page / 64] >> (page % 64)) & 1;
}

uint64_t
bitmap_dirty_page_count(const struct bitmap *bm)
{
  return bm->ndirty;
}

/* Set or clear page flags [first, end), keeping ndirty. */
static void
bitmap_flag_pages(struct bitmap *bm, uint64_t first, uint64_t end, bool set)
{
  while (first < end) {
    uint64_t i = first / 64;
    unsigned lo = (unsigned)(first % 64);
    unsigned hi = (unsigned)MIN((uint64_t)64, lo + (end - first));
    uint64_t m = bitmap_mask(lo, hi);

    if (set) {
      bm->ndirty += (uint64_t)__builtin_popcountll(~bm->pd[i] & m);
      bm->pd[i] |= m;
    } else {
      bm->ndirty -= (uint64_t)__builtin_popcountll(bm->pd[i] & m);
      bm->pd[i] &= ~m;
    }
    first += hi - lo;
  }
}

bool
bitmap_take_dirty_pages(struct bitmap *bm, uint64_t *first, uint64_t *n)
{
  uint64_t start, end;

  if (bm->ndirty == 0)
    return false;
  start = bitmap_find_in(bm->pd, 0, bm->npages, true);
  end = bitmap_find_in(bm->pd, start + 1, bm->npages, false);
  bitmap_flag_pages(bm, start, end, false);
  *first = start;
  *n = end - start;
  return true;
}

void
bitmap_mark_pages_dirty(struct bitmap *bm, uint64_t first, uint64_t n)
{
  if (first >= bm->npages)
    return;
  bitmap_flag_pages(bm, first, first + MIN(n, bm->npages - first), true);
}
