/* Metadata file: superblock slot codec, creation, alternating crash-safe
 * writes, recovery from a torn, corrupted or truncated slot, refusal of
 * other format versions, the activity log and the bitmap area. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "bitmap.h"
#include "crc32c.h"
#include "meta.h"

struct fixture {
  char dir[64];
  char path[128];
};

static int
setup(void **state)
{
  struct fixture *fx = calloc(1, sizeof *fx);

  strcpy(fx->dir, "/tmp/duplex-meta-XXXXXX");
  if (!mkdtemp(fx->dir))
    return -1;
  snprintf(fx->path, sizeof fx->path, "%s/vol.meta", fx->dir);
  *state = fx;
  return 0;
}

static int
teardown(void **state)
{
  struct fixture *fx = *state;

  unlink(fx->path);
  rmdir(fx->dir);
  free(fx);
  return 0;
}

static struct meta_sb
sample_sb(uint32_t role)
{
  struct meta_sb sb = {
    .size_bytes = 1ull << 34,
    .block_size = 65536,
    .role = role,
    .consistent = true,
    .clean_shutdown = false,
    .discard_local = true,
    .gen = { .current = 0x1111222233334444ull, .bitmap = 0x5555666677778888ull,
             .history = { 0x99990000aaaabbbbull, 0xccccddddeeeeffffull } },
    .bitmap_grain = 4096,
  };
  for (int i = 0; i < 16; i++)
    sb.volume_uuid[i] = (uint8_t)(0xa0 + i);
  return sb;
}

static void
assert_sb_equal(const struct meta_sb *a, const struct meta_sb *b)
{
  assert_memory_equal(a->volume_uuid, b->volume_uuid, 16);
  assert_true(a->size_bytes == b->size_bytes);
  assert_int_equal(a->block_size, b->block_size);
  assert_int_equal(a->role, b->role);
  assert_int_equal(a->consistent, b->consistent);
  assert_int_equal(a->clean_shutdown, b->clean_shutdown);
  assert_int_equal(a->discard_local, b->discard_local);
  assert_true(a->gen.current == b->gen.current);
  assert_true(a->gen.bitmap == b->gen.bitmap);
  for (int i = 0; i < GEN_HISTORY; i++)
    assert_true(a->gen.history[i] == b->gen.history[i]);
  assert_int_equal(a->bitmap_grain, b->bitmap_grain);
  assert_true(a->bitmap_bits == b->bitmap_bits);
}

static struct meta *
open_ok(const char *path, bool want_created)
{
  struct meta *m = NULL;
  char err[256] = "";
  bool created;

  if (meta_open(path, &m, &created, err, sizeof err) != 0)
    fail_msg("meta_open %s: %s", path, err);
  assert_int_equal(created, want_created);
  return m;
}

static void
open_fails(const char *path, const char *want)
{
  struct meta *m;
  char err[256] = "";
  bool created;

  assert_int_equal(meta_open(path, &m, &created, err, sizeof err), -1);
  if (!strstr(err, want))
    fail_msg("error \"%s\" lacks \"%s\"", err, want);
  assert_non_null(strstr(err, path));
}

static off_t
file_size(const char *path)
{
  struct stat st;

  assert_int_equal(stat(path, &st), 0);
  return st.st_size;
}

static void
corrupt_byte(const char *path, off_t off)
{
  int fd = open(path, O_RDWR);
  uint8_t b;

  assert_true(fd >= 0);
  assert_int_equal(pread(fd, &b, 1, off), 1);
  b ^= 0x01;
  assert_int_equal(pwrite(fd, &b, 1, off), 1);
  close(fd);
}

static void
test_codec_roundtrip(void **state)
{
  struct meta_sb sb = sample_sb(META_ROLE_SECONDARY), out;
  uint8_t slot[META_SLOT_SIZE];
  uint64_t seq;

  (void)state;
  sb.clean_shutdown = true;
  sb.bitmap_bits = 0x123456789ull;
  meta_sb_encode(&sb, 42, slot);
  assert_int_equal(meta_sb_decode(slot, sizeof slot, &out, &seq), 0);
  assert_int_equal(seq, 42);
  assert_sb_equal(&sb, &out);

  /* Every flag on its own survives, and none leaks into another. */
  for (int f = 0; f < 8; f++) {
    struct meta_sb one = { 0 };
    one.consistent = f & 1;
    one.clean_shutdown = f & 2;
    one.discard_local = f & 4;
    meta_sb_encode(&one, 1, slot);
    assert_int_equal(meta_sb_decode(slot, sizeof slot, &out, &seq), 0);
    assert_sb_equal(&one, &out);
  }
  meta_sb_encode(&sb, 42, slot);
  /* Little-endian magic at offset 0: "1ATEMXPD" read as bytes. */
  assert_int_equal(slot[0], 0x31);
  assert_int_equal(slot[7], 0x44);

  assert_int_equal(meta_sb_decode(slot, sizeof slot - 1, &out, &seq), -1);
  /* Any single flipped bit anywhere in the slot is caught. */
  for (size_t i = 0; i < META_SLOT_SIZE; i += 37) {
    slot[i] ^= 0x10;
    assert_int_equal(meta_sb_decode(slot, sizeof slot, &out, &seq), -1);
    slot[i] ^= 0x10;
  }
  memset(slot, 0, sizeof slot);
  assert_int_equal(meta_sb_decode(slot, sizeof slot, &out, &seq), -1);
}

