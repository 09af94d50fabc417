/* libFuzzer target for the snapshot store's object parsers (store/format.c):
 * any bytes read from a store (damaged or hostile) must parse or be
 * refused, never crash or read past the buffer.
 *
 * The first input byte selects a kind and whether to patch in a valid
 * magic and CRC (so the fields behind them are reached); every parser
 * then gets the object from an exact-size copy.  An object that parses
 * encodes back to the same bytes (the encodings are canonical; the
 * config's reserved word aside), and a manifest's runs go through
 * map_overlay, whose result must be sorted and not overlapping. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "crc32c.h"
#include "format.h"
#include "store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
put_le32(uint8_t *p, uint32_t v)
{
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static uint8_t *
dup_exact(const uint8_t *p, size_t len)
{
  uint8_t *q = malloc(len ? len : 1);

  if (!q)
    abort();
  if (len)
    memcpy(q, p, len);
  return q;
}

static void
check_runs(const struct snap_run *r, uint32_t n, bool zero_ok)
{
  uint64_t end = 0;

  for (uint32_t i = 0; i < n; i++) {
    if (r[i].count == 0 || r[i].start < end ||
        (r[i].kind == RUN_ZERO && !zero_ok) ||
        (r[i].kind == RUN_DATA && !r[i].hashes))
      __builtin_trap();
    end = r[i].start + r[i].count;
  }
}

static void
fuzz_config(const uint8_t *buf, size_t len)
{
  struct store_config c, c2;
  uint8_t again[FORMAT_CONFIG_LEN];
  char err[256];

  if (format_config_parse(buf, len, &c, err, sizeof err) != 0)
    return;
  format_config_encode(&c, again);
  if (format_config_parse(again, sizeof again, &c2, err, sizeof err) != 0 ||
      memcmp(&c, &c2, sizeof c) != 0 || len != sizeof again ||
      memcmp(buf, again, 40) != 0)         /* magic .. created_ns */
    __builtin_trap();
}

static void
fuzz_pack(const uint8_t *buf, size_t len)
{
  struct pack_entry *e = NULL;
  uint32_t n;
  char err[256];

  if (format_pack_parse(buf, len, &e, &n, err, sizeof err) != 0) {
    if (e)
      __builtin_trap();
    return;
  }
  {
    size_t tlen = (size_t)n * FORMAT_PACK_ENTRY_LEN + FORMAT_PACK_FOOTER_LEN;
    size_t tstart = len - tlen;
    uint8_t *again = malloc(tlen);
    if (!again)
      abort();
    if (format_pack_trailer(e, n, crc32c(0, buf, tstart), again) != tlen ||
        memcmp(again, buf + tstart, tlen) != 0)
      __builtin_trap();
    for (uint32_t i = 0; i < n; i++)
      if ((uint64_t)e[i].offset + e[i].stored_len > tstart)
        __builtin_trap();
    free(again);
  }
  free(e);
}

static void
fuzz_index(const uint8_t *buf, size_t len)
{
  struct index_obj ix;
  uint8_t *again;
  size_t alen;
  char err[256];

  if (format_index_parse(buf, len, &ix, err, sizeof err) != 0)
    return;
  for (uint32_t i = 0; i < ix.n_entries; i++)
    if (ix.entries[i].pack >= ix.n_packs)
      __builtin_trap();
  format_index_encode(&ix, &again, &alen);
  if (alen != len || memcmp(again, buf, len) != 0)
    __builtin_trap();
  free(again);
  format_index_free(&ix);
}

static void
fuzz_manifest(const uint8_t *buf, size_t len)
{
  struct manifest m, m2;
  uint8_t *again;
  size_t alen;
  char err[256];

  /* the parser owns (and frees) its buffer */
  if (format_manifest_parse(dup_exact(buf, len), len, &m, err,
                            sizeof err) != 0)
    return;
  check_runs(m.runs, m.n_runs, true);
  if (format_manifest_encode(&m, &again, &alen) != 0 || alen != len ||
      memcmp(again, buf, len) != 0)
    __builtin_trap();
  if (format_manifest_parse(again, alen, &m2, err, sizeof err) != 0 ||
      m2.id != m.id || m2.parent != m.parent || m2.chain != m.chain ||
      m2.size_bytes != m.size_bytes || m2.n_runs != m.n_runs ||
      strcmp(m2.name, m.name) != 0)
    __builtin_trap();
  for (uint32_t i = 0; i < m.n_runs; i++)
    if (m2.runs[i].start != m.runs[i].start ||
        m2.runs[i].count != m.runs[i].count ||
        m2.runs[i].kind != m.runs[i].kind ||
        (m.runs[i].kind == RUN_DATA &&
         memcmp(m2.runs[i].hashes, m.runs[i].hashes,
                (size_t)m.runs[i].count * STORE_HASH_LEN) != 0))
      __builtin_trap();
  /* the runs as a full map, and as a delta over themselves */
  {
    struct snap_run *out;
    uint32_t nout;
    map_overlay(NULL, 0, m.runs, m.n_runs, false, &out, &nout);
    check_runs(out, nout, false);
    free(out);
    map_overlay(m.runs, m.n_runs, m2.runs, m2.n_runs, true, &out, &nout);
    check_runs(out, nout, true);
    free(out);
  }
  format_manifest_free(&m2);
  format_manifest_free(&m);
}

static void
fuzz_catalog(const uint8_t *buf, size_t len)
{
  struct catalog c;
  uint8_t *again;
  size_t alen;
  char err[256];

  if (format_catalog_parse(buf, len, &c, err, sizeof err) != 0)
    return;
  if (format_catalog_encode(&c, &again, &alen) != 0 || alen != len ||
      memcmp(again, buf, len) != 0)
    __builtin_trap();
  free(again);
  format_catalog_free(&c);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static const char *const magic[5] = { "DXSTORE1", "DXPACK01", "DXINDEX1",
                                        "DXSNAP01", "DXCATLG1" };
  uint8_t *buf;
  size_t len;
  unsigned mode;

  if (size < 1 || size > (1u << 20))
    return 0;
  mode = data[0];
  len = size - 1;
  buf = dup_exact(data + 1, len);
  /* mode bit 7: make the object look valid for kind (mode & 7) % 5 */
  if ((mode & 0x80) && len >= 24) {
    unsigned k = (mode & 7) % 5;
    memcpy(buf, magic[k], 8);
    if (k == 1) {
      memcpy(buf + len - 8, "DXPKEND1", 8);
      put_le32(buf + len - 12, crc32c(0, buf, len - 12));
    } else {
      put_le32(buf + len - 4, crc32c(0, buf, len - 4));
    }
  }
  fuzz_config(buf, len);
  fuzz_pack(buf, len);
  fuzz_index(buf, len);
  fuzz_manifest(buf, len);
  fuzz_catalog(buf, len);
  free(buf);
  return 0;
}
