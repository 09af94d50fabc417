/* Agent metadata file (format version 2): superblock and activity log, each
 * in two checksummed slots, and the bitmap area.
 *
 * Slot updates go to the slot not holding the current state, followed by
 * fdatasync, so a crash (or a torn write) at any instant leaves the older
 * slot intact; on open the valid slot with the highest sequence wins.
 *
 * Superblock slot, little-endian, META_SLOT_SIZE bytes:
 *     0 u64 magic   8 u32 version   12 u32 crc32c (of the slot, this field 0)
 *    16 u64 seq    24 u8[16] volume_uuid   40 u64 size_bytes
 *    48 u32 block_size   52 u32 role   56 u32 flags   60 u32 bitmap_grain
 *    64 u64 bitmap_bits   72 u64 gen.current   80 u64 gen.bitmap
 *    88 u64 gen.history[GEN_HISTORY]   .. zero
 *
 * Activity-log slot, little-endian, META_SLOT_SIZE bytes:
 *     0 "DPXAL001"   8 u32 crc32c (of the slot, this field 0)   12 u32 n
 *    16 u64 seq   24 u32 extent_shift   28 u32 zero
 *    32 u64 extents[n]   .. zero */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crc32c.h"
#include "meta.h"
#include "util.h"

#define META_OFF_MAGIC 0
#define META_OFF_VERSION 8
#define META_OFF_CRC 12
#define META_OFF_SEQ 16
#define META_OFF_UUID 24
#define META_OFF_SIZE 40
#define META_OFF_BLOCK 48
#define META_OFF_ROLE 52
#define META_OFF_FLAGS 56
#define META_OFF_GRAIN 60
#define META_OFF_BITS 64
#define META_OFF_GEN 72 /* current, bitmap, history[] */
#define META_OFF_HANDOVER (META_OFF_GEN + 8 * (2 + GEN_HISTORY))

#define META_FLAG_CONSISTENT 1u
#define META_FLAG_CLEAN 2u
#define META_FLAG_DISCARD_LOCAL 4u
#define META_FLAG_HANDOVER 8u

#define META_AL_MAGIC "DPXAL001"
#define META_AL_OFF_CRC 8
#define META_AL_OFF_N 12
#define META_AL_OFF_SEQ 16
#define META_AL_OFF_SHIFT 24
#define META_AL_OFF_EXTENTS 32

_Static_assert(META_OFF_HANDOVER + 8 <= META_SLOT_SIZE,
               "superblock fits its slot");
_Static_assert(META_AL_OFF_EXTENTS + 8 * META_AL_MAX <= META_SLOT_SIZE,
               "activity log fits its slot");
_Static_assert(META_AL_OFF == 2 * META_SLOT_SIZE &&
               META_BITMAP_OFF == META_AL_OFF + 2 * META_SLOT_SIZE,
               "file layout");

struct meta {
  int fd;
  int slot;        /* superblock slot holding the current state */
  uint64_t seq;    /* its sequence number */
  struct meta_sb sb;
  int al_slot;     /* activity-log slot holding the newest, -1: none */
  uint64_t al_seq; /* its sequence number (0: none) */
  char path[PATH_MAX];
};

/* crc32c of a slot whose 4-byte checksum field at crc_off counts as 0. */
static uint32_t
meta_slot_crc(const uint8_t *slot, size_t crc_off)
{
  static const uint8_t zero[4];
  uint32_t c;

  c = crc32c(0, slot, crc_off);
  c = crc32c(c, zero, sizeof zero);
  return crc32c(c, slot + crc_off + 4, META_SLOT_SIZE - crc_off - 4);
}