static void
test_create_then_reopen(void **state)
{
  struct fixture *fx = *state;
  struct meta_sb zero = { 0 };
  struct meta *m;
  struct stat st;
  char err[256];
  bool created;

  assert_int_equal(meta_open(fx->path, &m, &created, err, sizeof err), 0);
  assert_true(created);
  assert_sb_equal(meta_get(m), &zero);
  assert_int_equal(meta_get(m)->role, META_ROLE_NONE);
  assert_int_equal(stat(fx->path, &st), 0);
  assert_int_equal(st.st_size, META_BITMAP_OFF);
  assert_true(meta_get(m)->bitmap_bits == 0);
  assert_int_equal(meta_bitmap_pages(m), 0);
  meta_close(m);

  assert_int_equal(meta_open(fx->path, &m, &created, err, sizeof err), 0);
  assert_false(created);
  meta_close(m);
}

static void
test_write_roundtrip_and_seq_order(void **state)
{
  struct fixture *fx = *state;
  struct meta_sb sb = sample_sb(META_ROLE_PRIMARY);
  struct meta *m;
  char err[256];
  bool created;

  assert_int_equal(meta_open(fx->path, &m, &created, err, sizeof err), 0);
  /* Several writes alternate slots; the last one must win on reopen
   * whichever slot it landed in. */
  for (uint32_t i = 1; i <= 5; i++) {
    sb.block_size = 4096 * i;
    assert_int_equal(meta_write(m, &sb), 0);
    assert_sb_equal(meta_get(m), &sb);
    meta_close(m);
    assert_int_equal(meta_open(fx->path, &m, &created, err, sizeof err), 0);
    assert_false(created);
    assert_sb_equal(meta_get(m), &sb);
  }
  meta_close(m);
}

/* Find which slot holds the newest superblock. */
static int
newest_slot(const char *path, uint64_t *seq_out)
{
  uint8_t slots[2 * META_SLOT_SIZE];
  struct meta_sb sb;
  uint64_t seq[2] = { 0, 0 };
  int fd = open(path, O_RDONLY), best = -1;

  assert_int_equal(pread(fd, slots, sizeof slots, 0), sizeof slots);
  close(fd);
  for (int i = 0; i < 2; i++)
    if (meta_sb_decode(slots + i * META_SLOT_SIZE, META_SLOT_SIZE, &sb,
                       &seq[i]) == 0 &&
        (best == -1 || seq[i] > seq[best]))
      best = i;
  *seq_out = best >= 0 ? seq[best] : 0;
  return best;
}

