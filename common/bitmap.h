/* In-memory out-of-sync / write-intent bitmap: one bit per `grain` bytes of
 * the volume.  Byte ranges are rounded outward on set and inward on clear,
 * so a bit is only cleared when its whole region is covered. */
#ifndef DUPLEX_BITMAP_H
#define DUPLEX_BITMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct bitmap;

struct bitmap *bitmap_new(uint64_t size_bytes, uint32_t grain);
void bitmap_free(struct bitmap *bm);

uint32_t bitmap_grain(const struct bitmap *bm);
uint64_t bitmap_bits(const struct bitmap *bm);

void bitmap_set_range(struct bitmap *bm, uint64_t off, uint64_t len);
void bitmap_clear_range(struct bitmap *bm, uint64_t off, uint64_t len);
void bitmap_set_all(struct bitmap *bm);
void bitmap_clear_all(struct bitmap *bm);
bool bitmap_test(const struct bitmap *bm, uint64_t off); /* bit holding off */

/* First run of set bits starting at or after `from`, at most max_len bytes
 * long (max_len a multiple of grain), clipped to the volume size.  false if
 * no bit is set at or after from. */
bool bitmap_next_run(const struct bitmap *bm, uint64_t from, uint64_t max_len,
                     uint64_t *off, uint64_t *len);

/* Bytes covered by set bits (the last bit clipped to the volume size). */
uint64_t bitmap_dirty_bytes(const struct bitmap *bm);

/* The word image, for persisting it (common/meta.h's bitmap area): bit i is
 * bit i % 64 of word i / 64, little-endian, so as bytes bit i is bit i % 8 of
 * byte i / 8.  After changing words directly, call bitmap_recount (and
 * bitmap_mark_pages_dirty if they must be written back). */
uint64_t *bitmap_words(struct bitmap *bm);
size_t bitmap_word_count(const struct bitmap *bm);
/* Recompute the set-bit count after words were loaded, clearing any bits
 * past bitmap_bits.  Page-dirty flags are left alone. */
void bitmap_recount(struct bitmap *bm);
/* OR min(n, bitmap_word_count) words of another image in (bits past
 * bitmap_bits ignored); the pages that change become dirty. */
void bitmap_or_words(struct bitmap *bm, const uint64_t *words, size_t n);

/* Page-dirty tracking for lazy flushing: the bitmap remembers which 4 KiB
 * pages of its word image (BITMAP_PAGE bytes, the unit of
 * meta_bitmap_write) changed since they were last taken.  Setting a bit that
 * is already set, or clearing a clear one, changes nothing. */
#define BITMAP_PAGE 4096u
uint64_t bitmap_page_count(const struct bitmap *bm);
/* Page of the word holding the bit for volume offset byte_off. */
uint64_t bitmap_page_of(const struct bitmap *bm, uint64_t byte_off);
bool bitmap_page_dirty(const struct bitmap *bm, uint64_t page);
uint64_t bitmap_dirty_page_count(const struct bitmap *bm);
/* The first run of dirty pages, [*first, *first + *n), now marked clean;
 * false if no page is dirty.  Call until false to take them all. */
bool bitmap_take_dirty_pages(struct bitmap *bm, uint64_t *first,
                             uint64_t *n);
/* Mark pages [first, first + n) dirty again, e.g. after writing them failed
 * (clipped to bitmap_page_count). */
void bitmap_mark_pages_dirty(struct bitmap *bm, uint64_t first, uint64_t n);

#endif