void
meta_sb_encode(const struct meta_sb *sb, uint64_t seq, uint8_t *slot)
{
  uint32_t flags = (sb->consistent ? META_FLAG_CONSISTENT : 0) |
                   (sb->clean_shutdown ? META_FLAG_CLEAN : 0) |
                   (sb->discard_local ? META_FLAG_DISCARD_LOCAL : 0) |
                   (sb->handover ? META_FLAG_HANDOVER : 0);

  memset(slot, 0, META_SLOT_SIZE);
  util_put_le64(slot + META_OFF_MAGIC, META_MAGIC);
  util_put_le32(slot + META_OFF_VERSION, META_VERSION);
  util_put_le64(slot + META_OFF_SEQ, seq);
  memcpy(slot + META_OFF_UUID, sb->volume_uuid, 16);
  util_put_le64(slot + META_OFF_SIZE, sb->size_bytes);
  util_put_le32(slot + META_OFF_BLOCK, sb->block_size);
  util_put_le32(slot + META_OFF_ROLE, sb->role);
  util_put_le32(slot + META_OFF_FLAGS, flags);
  util_put_le32(slot + META_OFF_GRAIN, sb->bitmap_grain);
  util_put_le64(slot + META_OFF_BITS, sb->bitmap_bits);
  util_put_le64(slot + META_OFF_GEN, sb->gen.current);
  util_put_le64(slot + META_OFF_GEN + 8, sb->gen.bitmap);
  for (int i = 0; i < GEN_HISTORY; i++)
    util_put_le64(slot + META_OFF_GEN + 16 + 8 * i, sb->gen.history[i]);
  util_put_le64(slot + META_OFF_HANDOVER, sb->handover_ms);
  util_put_le32(slot + META_OFF_CRC, meta_slot_crc(slot, META_OFF_CRC));
}

int
meta_sb_decode(const uint8_t *slot, size_t len, struct meta_sb *sb,
               uint64_t *seq)
{
  uint32_t flags;

  if (len < META_SLOT_SIZE)
    return -1;
  if (util_get_le64(slot + META_OFF_MAGIC) != META_MAGIC ||
      util_get_le32(slot + META_OFF_VERSION) != META_VERSION ||
      util_get_le32(slot + META_OFF_CRC) != meta_slot_crc(slot, META_OFF_CRC))
    return -1;
  memset(sb, 0, sizeof *sb);
  memcpy(sb->volume_uuid, slot + META_OFF_UUID, 16);
  sb->size_bytes = util_get_le64(slot + META_OFF_SIZE);
  sb->block_size = util_get_le32(slot + META_OFF_BLOCK);
  sb->role = util_get_le32(slot + META_OFF_ROLE);
  flags = util_get_le32(slot + META_OFF_FLAGS);
  sb->consistent = flags & META_FLAG_CONSISTENT;
  sb->clean_shutdown = flags & META_FLAG_CLEAN;
  sb->discard_local = flags & META_FLAG_DISCARD_LOCAL;
  sb->handover = flags & META_FLAG_HANDOVER;
  sb->bitmap_grain = util_get_le32(slot + META_OFF_GRAIN);
  sb->bitmap_bits = util_get_le64(slot + META_OFF_BITS);
  sb->gen.current = util_get_le64(slot + META_OFF_GEN);
  sb->gen.bitmap = util_get_le64(slot + META_OFF_GEN + 8);
  for (int i = 0; i < GEN_HISTORY; i++)
    sb->gen.history[i] = util_get_le64(slot + META_OFF_GEN + 16 + 8 * i);
  sb->handover_ms = util_get_le64(slot + META_OFF_HANDOVER);
  *seq = util_get_le64(slot + META_OFF_SEQ);
  return 0;
}

void
meta_al_encode(const struct meta_al *al, uint64_t seq, uint8_t *slot)
{
  uint32_t n = al->n > META_AL_MAX ? META_AL_MAX : al->n;

  memset(slot, 0, META_SLOT_SIZE);
  memcpy(slot, META_AL_MAGIC, 8);
  util_put_le32(slot + META_AL_OFF_N, n);
  util_put_le64(slot + META_AL_OFF_SEQ, seq);
  util_put_le32(slot + META_AL_OFF_SHIFT, al->extent_shift);
  for (uint32_t i = 0; i < n; i++)
    util_put_le64(slot + META_AL_OFF_EXTENTS + 8 * i, al->extents[i]);
  util_put_le32(slot + META_AL_OFF_CRC, meta_slot_crc(slot, META_AL_OFF_CRC));
}