static void
test_torn_slot_falls_back(void **state)
{
  struct fixture *fx = *state;
  struct meta_sb old = sample_sb(META_ROLE_SECONDARY), new = old;
  struct meta *m;
  char err[256];
  bool created;
  uint64_t seq;
  int slot;

  assert_int_equal(meta_open(fx->path, &m, &created, err, sizeof err), 0);
  assert_int_equal(meta_write(m, &old), 0);
  new.consistent = false;
  new.size_bytes *= 2;
  assert_int_equal(meta_write(m, &new), 0);
  meta_close(m);

  /* Tear the newest slot (as a crash mid-write would): the older state
   * comes back. */
  slot = newest_slot(fx->path, &seq);
  assert_true(slot >= 0);
  corrupt_byte(fx->path, (off_t)slot * META_SLOT_SIZE + 2000);
  assert_int_equal(meta_open(fx->path, &m, &created, err, sizeof err), 0);
  assert_sb_equal(meta_get(m), &old);

  /* The next write goes over the torn slot, not the good one. */
  assert_int_equal(meta_write(m, &new), 0);
  meta_close(m);
  assert_int_equal(newest_slot(fx->path, &seq), slot);
  assert_int_equal(meta_open(fx->path, &m, &created, err, sizeof err), 0);
  assert_sb_equal(meta_get(m), &new);
  meta_close(m);
}

static void
test_both_corrupt_is_an_error(void **state)
{
  struct fixture *fx = *state;
  struct meta *m;
  char err[256];
  bool created;

  assert_int_equal(meta_open(fx->path, &m, &created, err, sizeof err), 0);
  meta_close(m);
  corrupt_byte(fx->path, 100);
  corrupt_byte(fx->path, META_SLOT_SIZE + 100);
  assert_int_equal(meta_open(fx->path, &m, &created, err, sizeof err), -1);
  assert_non_null(strstr(err, "both superblock copies are corrupt"));
  assert_non_null(strstr(err, fx->path));

  /* Never reinitialised behind the operator's back. */
  assert_int_equal(meta_open(fx->path, &m, &created, err, sizeof err), -1);

  /* A truncated (empty) file is corrupt too, not new. */
  assert_int_equal(truncate(fx->path, 0), 0);
  assert_int_equal(meta_open(fx->path, &m, &created, err, sizeof err), -1);
}

static void
test_second_opener_refused(void **state)
{
  struct fixture *fx = *state;
  struct meta *m, *m2;
  char err[256];
  bool created;

  assert_int_equal(meta_open(fx->path, &m, &created, err, sizeof err), 0);
  assert_int_equal(meta_open(fx->path, &m2, &created, err, sizeof err), -1);
  assert_non_null(strstr(err, "in use"));
  meta_close(m);
}

/* meta_write never changes the bitmap area's size: a stale copy of the
 * superblock cannot make it lie about the area. */
static void
test_write_keeps_bitmap_bits(void **state)
{
  struct fixture *fx = *state;
  struct meta_sb sb = sample_sb(META_ROLE_PRIMARY);
  struct meta *m = open_ok(fx->path, true);

  assert_int_equal(meta_bitmap_resize(m, 1000), 0);
  sb.bitmap_bits = 5;
  assert_int_equal(meta_write(m, &sb), 0);
  assert_true(meta_get(m)->bitmap_bits == 1000);
  sb.bitmap_bits = 1000;
  assert_sb_equal(meta_get(m), &sb);
  meta_close(m);
  m = open_ok(fx->path, false);
  assert_sb_equal(meta_get(m), &sb);
  meta_close(m);
}

