/* Agent metadata beside the volume, one file (format version 2):
 *
 *       0  superblock slot A        4096  superblock slot B
 *    8192  activity-log slot A     12288  activity-log slot B
 *   16384  bitmap area: ceil(bitmap_bits / 8) bytes rounded up to 4 KiB
 *
 * The superblock and the activity log each live in two checksummed 4 KiB
 * slots written alternately with fdatasync in between, so a crash at any
 * instant leaves either the old or the new state readable.  The slot codecs
 * are pure (no I/O) for unit tests and fuzzing.
 *
 * The bitmap area holds the persistent write-intent / out-of-sync bitmap:
 * bit i of the volume is bit (i % 8) of byte (i / 8), which is the byte image
 * of common/bitmap.c's words (bitmap_words).  Cost: one bit per bitmap_grain
 * bytes of volume; at the default 4 KiB per bit that is 32 MiB of bitmap per
 * TiB of volume, on disk and again in memory (256 KiB per TiB at 512 KiB per
 * bit). */
#ifndef DUPLEX_META_H
#define DUPLEX_META_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gen.h"

#define META_SLOT_SIZE 4096u
#define META_MAGIC 0x4450584d45544131ull /* "DPXMETA1" */
#define META_VERSION 2u

#define META_SB_OFF 0u          /* superblock slots A, B */
#define META_AL_OFF 8192u       /* activity-log slots A, B */
#define META_BITMAP_OFF 16384u  /* bitmap area; also the header size */
#define META_BITMAP_PAGE 4096u  /* unit of meta_bitmap_write */

enum meta_role { META_ROLE_NONE = 0, META_ROLE_PRIMARY = 1,
                 META_ROLE_SECONDARY = 2 };

struct meta_sb {
  uint8_t volume_uuid[16]; /* identity of the data (the primary's volume) */
  uint64_t size_bytes;
  uint32_t block_size;     /* I/O alignment (BDEV_ALIGN) */
  uint32_t role;           /* enum meta_role */
  bool consistent;         /* secondary: a full sync of volume_uuid finished */
  bool clean_shutdown;
  bool discard_local;      /* operator asked to discard local changes at the
                              next connect */
  bool handover;           /* a planned switchover (demote) ended with both
                              sides holding the same data: the primary that
                              demoted, and the secondary that may now be
                              promoted with nothing to resync */
  uint64_t handover_ms;    /* when (Unix ms); kept after the flag clears */
  struct gen_ids gen;
  uint32_t bitmap_grain;   /* volume bytes per bitmap bit */
  uint64_t bitmap_bits;    /* bits in the bitmap area; owned by
                              meta_bitmap_resize (meta_write keeps it) */
};

/* Encode into a META_SLOT_SIZE buffer with sequence number seq. */
void meta_sb_encode(const struct meta_sb *sb, uint64_t seq, uint8_t *slot);
/* 0 if slot holds a valid version-2 superblock (magic, version, crc32c),
 * else -1. */
int meta_sb_decode(const uint8_t *slot, size_t len, struct meta_sb *sb,
                   uint64_t *seq);

struct meta;

/* Open or create path, holding an exclusive lock on it.  *created tells
 * whether it was new: then the superblock is all zero with role NONE, the
 * activity log is empty and the bitmap area has 0 bits.  A file whose both
 * superblock slots are invalid, of another format version, or shorter than
 * its bitmap area is an error, never silently reinitialised. */
int meta_open(const char *path, struct meta **out, bool *created, char *err,
              size_t errlen);
const struct meta_sb *meta_get(const struct meta *m);
/* Crash-safe update: write the older slot, fdatasync.  sb->bitmap_bits is
 * ignored (the current value is kept): only meta_bitmap_resize changes it.
 * 0 or -errno. */
int meta_write(struct meta *m, const struct meta_sb *sb);
void meta_close(struct meta *m);

/* Bitmap area. */

/* Size the area for `bits` bits (bits past the old size read as zero) and
 * record bitmap_bits in the superblock.  Crash-safe: the superblock names
 * the old or the new size, and the file always holds an area that large.
 * 0 or -errno. */
int meta_bitmap_resize(struct meta *m, uint64_t bits);
/* Bytes of the in-memory image: ceil(bitmap_bits / 8) rounded up to 8, i.e.
 * bitmap_word_count * 8 of a bitmap with as many bits. */
size_t meta_bitmap_image_len(const struct meta *m);
/* Number of META_BITMAP_PAGE pages of the area (the last may be partial). */
uint64_t meta_bitmap_pages(const struct meta *m);
/* The whole area into buf (len >= meta_bitmap_image_len; bits past
 * bitmap_bits and bytes past the image come back zero).  0 or -errno. */
int meta_bitmap_read(struct meta *m, void *buf, size_t len);
/* Write pages [first_page, first_page + npages) of the in-memory image
 * (meta_bitmap_image_len bytes, the layout meta_bitmap_read returns) to the
 * area; a last partial page writes only the bytes that exist.  No fsync:
 * call meta_sync before relying on it.  0 or -errno (-EINVAL past the
 * area). */
int meta_bitmap_write(struct meta *m, const void *image, uint64_t first_page,
                      uint64_t npages);
/* fdatasync of the file (bitmap writes).  0 or -errno. */
int meta_sync(struct meta *m);

/* Activity log: the primary's write-intent record of hot extents.  It is
 * written before a write lands in an extent not in it; after a crash every
 * extent in it is resynced. */

#define META_AL_MAX 500

struct meta_al {
  uint32_t extent_shift;          /* extent = volume offset >> extent_shift */
  uint32_t n;                     /* <= META_AL_MAX */
  uint64_t extents[META_AL_MAX];
};

/* Encode into a META_SLOT_SIZE buffer with sequence number seq (al->n must
 * be <= META_AL_MAX). */
void meta_al_encode(const struct meta_al *al, uint64_t seq, uint8_t *slot);
/* 0 if slot holds a valid activity log (magic "DPXAL001", crc32c,
 * n <= META_AL_MAX, extent_shift < 64), else -1. */
int meta_al_decode(const uint8_t *slot, size_t len, struct meta_al *al,
                   uint64_t *seq);
/* The newest valid slot; both invalid or never written: n = 0.  0, or
 * -errno on an I/O error. */
int meta_al_read(struct meta *m, struct meta_al *out);
/* Write the slot not holding the newest, fdatasync.  0 or -errno (-EINVAL
 * if al->n > META_AL_MAX or extent_shift >= 64). */
int meta_al_write(struct meta *m, const struct meta_al *al);

#endif