int
meta_al_decode(const uint8_t *slot, size_t len, struct meta_al *al,
               uint64_t *seq)
{
  uint32_t n, shift;

  if (len < META_SLOT_SIZE || memcmp(slot, META_AL_MAGIC, 8) != 0 ||
      util_get_le32(slot + META_AL_OFF_CRC) !=
          meta_slot_crc(slot, META_AL_OFF_CRC))
    return -1;
  n = util_get_le32(slot + META_AL_OFF_N);
  shift = util_get_le32(slot + META_AL_OFF_SHIFT);
  if (n > META_AL_MAX || shift >= 64)
    return -1;
  al->extent_shift = shift;
  al->n = n;
  for (uint32_t i = 0; i < n; i++)
    al->extents[i] = util_get_le64(slot + META_AL_OFF_EXTENTS + 8 * i);
  *seq = util_get_le64(slot + META_AL_OFF_SEQ);
  return 0;
}

/* Read up to len bytes; returns the count read (short only at end of file)
 * or -errno. */
static ssize_t
meta_pread_all(int fd, uint8_t *buf, size_t len, off_t off)
{
  size_t done = 0;

  while (done < len) {
    ssize_t r = pread(fd, buf + done, len - done, off + (off_t)done);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (r == 0)
      break;
    done += (size_t)r;
  }
  return (ssize_t)done;
}

static void
meta_dirname(const char *path, char *out, size_t outlen)
{
  const char *slash = strrchr(path, '/');

  if (!slash)
    snprintf(out, outlen, ".");
  else if (slash == path)
    snprintf(out, outlen, "/");
  else
    snprintf(out, outlen, "%.*s", (int)(slash - path), path);
}

/* A new file is built under a temporary name and renamed into place, so a
 * crash while creating never leaves a half-written file that would later
 * look like corrupt metadata.  The header is superblock slot A (seq 1, all
 * zero, role NONE) and zeros: slot B and both activity-log slots invalid. */
static int
meta_create(const char *path, char *err, size_t errlen)
{
  struct meta_sb sb = { .role = META_ROLE_NONE };
  char tmp[PATH_MAX + 32], dir[PATH_MAX];
  uint8_t *header;
  int fd, dfd, r;

  header = calloc(1, META_BITMAP_OFF);
  if (!header) {
    snprintf(err, errlen, "metadata %s: cannot create: out of memory", path);
    return -1;
  }
  meta_sb_encode(&sb, 1, header + META_SB_OFF);
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd == -1) {
    snprintf(err, errlen, "metadata %s: cannot create: %m", path);
    free(header);
    return -1;
  }
  r = util_pwrite_all(fd, header, META_BITMAP_OFF, 0);
  free(header);
  if (r == 0 && fdatasync(fd) == -1)
    r = -errno;
  if (close(fd) == -1 && r == 0)
    r = -errno;
  if (r == 0 && rename(tmp, path) == -1)
    r = -errno;
  if (r < 0) {
    errno = -r;
    snprintf(err, errlen, "metadata %s: cannot create: %m", path);
    unlink(tmp);
    return -1;
  }
  meta_dirname(path, dir, sizeof dir);
  dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd != -1) {
    (void)fsync(dfd); /* make the new name durable */
    close(dfd);
  }
  return 0;
}

/* Bytes of the area that carry bits. */
static uint64_t
meta_bitmap_used(uint64_t bits)
{
  return bits / 8 + (bits % 8 != 0);
}