static void
test_truncated_slot_falls_back(void **state)
{
  struct fixture *fx = *state;
  struct meta_sb sb = sample_sb(META_ROLE_PRIMARY), zero = { 0 };
  struct meta *m = open_ok(fx->path, true);
  uint64_t seq;

  /* Creation wrote slot A (seq 1); this lands in slot B (seq 2). */
  assert_int_equal(meta_write(m, &sb), 0);
  meta_close(m);
  assert_int_equal(newest_slot(fx->path, &seq), 1);
  assert_int_equal(seq, 2);

  /* The file ends in the middle of slot B's fields (a cut in its zero
   * tail would lose nothing): slot A comes back. */
  assert_int_equal(truncate(fx->path, META_SLOT_SIZE + 60), 0);
  m = open_ok(fx->path, false);
  assert_sb_equal(meta_get(m), &zero);

  /* And it is usable: writes refill the header. */
  assert_int_equal(meta_write(m, &sb), 0);
  assert_int_equal(meta_bitmap_resize(m, 100), 0);
  meta_close(m);
  m = open_ok(fx->path, false);
  sb.bitmap_bits = 100;
  assert_sb_equal(meta_get(m), &sb);
  meta_close(m);
}

/* A superblock slot in format version 1 (no generations or bitmap). */
static void
write_v1_slot(const char *path, off_t off, uint32_t version, uint64_t seq)
{
  uint8_t slot[META_SLOT_SIZE] = { 0 };
  uint32_t crc;
  int fd;

  for (int i = 0; i < 8; i++)
    slot[i] = (uint8_t)(META_MAGIC >> (8 * i));
  slot[8] = (uint8_t)version;
  for (int i = 0; i < 8; i++)
    slot[16 + i] = (uint8_t)(seq >> (8 * i));
  slot[48 + 1] = 0x10; /* block_size 4096 */
  slot[52] = META_ROLE_SECONDARY;
  crc = crc32c(0, slot, sizeof slot);
  for (int i = 0; i < 4; i++)
    slot[12 + i] = (uint8_t)(crc >> (8 * i));
  fd = open(path, O_RDWR | O_CREAT, 0600);
  assert_true(fd >= 0);
  assert_int_equal(pwrite(fd, slot, sizeof slot, off), sizeof slot);
  close(fd);
}

static void
test_other_versions_refused(void **state)
{
  struct fixture *fx = *state;
  struct meta_sb sb;
  uint8_t slot[META_SLOT_SIZE];
  uint64_t seq;
  int fd;

  /* A v1 file as the previous duplex wrote it: two valid v1 slots. */
  write_v1_slot(fx->path, 0, 1, 1);
  write_v1_slot(fx->path, META_SLOT_SIZE, 1, 2);
  fd = open(fx->path, O_RDONLY);
  assert_int_equal(pread(fd, slot, sizeof slot, 0), sizeof slot);
  close(fd);
  assert_int_equal(meta_sb_decode(slot, sizeof slot, &sb, &seq), -1);
  open_fails(fx->path, "unsupported version 1; recreate it (a full resync "
             "follows)");
  /* Refused, not rewritten. */
  assert_int_equal(file_size(fx->path), 2 * META_SLOT_SIZE);
  open_fails(fx->path, "unsupported version 1");

  /* An unknown (future) version, with the other slot torn. */
  unlink(fx->path);
  write_v1_slot(fx->path, 0, 7, 1);
  open_fails(fx->path, "unsupported version 7");
}

static void
sample_al(struct meta_al *al, uint32_t n, uint64_t base)
{
  al->extent_shift = 22;
  al->n = n;
  for (uint32_t i = 0; i < n; i++)
    al->extents[i] = base + i * 3;
}

static void
assert_al_equal(const struct meta_al *a, const struct meta_al *b)
{
  assert_int_equal(a->extent_shift, b->extent_shift);
  assert_int_equal(a->n, b->n);
  for (uint32_t i = 0; i < a->n; i++)
    assert_true(a->extents[i] == b->extents[i]);
}

