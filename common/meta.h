/* Agent metadata beside the volume: a superblock kept in two checksummed
 * 4 KiB slots written alternately with fdatasync in between, so a crash at
 * any instant leaves either the old or the new state readable.  The slot
 * codec is pure (no I/O) for unit tests and fuzzing. */
#ifndef DUPLEX_META_H
#define DUPLEX_META_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define META_SLOT_SIZE 4096u
#define META_MAGIC 0x4450584d45544131ull /* "DPXMETA1" */
#define META_VERSION 1u

enum meta_role { META_ROLE_NONE = 0, META_ROLE_PRIMARY = 1,
                 META_ROLE_SECONDARY = 2 };

struct meta_sb {
  uint8_t volume_uuid[16]; /* identity of the data (the primary's volume) */
  uint64_t size_bytes;
  uint32_t block_size;     /* bitmap grain */
  uint32_t role;           /* enum meta_role */
  bool consistent;         /* secondary: a full sync of volume_uuid finished */
  bool clean_shutdown;
};

/* Encode into a META_SLOT_SIZE buffer with sequence number seq. */
void meta_sb_encode(const struct meta_sb *sb, uint64_t seq, uint8_t *slot);
/* 0 if slot holds a valid superblock (magic, version, crc32c), else -1. */
int meta_sb_decode(const uint8_t *slot, size_t len, struct meta_sb *sb,
                   uint64_t *seq);

struct meta;

/* Open or create path.  *created tells whether it was new (then the
 * superblock is all zero with role NONE).  A file whose both slots are
 * invalid is an error, never silently reinitialised. */
int meta_open(const char *path, struct meta **out, bool *created, char *err,
              size_t errlen);
const struct meta_sb *meta_get(const struct meta *m);
/* Crash-safe update: write the older slot, fdatasync.  0 or -errno. */
int meta_write(struct meta *m, const struct meta_sb *sb);
void meta_close(struct meta *m);

#endif