/* Bytes the area occupies on disk. */
static uint64_t
meta_bitmap_area(uint64_t bits)
{
  return (meta_bitmap_used(bits) + META_BITMAP_PAGE - 1) /
         META_BITMAP_PAGE * META_BITMAP_PAGE;
}

/* Neither superblock slot is a valid version-2 one: say why. */
static void
meta_open_explain(const char *path, const uint8_t *slots, char *err,
                  size_t errlen)
{
  for (int i = 0; i < 2; i++) {
    const uint8_t *s = slots + i * META_SLOT_SIZE;
    uint32_t v = util_get_le32(s + META_OFF_VERSION);

    if (util_get_le64(s + META_OFF_MAGIC) == META_MAGIC && v != META_VERSION) {
      snprintf(err, errlen, "metadata %s: unsupported version %u; recreate "
               "it (a full resync follows)", path, v);
      return;
    }
  }
  snprintf(err, errlen, "metadata %s: both superblock copies are corrupt; "
           "restore it or recreate it with a full resync", path);
}

/* The newest valid activity-log slot: *slot -1 and *seq 0 if none.  al may
 * be NULL.  0 or -errno. */
static int
meta_al_scan(int fd, int *slot, uint64_t *seq, struct meta_al *al)
{
  uint8_t buf[2 * META_SLOT_SIZE];
  struct meta_al tmp;
  uint64_t s[2];
  bool ok[2];
  ssize_t n;

  memset(buf, 0, sizeof buf); /* a short file leaves a slot invalid */
  n = meta_pread_all(fd, buf, sizeof buf, META_AL_OFF);
  if (n < 0)
    return (int)n;
  for (int i = 0; i < 2; i++)
    ok[i] = meta_al_decode(buf + i * META_SLOT_SIZE, META_SLOT_SIZE, &tmp,
                           &s[i]) == 0;
  if (!ok[0] && !ok[1]) {
    *slot = -1;
    *seq = 0;
    if (al) {
      al->extent_shift = 0;
      al->n = 0;
    }
    return 0;
  }
  *slot = ok[0] && (!ok[1] || s[0] > s[1]) ? 0 : 1;
  *seq = s[*slot];
  if (al)
    (void)meta_al_decode(buf + *slot * META_SLOT_SIZE, META_SLOT_SIZE, al,
                         &s[*slot]);
  return 0;
}

