/* libFuzzer target for the metadata slot decoders: any 4 KiB read from a
 * metadata file must decode or be refused, never crash.  Most inputs get a
 * correct checksum patched in, so the fields behind it are reached too; a
 * slot that decodes re-encodes to one that decodes to the same values. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "crc32c.h"
#include "meta.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
fuzz_patch_crc(uint8_t *slot, size_t crc_off)
{
  uint32_t c;

  memset(slot + crc_off, 0, 4);
  c = crc32c(0, slot, META_SLOT_SIZE);
  for (int i = 0; i < 4; i++)
    slot[crc_off + (size_t)i] = (uint8_t)(c >> (8 * i));
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static struct meta_al al, al2;
  uint8_t slot[META_SLOT_SIZE], again[META_SLOT_SIZE];
  struct meta_sb sb, sb2;
  uint64_t seq, seq2;
  uint8_t mode;

  if (size < 1)
    return 0;
  mode = data[0];
  memset(slot, 0, sizeof slot);
  memcpy(slot, data + 1, size - 1 < sizeof slot ? size - 1 : sizeof slot);

  if (mode & 1)
    fuzz_patch_crc(slot, 12); /* superblock checksum field */
  if (meta_sb_decode(slot, sizeof slot, &sb, &seq) == 0) {
    meta_sb_encode(&sb, seq, again);
    if (meta_sb_decode(again, sizeof again, &sb2, &seq2) != 0 ||
        seq2 != seq || memcmp(&sb.gen, &sb2.gen, sizeof sb.gen) != 0 ||
        sb2.bitmap_bits != sb.bitmap_bits || sb2.role != sb.role)
      __builtin_trap();
  }

  if (mode & 2) {
    memcpy(slot, "DPXAL001", 8);
    fuzz_patch_crc(slot, 8); /* activity-log checksum field */
  }
  if (meta_al_decode(slot, sizeof slot, &al, &seq) == 0) {
    if (al.n > META_AL_MAX)
      __builtin_trap();
    meta_al_encode(&al, seq, again);
    if (meta_al_decode(again, sizeof again, &al2, &seq2) != 0 ||
        seq2 != seq || al2.n != al.n ||
        memcmp(al.extents, al2.extents, al.n * sizeof *al.extents) != 0)
      __builtin_trap();
  }
  return 0;
}
