/* Agent metadata: a superblock kept in two checksummed slots of one file.
 * Updates go to the slot not holding the current state, followed by
 * fdatasync, so a crash (or a torn write) at any instant leaves the older
 * slot intact; on open the valid slot with the highest sequence wins.
 *
 * Slot layout, little-endian, META_SLOT_SIZE bytes:
 *     0 u64 magic   8 u32 version   12 u32 crc32c (of the slot, this field 0)
 *    16 u64 seq    24 u8[16] volume_uuid   40 u64 size_bytes
 *    48 u32 block_size   52 u32 role   56 u32 flags   60.. zero */
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

#define META_OFF_MAGIC 0
#define META_OFF_VERSION 8
#define META_OFF_CRC 12
#define META_OFF_SEQ 16
#define META_OFF_UUID 24
#define META_OFF_SIZE 40
#define META_OFF_BLOCK 48
#define META_OFF_ROLE 52
#define META_OFF_FLAGS 56

#define META_FLAG_CONSISTENT 1u
#define META_FLAG_CLEAN 2u

struct meta {
  int fd;
  int slot;     /* slot holding the current superblock */
  uint64_t seq; /* its sequence number */
  struct meta_sb sb;
  char path[PATH_MAX];
};

static void
meta_put32(uint8_t *p, uint32_t v)
{
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static void
meta_put64(uint8_t *p, uint64_t v)
{
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t
meta_get32(const uint8_t *p)
{
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--)
    v = v << 8 | p[i];
  return v;
}

static uint64_t
meta_get64(const uint8_t *p)
{
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = v << 8 | p[i];
  return v;
}

static uint32_t
meta_slot_crc(const uint8_t *slot)
{
  static const uint8_t zero[4];
  uint32_t c;

  c = crc32c(0, slot, META_OFF_CRC);
  c = crc32c(c, zero, sizeof zero);
  return crc32c(c, slot + META_OFF_CRC + 4, META_SLOT_SIZE - META_OFF_CRC - 4);
}

void
meta_sb_encode(const struct meta_sb *sb, uint64_t seq, uint8_t *slot)
{
  uint32_t flags = (sb->consistent ? META_FLAG_CONSISTENT : 0) |
                   (sb->clean_shutdown ? META_FLAG_CLEAN : 0);

  memset(slot, 0, META_SLOT_SIZE);
  meta_put64(slot + META_OFF_MAGIC, META_MAGIC);
  meta_put32(slot + META_OFF_VERSION, META_VERSION);
  meta_put64(slot + META_OFF_SEQ, seq);
  memcpy(slot + META_OFF_UUID, sb->volume_uuid, 16);
  meta_put64(slot + META_OFF_SIZE, sb->size_bytes);
  meta_put32(slot + META_OFF_BLOCK, sb->block_size);
  meta_put32(slot + META_OFF_ROLE, sb->role);
  meta_put32(slot + META_OFF_FLAGS, flags);
  meta_put32(slot + META_OFF_CRC, meta_slot_crc(slot));
}

int
meta_sb_decode(const uint8_t *slot, size_t len, struct meta_sb *sb,
               uint64_t *seq)
{
  uint32_t flags;

  if (len < META_SLOT_SIZE)
    return -1;
  if (meta_get64(slot + META_OFF_MAGIC) != META_MAGIC ||
      meta_get32(slot + META_OFF_VERSION) != META_VERSION ||
      meta_get32(slot + META_OFF_CRC) != meta_slot_crc(slot))
    return -1;
  memset(sb, 0, sizeof *sb);
  memcpy(sb->volume_uuid, slot + META_OFF_UUID, 16);
  sb->size_bytes = meta_get64(slot + META_OFF_SIZE);
  sb->block_size = meta_get32(slot + META_OFF_BLOCK);
  sb->role = meta_get32(slot + META_OFF_ROLE);
  flags = meta_get32(slot + META_OFF_FLAGS);
  sb->consistent = flags & META_FLAG_CONSISTENT;
  sb->clean_shutdown = flags & META_FLAG_CLEAN;
  *seq = meta_get64(slot + META_OFF_SEQ);
  return 0;
}

static int
meta_pwrite_all(int fd, const uint8_t *buf, size_t len, off_t off)
{
  while (len > 0) {
    ssize_t r = pwrite(fd, buf, len, off);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (r == 0)
      return -ENOSPC;
    buf += r;
    len -= (size_t)r;
    off += r;
  }
  return 0;
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
 * look like corrupt metadata. */
static int
meta_create(const char *path, char *err, size_t errlen)
{
  uint8_t slots[2 * META_SLOT_SIZE];
  struct meta_sb sb = { .role = META_ROLE_NONE };
  char tmp[PATH_MAX + 32], dir[PATH_MAX];
  int fd, dfd, r;

  meta_sb_encode(&sb, 1, slots);
  memset(slots + META_SLOT_SIZE, 0, META_SLOT_SIZE);
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd == -1) {
    snprintf(err, errlen, "metadata %s: cannot create: %m", path);
    return -1;
  }
  r = meta_pwrite_all(fd, slots, sizeof slots, 0);
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

int
meta_open(const char *path, struct meta **out, bool *created, char *err,
          size_t errlen)
{
  uint8_t slots[2 * META_SLOT_SIZE];
  struct meta *m = NULL;
  struct meta_sb sb[2];
  uint64_t seq[2];
  bool ok[2];
  ssize_t n;
  int fd;

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
  n = pread(fd, slots, sizeof slots, 0);
  if (n < 0) {
    snprintf(err, errlen, "metadata %s: read: %m", path);
    goto err;
  }
  for (int i = 0; i < 2; i++)
    ok[i] = meta_sb_decode(slots + i * META_SLOT_SIZE, META_SLOT_SIZE, &sb[i],
                           &seq[i]) == 0;
  if (!ok[0] && !ok[1]) {
    uint32_t v0 = meta_get32(slots + META_OFF_VERSION);
    if (meta_get64(slots) == META_MAGIC && v0 > META_VERSION)
      snprintf(err, errlen, "metadata %s: format version %u is newer than "
               "this duplex understands (%u); run a newer duplex", path, v0,
               META_VERSION);
    else
      snprintf(err, errlen, "metadata %s: both superblock copies are "
               "corrupt; restore it or recreate it with a full resync", path);
    goto err;
  }

  m = calloc(1, sizeof *m);
  if (!m) {
    snprintf(err, errlen, "metadata %s: out of memory", path);
    goto err;
  }
  m->fd = fd;
  m->slot = ok[0] && (!ok[1] || seq[0] > seq[1]) ? 0 : 1;
  m->seq = seq[m->slot];
  m->sb = sb[m->slot];
  strcpy(m->path, path);
  *out = m;
  return 0;

err:
  close(fd);
  return -1;
}

const struct meta_sb *
meta_get(const struct meta *m)
{
  return &m->sb;
}

int
meta_write(struct meta *m, const struct meta_sb *sb)
{
  uint8_t slot[META_SLOT_SIZE];
  int target = 1 - m->slot;
  int r;

  meta_sb_encode(sb, m->seq + 1, slot);
  r = meta_pwrite_all(m->fd, slot, sizeof slot,
                      (off_t)target * META_SLOT_SIZE);
  if (r == 0 && fdatasync(m->fd) == -1)
    r = -errno;
  if (r < 0)
    return r; /* the current slot is untouched and stays authoritative */
  m->slot = target;
  m->seq++;
  m->sb = *sb;
  return 0;
}

void
meta_close(struct meta *m)
{
  if (!m)
    return;
  close(m->fd);
  free(m);
}