int
meta_open(const char *path, struct meta **out, bool *created, char *err,
          size_t errlen)
{
  uint8_t slots[2 * META_SLOT_SIZE];
  struct meta *m = NULL;
  struct meta_sb sb[2];
  uint64_t seq[2], need;
  struct stat st;
  bool ok[2];
  ssize_t n;
  int fd, cur, r;

  *created = false;
  if (strlen(path) >= sizeof m->path) {
    snprintf(err, errlen, "metadata %s: path too long", path);
    return -1;
  }
  fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd == -1 && errno == ENOENT) {
    if (meta_create(path, err, errlen) == -1)
      return -1;
    *created = true;
    fd = open(path, O_RDWR | O_CLOEXEC);
  }
  if (fd == -1) {
    snprintf(err, errlen, "metadata %s: cannot open: %m", path);
    return -1;
  }
  if (flock(fd, LOCK_EX | LOCK_NB) == -1) {
    if (errno == EWOULDBLOCK)
      snprintf(err, errlen, "metadata %s: in use by another process (it "
               "holds a lock on it); stop that process first", path);
    else
      snprintf(err, errlen, "metadata %s: cannot lock: %m", path);
    goto err;
  }

  /* A short file just leaves the missing slot invalid. */
  memset(slots, 0, sizeof slots);
  n = meta_pread_all(fd, slots, sizeof slots, META_SB_OFF);
  if (n < 0) {
    errno = (int)-n;
    snprintf(err, errlen, "metadata %s: read: %m", path);
    goto err;
  }
  for (int i = 0; i < 2; i++)
    ok[i] = meta_sb_decode(slots + i * META_SLOT_SIZE, META_SLOT_SIZE, &sb[i],
                           &seq[i]) == 0;
  if (!ok[0] && !ok[1]) {
    meta_open_explain(path, slots, err, errlen);
    goto err;
  }
  cur = ok[0] && (!ok[1] || seq[0] > seq[1]) ? 0 : 1;

  /* Bits the superblock counts must exist: a shorter file lost some. */
  need = META_BITMAP_OFF + meta_bitmap_used(sb[cur].bitmap_bits);
  if (sb[cur].bitmap_bits > 0) {
    if (fstat(fd, &st) == -1) {
      snprintf(err, errlen, "metadata %s: stat: %m", path);
      goto err;
    }
    if ((uint64_t)st.st_size < need) {
      snprintf(err, errlen, "metadata %s: bitmap area is truncated (the "
               "file has %llu bytes, needs %llu); restore it or recreate it "
               "(a full resync follows)", path,
               (unsigned long long)st.st_size, (unsigned long long)need);
      goto err;
    }
  }

  m = calloc(1, sizeof *m);
  if (!m) {
    snprintf(err, errlen, "metadata %s: out of memory", path);
    goto err;
  }
  r = meta_al_scan(fd, &m->al_slot, &m->al_seq, NULL);
  if (r < 0) {
    errno = -r;
    snprintf(err, errlen, "metadata %s: read: %m", path);
    goto err;
  }
  m->fd = fd;
  m->slot = cur;
  m->seq = seq[cur];
  m->sb = sb[cur];
  strcpy(m->path, path);
  *out = m;
  return 0;

err:
  free(m);
  close(fd);
  return -1;
}

const struct meta_sb *
meta_get(const struct meta *m)
{
  return &m->sb;
}

/* Write sb (with this bitmap_bits) to the older slot, fdatasync. */
static int
meta_write_sb(struct meta *m, const struct meta_sb *sb, uint64_t bits)
{
  uint8_t slot[META_SLOT_SIZE];
  struct meta_sb next = *sb;
  int target = 1 - m->slot;
  int r;

  next.bitmap_bits = bits;
  meta_sb_encode(&next, m->seq + 1, slot);
  r = util_pwrite_all(m->fd, slot, sizeof slot,
                      META_SB_OFF + (uint64_t)target * META_SLOT_SIZE);
  if (r == 0 && fdatasync(m->fd) == -1)
    r = -errno;
  if (r < 0)
    return r; /* the current slot is untouched and stays authoritative */
  m->slot = target;
  m->seq++;
  m->sb = next;
  return 0;
}

int
meta_write(struct meta *m, const struct meta_sb *sb)
{
  return meta_write_sb(m, sb, m->sb.bitmap_bits);
}

void
meta_close(struct meta *m)
{
  if (!m)
    return;
  close(m->fd);
  free(m);
}

/* Growing: first make every byte past the old bits zero (a shrink may have
 * left stale bits in the last page, or a crash a longer file), then extend,
 * sync, and only then let the superblock name the new size.  Shrinking:
 * the superblock first, then the file; a crash between leaves a longer
 * file, which is harmless. */
