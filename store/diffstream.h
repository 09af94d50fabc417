/* Diff streams (docs/STORE.md, "Diff streams"): the blocks that changed
 * between two snapshots as one self-checking byte stream another host can
 * apply.  Encoder and decoder only, no I/O: the encoder hands back the
 * bytes to send, the decoder takes bytes in pieces of any size and hands
 * back records.  The decoder trusts nothing: every extent must be block
 * aligned, inside the volume and after the one before it; a DATA record
 * is held (at most DIFFSTREAM_MAX_DATA bytes) until its checksum matched,
 * so a damaged record is never handed out. */
#ifndef DUPLEX_STORE_DIFFSTREAM_H
#define DUPLEX_STORE_DIFFSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DIFFSTREAM_VERSION 1u
#define DIFFSTREAM_HEADER_LEN 116u
#define DIFFSTREAM_DATA_PRE 13u       /* 'D' | u64 offset | u32 length */
#define DIFFSTREAM_DATA_POST 4u       /* u32 crc32c */
#define DIFFSTREAM_ZERO_LEN 21u       /* 'Z' | u64 offset | u64 length | crc */
#define DIFFSTREAM_END_LEN 49u        /* 'E' | u64 | u64 | sha256 */
#define DIFFSTREAM_MAX_DATA (1u << 20) /* bytes of one DATA record */
#define DIFFSTREAM_MAX_VOLUME (1ull << 60)

enum diffstream_kind {
  DIFFSTREAM_DATA = 'D',
  DIFFSTREAM_ZERO = 'Z',
  DIFFSTREAM_END = 'E',
};

/* What the stream turns a volume into: from snapshot from_id (0: any
 * contents, the stream then describes every block) to snapshot to_id. */
struct diffstream_header {
  uint32_t version;
  uint32_t block_size;
  uint64_t volume_size;         /* of the to snapshot */
  uint64_t from_size;           /* of the from snapshot; 0 when from_id 0 */
  uint64_t from_id, to_id;
  uint64_t from_created_ns, to_created_ns;
  uint8_t store_uuid[16];       /* the store the ids belong to */
  uint8_t from_volume_uuid[16], to_volume_uuid[16];
};

/* 0, or -1 with a message when a field is out of range. */
int diffstream_header_check(const struct diffstream_header *h, char *err,
                            size_t errlen);
void diffstream_header_encode(const struct diffstream_header *h,
                              uint8_t out[DIFFSTREAM_HEADER_LEN]);
int diffstream_header_parse(const uint8_t *buf, size_t len,
                            struct diffstream_header *h, char *err,
                            size_t errlen);

/* ---- encoder ---- */
/* Records go out in volume order, not overlapping; the encoder checks
 * that (and every extent) as the decoder will, and keeps the whole
 * stream's SHA-256 for the END record.  Each function fills the bytes to
 * send next, or returns -1 with a message and sends nothing. */
struct diffstream_enc;
int diffstream_enc_new(const struct diffstream_header *h,
                       uint8_t out[DIFFSTREAM_HEADER_LEN],
                       struct diffstream_enc **e, char *err, size_t errlen);
void diffstream_enc_free(struct diffstream_enc *e);
/* Send pre, then the len bytes of data, then post. */
int diffstream_enc_data(struct diffstream_enc *e, uint64_t offset,
                        const void *data, uint32_t len,
                        uint8_t pre[DIFFSTREAM_DATA_PRE],
                        uint8_t post[DIFFSTREAM_DATA_POST], char *err,
                        size_t errlen);
int diffstream_enc_zero(struct diffstream_enc *e, uint64_t offset,
                        uint64_t len, uint8_t out[DIFFSTREAM_ZERO_LEN],
                        char *err, size_t errlen);
int diffstream_enc_end(struct diffstream_enc *e,
                       uint8_t out[DIFFSTREAM_END_LEN], char *err,
                       size_t errlen);

/* ---- decoder ---- */
struct diffstream_rec {
  enum diffstream_kind kind;    /* DIFFSTREAM_DATA or DIFFSTREAM_ZERO */
  uint64_t offset, length;      /* bytes in the volume */
  const uint8_t *data;          /* DATA: length bytes, valid until the
                                 * next call on the decoder */
};

enum diffstream_event {
  DIFFSTREAM_ERROR = -1,        /* err says what and where; final */
  DIFFSTREAM_NEED = 0,          /* all the input was taken: feed more */
  DIFFSTREAM_HEADER,            /* diffstream_dec_header() is valid now */
  DIFFSTREAM_RECORD,            /* *rec is the next record */
  DIFFSTREAM_DONE,              /* END checked: the stream is complete */
};

struct diffstream_dec;
struct diffstream_dec *diffstream_dec_new(void);
void diffstream_dec_free(struct diffstream_dec *d);
/* Take bytes from buf[0, len) until an event: *used says how many were
 * taken (call again with the rest).  Bytes after the END record are an
 * error. */
enum diffstream_event diffstream_dec_feed(struct diffstream_dec *d,
                                          const void *buf, size_t len,
                                          size_t *used,
                                          struct diffstream_rec *rec,
                                          char *err, size_t errlen);
/* The input ended: 0 when the stream was complete, else -1 with a
 * message saying where it was cut. */
int diffstream_dec_finish(struct diffstream_dec *d, char *err,
                          size_t errlen);
/* NULL until DIFFSTREAM_HEADER was returned. */
const struct diffstream_header *
diffstream_dec_header(const struct diffstream_dec *d);
/* Stream bytes taken so far. */
uint64_t diffstream_dec_bytes(const struct diffstream_dec *d);

#endif
