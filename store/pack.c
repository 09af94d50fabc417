/* Building pack objects: blobs appended to one buffer, a trailer naming
 * each (docs/STORE.md "pack"), written to the backend under the hash of
 * the whole object. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crc32c.h"
#include "store-internal.h"

struct pack_builder {
  uint8_t *buf;                 /* header + blobs */
  size_t len, cap;
  struct pack_entry *e;
  uint32_t n, cap_e;
};

struct pack_builder *
pack_builder_new(void)
{
  struct pack_builder *pb = calloc(1, sizeof *pb);

  if (!pb)
    abort();
  pb->cap = STORE_PACK_TARGET + STORE_BLOCK + 1024;
  pb->buf = malloc(pb->cap);
  if (!pb->buf)
    abort();
  format_pack_header(pb->buf);
  pb->len = FORMAT_PACK_HDR_LEN;
  return pb;
}

void
pack_builder_free(struct pack_builder *pb)
{
  if (!pb)
    return;
  free(pb->buf);
  free(pb->e);
  free(pb);
}

uint32_t
pack_builder_count(const struct pack_builder *pb)
{
  return pb->n;
}

int
pack_builder_add(struct pack_builder *pb, const struct store_hash *h,
                 const void *data, size_t len, uint32_t flags)
{
  if (pb->n > 0 && pb->len + len + format_pack_overhead(pb->n + 1) >
                       STORE_PACK_TARGET)
    return 1;
  if (pb->len + len > pb->cap) {
    pb->cap = pb->len + len;
    pb->buf = realloc(pb->buf, pb->cap);
    if (!pb->buf)
      abort();
  }
  if (pb->n == pb->cap_e) {
    pb->cap_e = pb->cap_e ? pb->cap_e * 2 : 1024;
    pb->e = realloc(pb->e, pb->cap_e * sizeof *pb->e);
    if (!pb->e)
      abort();
  }
  pb->e[pb->n].hash = *h;
  pb->e[pb->n].offset = (uint32_t)pb->len;
  pb->e[pb->n].stored_len = (uint32_t)len;
  pb->e[pb->n].flags = flags;
  pb->n++;
  memcpy(pb->buf + pb->len, data, len);
  pb->len += len;
  return 0;
}

int
pack_builder_finish(struct pack_builder *pb, struct backend *b,
                    struct index_obj *ix, uint64_t *bytes, char *err,
                    size_t errlen)
{
  size_t tlen = (size_t)pb->n * FORMAT_PACK_ENTRY_LEN +
                FORMAT_PACK_FOOTER_LEN;
  struct store_hash name;
  uint32_t ord;
  int rc;

  *bytes = 0;
  if (pb->n == 0)
    return 0;
  if (pb->len + tlen > pb->cap) {
    pb->cap = pb->len + tlen;
    pb->buf = realloc(pb->buf, pb->cap);
    if (!pb->buf)
      abort();
  }
  pb->len += format_pack_trailer(pb->e, pb->n, crc32c(0, pb->buf, pb->len),
                                 pb->buf + pb->len);
  format_hash(pb->buf, pb->len, &name);
  rc = b->ops->put(b, KIND_PACK, &name, pb->buf, pb->len, err, errlen);
  if (rc < 0)
    return rc;
  *bytes = pb->len;
  ord = ix->n_packs;
  ix->packs = realloc(ix->packs, (ix->n_packs + 1) * sizeof *ix->packs);
  ix->entries = realloc(ix->entries, (ix->n_entries + pb->n) *
                                         sizeof *ix->entries);
  if (!ix->packs || !ix->entries)
    abort();
  ix->packs[ix->n_packs++] = name;
  for (uint32_t i = 0; i < pb->n; i++) {
    struct index_entry *e = &ix->entries[ix->n_entries++];
    e->hash = pb->e[i].hash;
    e->pack = ord;
    e->offset = pb->e[i].offset;
    e->stored_len = pb->e[i].stored_len;
    e->flags = pb->e[i].flags;
  }
  pb->n = 0;
  pb->len = FORMAT_PACK_HDR_LEN;
  return 0;
}

size_t
pack_compress(ZSTD_CCtx *z, const void *block, void *out, uint32_t *flags)
{
  size_t n = ZSTD_compressCCtx(z, out, STORE_BLOCK, block, STORE_BLOCK, 1);

  if (!ZSTD_isError(n) && n <= STORE_BLOCK - STORE_BLOCK / 8) {
    *flags = PACK_FLAG_ZSTD;
    return n;
  }
  memcpy(out, block, STORE_BLOCK);
  *flags = 0;
  return STORE_BLOCK;
}