static void
test_al_codec(void **state)
{
  static struct meta_al al, out;
  uint8_t slot[META_SLOT_SIZE];
  uint64_t seq;

  (void)state;
  for (uint32_t n = 0; n <= META_AL_MAX; n += n < 3 ? 1 : 97) {
    sample_al(&al, n, 1ull << 40);
    meta_al_encode(&al, 1000 + n, slot);
    assert_int_equal(meta_al_decode(slot, sizeof slot, &out, &seq), 0);
    assert_int_equal(seq, 1000 + n);
    assert_al_equal(&al, &out);
  }
  sample_al(&al, META_AL_MAX, 7);
  meta_al_encode(&al, 9, slot);
  assert_int_equal(meta_al_decode(slot, sizeof slot, &out, &seq), 0);
  assert_al_equal(&al, &out);
  assert_memory_equal(slot, "DPXAL001", 8);

  assert_int_equal(meta_al_decode(slot, sizeof slot - 1, &out, &seq), -1);
  for (size_t i = 0; i < META_SLOT_SIZE; i += 41) {
    slot[i] ^= 0x04;
    assert_int_equal(meta_al_decode(slot, sizeof slot, &out, &seq), -1);
    slot[i] ^= 0x04;
  }
  /* A superblock is not an activity log, nor zeros. */
  {
    struct meta_sb sb = sample_sb(META_ROLE_PRIMARY);
    meta_sb_encode(&sb, 9, slot);
    assert_int_equal(meta_al_decode(slot, sizeof slot, &out, &seq), -1);
  }
  memset(slot, 0, sizeof slot);
  assert_int_equal(meta_al_decode(slot, sizeof slot, &out, &seq), -1);
}

/* n past META_AL_MAX with a valid checksum is still refused. */
static void
test_al_codec_rejects_bad_n(void **state)
{
  static struct meta_al al, out;
  uint8_t slot[META_SLOT_SIZE];
  uint32_t crc, n = META_AL_MAX + 1;
  uint64_t seq;

  (void)state;
  sample_al(&al, 3, 0);
  meta_al_encode(&al, 1, slot);
  for (int i = 0; i < 4; i++) {
    slot[12 + i] = (uint8_t)(n >> (8 * i));
    slot[8 + i] = 0;
  }
  crc = crc32c(0, slot, sizeof slot);
  for (int i = 0; i < 4; i++)
    slot[8 + i] = (uint8_t)(crc >> (8 * i));
  assert_int_equal(meta_al_decode(slot, sizeof slot, &out, &seq), -1);
}

static void
test_al_file(void **state)
{
  struct fixture *fx = *state;
  static struct meta_al a, b, c, out;
  struct meta *m = open_ok(fx->path, true);

  /* Never written: empty. */
  out.n = 77;
  assert_int_equal(meta_al_read(m, &out), 0);
  assert_int_equal(out.n, 0);

  sample_al(&a, 5, 100);
  sample_al(&b, META_AL_MAX, 200);
  sample_al(&c, 1, 300);
  assert_int_equal(meta_al_write(m, &a), 0); /* slot A */
  assert_int_equal(meta_al_read(m, &out), 0);
  assert_al_equal(&a, &out);
  assert_int_equal(meta_al_write(m, &b), 0); /* slot B */
  meta_close(m);
  m = open_ok(fx->path, false);
  assert_int_equal(meta_al_read(m, &out), 0);
  assert_al_equal(&b, &out);
  /* Writing does not disturb the superblock. */
  assert_int_equal(meta_get(m)->role, META_ROLE_NONE);
  meta_close(m);

  /* Corrupt the newest (slot B): the older comes back, and the next write
   * goes over the corrupt slot. */
  corrupt_byte(fx->path, META_AL_OFF + META_SLOT_SIZE + 1000);
  m = open_ok(fx->path, false);
  assert_int_equal(meta_al_read(m, &out), 0);
  assert_al_equal(&a, &out);
  assert_int_equal(meta_al_write(m, &c), 0);
  meta_close(m);
  m = open_ok(fx->path, false);
  assert_int_equal(meta_al_read(m, &out), 0);
  assert_al_equal(&c, &out);
  meta_close(m);

  /* Then slot A too (now the older): c stays; both: empty. */
  corrupt_byte(fx->path, META_AL_OFF + 20);
  m = open_ok(fx->path, false);
  assert_int_equal(meta_al_read(m, &out), 0);
  assert_al_equal(&c, &out);
  corrupt_byte(fx->path, META_AL_OFF + META_SLOT_SIZE + 20);
  assert_int_equal(meta_al_read(m, &out), 0);
  assert_int_equal(out.n, 0);
  /* Writable again after both were lost. */
  assert_int_equal(meta_al_write(m, &a), 0);
  assert_int_equal(meta_al_write(m, &b), 0);
  assert_int_equal(meta_al_read(m, &out), 0);
  assert_al_equal(&b, &out);

  b.n = META_AL_MAX + 1;
  assert_int_equal(meta_al_write(m, &b), -EINVAL);
  meta_close(m);
}

