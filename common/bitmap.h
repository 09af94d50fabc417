/* In-memory out-of-sync / write-intent bitmap: one bit per `grain` bytes of
 * the volume.  Byte ranges are rounded outward on set and inward on clear,
 * so a bit is only cleared when its whole region is covered. */
#ifndef DUPLEX_BITMAP_H
#define DUPLEX_BITMAP_H

#include <stdbool.h>
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

#endif
