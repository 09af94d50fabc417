/* The snapshot store's object formats (docs/STORE.md): encoders and
 * parsers, no I/O.  Every parser takes untrusted bytes (a damaged or
 * hostile store) and either fills its result or returns -1 with a message
 * saying what is wrong, never reading past the buffer. */
#ifndef DUPLEX_STORE_FORMAT_H
#define DUPLEX_STORE_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STORE_BLOCK 4096u
#define STORE_HASH_LEN 32u
#define STORE_FORMAT_VERSION 1u
#define STORE_NAME_MAX 255u              /* snapshot name bytes */
#define STORE_MAX_OBJECT (256u << 20)    /* parsers refuse larger objects */

struct store_hash {
  uint8_t b[STORE_HASH_LEN];
};

/* SHA-256 of buf (OpenSSL). */
void format_hash(const void *buf, size_t len, struct store_hash *out);
/* 64 lowercase hex digits and a NUL. */
void format_hash_hex(const struct store_hash *h, char out[65]);
int format_hash_parse_hex(const char *s, struct store_hash *out);
bool format_hash_is_zero(const struct store_hash *h);

/* ---- config ---- */
#define FORMAT_CONFIG_LEN 48u
struct store_config {
  uint32_t format;
  uint32_t block_size;
  uint8_t uuid[16];
  uint64_t created_ns;
};
void format_config_encode(const struct store_config *c,
                          uint8_t out[FORMAT_CONFIG_LEN]);
int format_config_parse(const void *buf, size_t len, struct store_config *c,
                        char *err, size_t errlen);

/* ---- pack ---- */
#define PACK_FLAG_ZSTD 1u
#define FORMAT_PACK_HDR_LEN 8u
#define FORMAT_PACK_ENTRY_LEN 44u
#define FORMAT_PACK_FOOTER_LEN 16u
struct pack_entry {
  struct store_hash hash;
  uint32_t offset;
  uint32_t stored_len;
  uint32_t flags;
};
/* The whole pack: header check, trailer parsed into a malloc'd array
 * (each blob inside the blob area, not overlapping the trailer). */
int format_pack_parse(const void *buf, size_t len, struct pack_entry **out,
                      uint32_t *n, char *err, size_t errlen);
/* Bytes of header + trailer + footer for n entries. */
size_t format_pack_overhead(uint32_t n);
void format_pack_header(uint8_t out[FORMAT_PACK_HDR_LEN]);
/* Trailer and footer for entries[n], after blob_end bytes of header and
 * blobs (the CRC covers them too, so the caller passes the CRC so far:
 * crc32c(0, header and blobs)).  out has room for
 * n * FORMAT_PACK_ENTRY_LEN + FORMAT_PACK_FOOTER_LEN bytes. */
size_t format_pack_trailer(const struct pack_entry *e, uint32_t n,
                           uint32_t crc_so_far, uint8_t *out);

/* ---- index ---- */
#define FORMAT_INDEX_ENTRY_LEN 48u
struct index_entry {
  struct store_hash hash;
  uint32_t pack;                /* ordinal in the index's pack list */
  uint32_t offset;
  uint32_t stored_len;
  uint32_t flags;
};
struct index_obj {
  struct store_hash *packs;
  uint32_t n_packs;
  struct index_entry *entries;  /* sorted by hash */
  uint32_t n_entries;
};
/* Sorts entries by hash; *out malloc'd. */
int format_index_encode(struct index_obj *ix, uint8_t **out, size_t *len);
int format_index_parse(const void *buf, size_t len, struct index_obj *ix,
                       char *err, size_t errlen);
void format_index_free(struct index_obj *ix);

/* ---- manifest ---- */
enum snap_reason {
  SNAP_MANUAL = 1,
  SNAP_SCHEDULE = 2,
  SNAP_BEFORE_RESYNC = 3,
  SNAP_BEFORE_RESTORE = 4,
};
const char *format_reason_name(unsigned reason);
int format_reason_parse(const char *s, unsigned *reason);

enum run_kind { RUN_DATA = 1, RUN_ZERO = 2 };
struct snap_run {
  uint64_t start;               /* block number */
  uint32_t count;
  uint8_t kind;
  const struct store_hash *hashes; /* RUN_DATA: count hashes */
};
struct manifest {
  uint64_t id;
  uint64_t parent;              /* 0: a full map */
  uint32_t chain;               /* deltas since the full map */
  uint64_t created_ns;
  uint64_t epoch;
  uint8_t reason;
  uint8_t flags;
  char name[STORE_NAME_MAX + 1];
  uint64_t size_bytes;
  uint8_t volume_uuid[16];
  uint64_t stored_bytes;
  struct snap_run *runs;        /* sorted by start, not overlapping */
  uint32_t n_runs;
  void *buf;                    /* parsed object: hashes point into it */
};
/* Runs must be sorted and not overlap; data runs carry their hashes. */
int format_manifest_encode(const struct manifest *m, uint8_t **out,
                           size_t *len);
/* Takes ownership of buf (malloc'd) on success and on failure. */
int format_manifest_parse(void *buf, size_t len, struct manifest *m,
                          char *err, size_t errlen);
void format_manifest_free(struct manifest *m);

/* ---- catalog ---- */
struct catalog_snap {
  uint64_t id;
  struct store_hash manifest;
};
struct catalog {
  uint64_t generation;
  uint64_t next_id;
  struct catalog_snap *snaps;   /* sorted by id */
  uint32_t n_snaps;
  struct store_hash *index;
  uint32_t n_index;
};
int format_catalog_encode(const struct catalog *c, uint8_t **out,
                          size_t *len);
int format_catalog_parse(const void *buf, size_t len, struct catalog *c,
                         char *err, size_t errlen);
void format_catalog_free(struct catalog *c);

#endif