/* A recognisable byte for position i of the image. */
static uint8_t
pattern(size_t i, unsigned salt)
{
  return (uint8_t)((i * 131u + salt) ^ (i >> 9));
}

/* Last bit index of the image that lies in the volume, as a mask. */
static void
mask_tail(uint8_t *img, size_t len, uint64_t bits)
{
  size_t used = (size_t)((bits + 7) / 8);

  memset(img + used, 0, len - used);
  if (bits % 8)
    img[used - 1] &= (uint8_t)((1u << (bits % 8)) - 1);
}

static void
test_bitmap_area_roundtrip(void **state)
{
  struct fixture *fx = *state;
  /* 2 full pages and a partial third of 100 bytes, its last byte partial. */
  const uint64_t bits = 2 * META_BITMAP_PAGE * 8 + 99 * 8 + 5;
  struct meta *m = open_ok(fx->path, true);
  uint8_t *img, *back;
  size_t len;

  assert_int_equal(meta_bitmap_resize(m, bits), 0);
  assert_true(meta_get(m)->bitmap_bits == bits);
  len = meta_bitmap_image_len(m);
  assert_int_equal(len, 2 * META_BITMAP_PAGE + 104);
  assert_int_equal(meta_bitmap_pages(m), 3);
  assert_int_equal(file_size(fx->path), META_BITMAP_OFF + 3 * META_BITMAP_PAGE);

  /* A new area reads as zeros. */
  img = malloc(len);
  back = malloc(len + 16);
  memset(back, 0xee, len + 16);
  assert_int_equal(meta_bitmap_read(m, back, len + 16), 0);
  for (size_t i = 0; i < len + 16; i++)
    assert_int_equal(back[i], 0);
  assert_int_equal(meta_bitmap_read(m, back, len - 1), -EINVAL);

  for (size_t i = 0; i < len; i++)
    img[i] = pattern(i, 1);
  assert_int_equal(meta_bitmap_write(m, img, 0, 3), 0);
  assert_int_equal(meta_sync(m), 0);
  /* Only the bytes that exist: the file does not grow. */
  assert_int_equal(file_size(fx->path), META_BITMAP_OFF + 3 * META_BITMAP_PAGE);
  meta_close(m);

  m = open_ok(fx->path, false);
  assert_true(meta_get(m)->bitmap_bits == bits);
  assert_int_equal(meta_bitmap_read(m, back, len), 0);
  mask_tail(img, len, bits);
  assert_memory_equal(back, img, len);

  /* Single pages, the partial last one alone. */
  for (size_t i = 0; i < len; i++)
    img[i] = pattern(i, 2);
  assert_int_equal(meta_bitmap_write(m, img, 1, 1), 0);
  assert_int_equal(meta_bitmap_write(m, img, 2, 1), 0);
  assert_int_equal(meta_bitmap_write(m, img, 0, 0), 0);
  assert_int_equal(meta_bitmap_read(m, back, len), 0);
  for (size_t i = 0; i < META_BITMAP_PAGE; i++)
    assert_int_equal(back[i], pattern(i, 1));
  mask_tail(img, len, bits);
  assert_memory_equal(back + META_BITMAP_PAGE, img + META_BITMAP_PAGE,
                      len - META_BITMAP_PAGE);

  /* Past the area. */
  assert_int_equal(meta_bitmap_write(m, img, 3, 1), -EINVAL);
  assert_int_equal(meta_bitmap_write(m, img, 2, 2), -EINVAL);
  assert_int_equal(meta_bitmap_write(m, img, UINT64_MAX, 2), -EINVAL);
  /* The superblock and activity log are untouched by all that. */
  assert_int_equal(meta_get(m)->role, META_ROLE_NONE);
  meta_close(m);
  free(img);
  free(back);
}

