/* Replication frames: parsing and building, no I/O.
 *
 * A frame is a 16-byte big-endian header
 *     u32 magic 'DPX1' | u16 type | u16 reserved(0) | u32 msg_len | u32 payload_len
 * then msg_len bytes of protobuf (proto/duplex.proto) and payload_len bytes
 * of raw data (WRITE: block data; BITMAP: a piece of a bitmap image).  frame_parse validates everything a
 * receiver relies on before any of it is acted upon. */
#ifndef DUPLEX_FRAME_H
#define DUPLEX_FRAME_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h> /* ssize_t */

#include "duplex.pb-c.h"

#define FRAME_MAGIC 0x44505831u /* "DPX1" */
#define FRAME_HDR_LEN 16u
#define FRAME_MAX_MSG (64u * 1024)
#define FRAME_MAX_PAYLOAD (33u * 1024 * 1024) /* 32 MiB write + alignment */
#define DUPLEX_PROTO_VERSION 1u

enum frame_type {
  FRAME_HELLO = 1,
  FRAME_HELLO_REPLY = 2,
  FRAME_WRITE = 3,
  FRAME_ZERO = 4,
  FRAME_FLUSH = 5,
  FRAME_ACK = 6,
  FRAME_SYNC_STATE = 7,
  FRAME_HEARTBEAT = 8,
  FRAME_ERROR = 9,
  FRAME_BITMAP = 10,
  FRAME_VERIFY = 11,
  FRAME_VERIFY_RESULT = 12,
  FRAME_SNAPSHOT = 13,
  FRAME_SNAPSHOT_DONE = 14,
  FRAME_FETCH = 15,
  FRAME_FETCH_DATA = 16,
  FRAME_RESTORE_PLAN = 17,
  FRAME_RESTORE_PLAN_PART = 18,
};

/* A parsed frame.  Exactly one message pointer is set, matching type.
 * payload points into the caller's input buffer (valid as long as it is). */
struct frame {
  enum frame_type type;
  uint32_t msg_len;
  uint32_t payload_len;
  const uint8_t *payload;
  union {
    Duplex__Hello *hello;
    Duplex__HelloReply *hello_reply;
    Duplex__Write *write;
    Duplex__Zero *zero;
    Duplex__Flush *flush;
    Duplex__Ack *ack;
    Duplex__SyncState *sync_state;
    Duplex__Heartbeat *heartbeat;
    Duplex__Error *error;
    Duplex__Bitmap *bitmap;
    Duplex__Verify *verify;
    Duplex__VerifyResult *verify_result;
    Duplex__Snapshot *snapshot;
    Duplex__SnapshotDone *snapshot_done;
    Duplex__Fetch *fetch;
    Duplex__FetchData *fetch_data;
    Duplex__RestorePlan *restore_plan;
    Duplex__RestorePlanPart *restore_plan_part;
    ProtobufCMessage *any;
  } m;
};

/* Header only: returns 0 and fills type/msg_len/payload_len if the 16 bytes
 * are a valid header (magic, known type, reserved 0, lengths within limits,
 * payload only on WRITE, BITMAP, FETCH_DATA and
 * RESTORE_PLAN_PART); -1 with a message in err otherwise. */
int frame_parse_header(const uint8_t hdr[FRAME_HDR_LEN], struct frame *out,
                       char *err, size_t errlen);

/* Parse one whole frame from buf[0..len).
 *   > 0 : a frame was parsed, return value = bytes it occupies; call
 *         frame_release(out) when done with it.
 *     0 : need more bytes (nothing allocated).
 *    -1 : malformed; err says why (nothing allocated).
 * Semantic checks: Write.length == payload_len, length > 0, offset+length
 * does not overflow; Zero.length > 0 and no overflow; Hello uuid 16 bytes;
 * Ack at most 65536 seqs. */
ssize_t frame_parse(const uint8_t *buf, size_t len, struct frame *out,
                    char *err, size_t errlen);
void frame_release(struct frame *f);

/* Serialize header + message into out (out must hold
 * FRAME_HDR_LEN + protobuf_c_message_get_packed_size(msg) bytes; use
 * frame_packed_len).  The caller appends payload_len payload bytes itself. */
size_t frame_packed_len(const ProtobufCMessage *msg);
size_t frame_pack(enum frame_type type, const ProtobufCMessage *msg,
                  uint32_t payload_len, uint8_t *out);

const char *frame_type_name(enum frame_type type);

#endif