int
meta_bitmap_resize(struct meta *m, uint64_t bits)
{
  uint64_t old = m->sb.bitmap_bits;
  off_t last = (off_t)(META_BITMAP_OFF + old / 8);
  int r;

  if (bits == old)
    return 0;
  if (bits / 8 > (uint64_t)INT64_MAX - META_BITMAP_OFF - 2 * META_BITMAP_PAGE)
    return -EFBIG;
  if (bits < old) {
    r = meta_write_sb(m, &m->sb, bits);
    if (r < 0)
      return r;
    /* A failure here only wastes space: the superblock already says
     * `bits`, and a later grow zeroes what lies past them. */
    if (ftruncate(m->fd, (off_t)(META_BITMAP_OFF + meta_bitmap_area(bits))) ==
        -1)
      return 0;
    return 0;
  }

  if (ftruncate(m->fd, (off_t)(META_BITMAP_OFF + meta_bitmap_used(old))) ==
      -1)
    return -errno;
  if (old % 8) {
    uint8_t b;
    ssize_t n = meta_pread_all(m->fd, &b, 1, last);

    if (n < 0)
      return (int)n;
    if (n == 0)
      return -EIO;
    b &= (uint8_t)((1u << (old % 8)) - 1);
    r = util_pwrite_all(m->fd, &b, 1, (uint64_t)last);
    if (r < 0)
      return r;
  }
  if (ftruncate(m->fd, (off_t)(META_BITMAP_OFF + meta_bitmap_area(bits))) ==
      -1)
    return -errno;
  if (fdatasync(m->fd) == -1)
    return -errno;
  return meta_write_sb(m, &m->sb, bits);
}

size_t
meta_bitmap_image_len(const struct meta *m)
{
  return (size_t)((meta_bitmap_used(m->sb.bitmap_bits) + 7) / 8 * 8);
}

uint64_t
meta_bitmap_pages(const struct meta *m)
{
  return meta_bitmap_area(m->sb.bitmap_bits) / META_BITMAP_PAGE;
}

int
meta_bitmap_read(struct meta *m, void *buf, size_t len)
{
  uint64_t bits = m->sb.bitmap_bits;
  size_t used = (size_t)meta_bitmap_used(bits);
  uint8_t *p = buf;
  ssize_t n;

  if (len < meta_bitmap_image_len(m))
    return -EINVAL;
  n = meta_pread_all(m->fd, p, used, META_BITMAP_OFF);
  if (n < 0)
    return (int)n;
  if ((size_t)n < used)
    return -EIO; /* the file shrank under us (meta_open checked it) */
  memset(p + used, 0, len - used);
  if (bits % 8)
    p[used - 1] &= (uint8_t)((1u << (bits % 8)) - 1);
  return 0;
}

int
meta_bitmap_write(struct meta *m, const void *image, uint64_t first_page,
                  uint64_t npages)
{
  uint64_t used = meta_bitmap_used(m->sb.bitmap_bits);
  uint64_t start, end;

  if (npages == 0)
    return 0;
  if (first_page >= meta_bitmap_pages(m) ||
      npages > meta_bitmap_pages(m) - first_page)
    return -EINVAL;
  start = first_page * META_BITMAP_PAGE;
  end = (first_page + npages) * META_BITMAP_PAGE;
  if (end > used)
    end = used;
  return util_pwrite_all(m->fd, (const uint8_t *)image + start,
                         (size_t)(end - start),
                         META_BITMAP_OFF + start);
}

int
meta_sync(struct meta *m)
{
  return fdatasync(m->fd) == -1 ? -errno : 0;
}

int
meta_al_read(struct meta *m, struct meta_al *out)
{
  int slot, r;
  uint64_t seq;

  r = meta_al_scan(m->fd, &slot, &seq, out);
  if (r < 0)
    return r;
  m->al_slot = slot;
  m->al_seq = seq;
  return 0;
}

int
meta_al_write(struct meta *m, const struct meta_al *al)
{
  uint8_t slot[META_SLOT_SIZE];
  int target = m->al_slot == 0 ? 1 : 0;
  int r;

  if (al->n > META_AL_MAX || al->extent_shift >= 64)
    return -EINVAL;
  meta_al_encode(al, m->al_seq + 1, slot);
  r = util_pwrite_all(m->fd, slot, sizeof slot,
                      META_AL_OFF + (uint64_t)target * META_SLOT_SIZE);
  if (r == 0 && fdatasync(m->fd) == -1)
    r = -errno;
  if (r < 0)
    return r; /* the newest slot is untouched */
  m->al_slot = target;
  m->al_seq++;
  return 0;
}