static void
test_bitmap_area_resize(void **state)
{
  struct fixture *fx = *state;
  const uint64_t big = 5 * META_BITMAP_PAGE * 8, small = 10;
  struct meta *m = open_ok(fx->path, true);
  uint8_t *img, *back;
  size_t len;

  assert_int_equal(meta_bitmap_resize(m, big), 0);
  len = meta_bitmap_image_len(m);
  img = malloc(len);
  back = malloc(len);
  memset(img, 0xff, len);
  assert_int_equal(meta_bitmap_write(m, img, 0, meta_bitmap_pages(m)), 0);

  /* Shrink to 10 bits: the file shrinks to one page, bits 10.. are gone. */
  assert_int_equal(meta_bitmap_resize(m, small), 0);
  assert_true(meta_get(m)->bitmap_bits == small);
  assert_int_equal(meta_bitmap_image_len(m), 8);
  assert_int_equal(file_size(fx->path), META_BITMAP_OFF + META_BITMAP_PAGE);
  assert_int_equal(meta_bitmap_read(m, back, 8), 0);
  assert_int_equal(back[0], 0xff);
  assert_int_equal(back[1], 0x03);
  for (int i = 2; i < 8; i++)
    assert_int_equal(back[i], 0);

  /* Grow again: everything past bit 10 reads zero, although the old ones
   * were set on disk. */
  assert_int_equal(meta_bitmap_resize(m, big), 0);
  assert_int_equal(meta_bitmap_read(m, back, len), 0);
  assert_int_equal(back[0], 0xff);
  assert_int_equal(back[1], 0x03);
  for (size_t i = 2; i < len; i++)
    assert_int_equal(back[i], 0);
  meta_close(m);

  /* Reopen keeps the size; a file cut short of it is refused. */
  m = open_ok(fx->path, false);
  assert_true(meta_get(m)->bitmap_bits == big);
  assert_int_equal(meta_bitmap_resize(m, big), 0); /* no change */
  meta_close(m);
  assert_int_equal(truncate(fx->path, META_BITMAP_OFF + big / 8 - 1), 0);
  open_fails(fx->path, "bitmap area is truncated");

  /* Down to nothing. */
  assert_int_equal(truncate(fx->path, META_BITMAP_OFF + big / 8), 0);
  m = open_ok(fx->path, false);
  assert_int_equal(meta_bitmap_resize(m, 0), 0);
  assert_int_equal(meta_bitmap_image_len(m), 0);
  assert_int_equal(meta_bitmap_pages(m), 0);
  assert_int_equal(meta_bitmap_read(m, back, 0), 0);
  assert_int_equal(file_size(fx->path), META_BITMAP_OFF);
  meta_close(m);
  free(img);
  free(back);
}

/* The in-memory bitmap's word image is the area's format: flush its dirty
 * pages, reload into a fresh bitmap, same bits. */
static void
test_bitmap_persist_and_reload(void **state)
{
  struct fixture *fx = *state;
  const uint32_t grain = 4096;
  const uint64_t size = (3 * 32768ull + 40) * grain - 100; /* 4 pages */
  struct bitmap *bm = bitmap_new(size, grain), *bm2;
  struct meta *m = open_ok(fx->path, true);
  uint64_t first, n, off, len, off2, len2, pos = 0;

  assert_int_equal(meta_bitmap_resize(m, bitmap_bits(bm)), 0);
  assert_int_equal(meta_bitmap_image_len(m), bitmap_word_count(bm) * 8);
  assert_int_equal(meta_bitmap_pages(m), bitmap_page_count(bm));

  bitmap_set_range(bm, 0, 3 * grain);
  bitmap_set_range(bm, 70000ull * grain, 10 * grain);
  bitmap_set_range(bm, size - 1, 1); /* the short last bit */
  while (bitmap_take_dirty_pages(bm, &first, &n))
    assert_int_equal(meta_bitmap_write(m, bitmap_words(bm), first, n), 0);
  assert_int_equal(meta_sync(m), 0);
  /* A lazily cleared bit: still set on disk until its page is flushed. */
  bitmap_clear_range(bm, 0, grain);
  meta_close(m);

  m = open_ok(fx->path, false);
  bm2 = bitmap_new(size, grain);
  assert_int_equal(meta_bitmap_read(m, bitmap_words(bm2),
                                    bitmap_word_count(bm2) * 8), 0);
  bitmap_recount(bm2);
  assert_int_equal(bitmap_dirty_bytes(bm2), 13 * grain + grain - 100);
  assert_true(bitmap_test(bm2, 0));
  assert_true(bitmap_test(bm2, 70009ull * grain));
  assert_false(bitmap_test(bm2, 70010ull * grain));

  /* After the flush the reloaded bitmap equals the live one. */
  while (bitmap_take_dirty_pages(bm, &first, &n))
    assert_int_equal(meta_bitmap_write(m, bitmap_words(bm), first, n), 0);
  assert_int_equal(meta_bitmap_read(m, bitmap_words(bm2),
                                    bitmap_word_count(bm2) * 8), 0);
  bitmap_recount(bm2);
  assert_int_equal(bitmap_dirty_bytes(bm2), bitmap_dirty_bytes(bm));
  while (bitmap_next_run(bm, pos, UINT64_MAX / 2, &off, &len)) {
    assert_true(bitmap_next_run(bm2, pos, UINT64_MAX / 2, &off2, &len2));
    assert_true(off == off2 && len == len2);
    pos = off + len;
  }
  assert_false(bitmap_next_run(bm2, pos, UINT64_MAX / 2, &off2, &len2));
  bitmap_free(bm2);
  bitmap_free(bm);
  meta_close(m);
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_codec_roundtrip),
    cmocka_unit_test_setup_teardown(test_create_then_reopen, setup, teardown),
    cmocka_unit_test_setup_teardown(test_write_roundtrip_and_seq_order, setup,
                                    teardown),
    cmocka_unit_test_setup_teardown(test_torn_slot_falls_back, setup,
                                    teardown),
    cmocka_unit_test_setup_teardown(test_both_corrupt_is_an_error, setup,
                                    teardown),
    cmocka_unit_test_setup_teardown(test_second_opener_refused, setup,
                                    teardown),
    cmocka_unit_test_setup_teardown(test_write_keeps_bitmap_bits, setup,
                                    teardown),
    cmocka_unit_test_setup_teardown(test_truncated_slot_falls_back, setup,
                                    teardown),
    cmocka_unit_test_setup_teardown(test_other_versions_refused, setup,
                                    teardown),
    cmocka_unit_test(test_al_codec),
    cmocka_unit_test(test_al_codec_rejects_bad_n),
    cmocka_unit_test_setup_teardown(test_al_file, setup, teardown),
    cmocka_unit_test_setup_teardown(test_bitmap_area_roundtrip, setup,
                                    teardown),
    cmocka_unit_test_setup_teardown(test_bitmap_area_resize, setup,
                                    teardown),
    cmocka_unit_test_setup_teardown(test_bitmap_persist_and_reload, setup,
                                    teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
