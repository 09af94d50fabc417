/* Replication frames: header codec, protobuf unpacking and the semantic
 * checks every receiver relies on.  No I/O: bytes in, frame or error out,
 * so the decoder is unit-tested and fuzzed directly (tests/fuzz). */
#include <assert.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "frame.h"

#define FRAME_MAX_ACK_SEQS 65536u
#define FRAME_MAX_SNAP_NAME 255u

struct frame_kind {
  const char *name;
  const ProtobufCMessageDescriptor *desc;
};

static const struct frame_kind frame_kinds[] = {
  [FRAME_HELLO] = { "HELLO", &duplex__hello__descriptor },
  [FRAME_HELLO_REPLY] = { "HELLO_REPLY", &duplex__hello_reply__descriptor },
  [FRAME_WRITE] = { "WRITE", &duplex__write__descriptor },
  [FRAME_ZERO] = { "ZERO", &duplex__zero__descriptor },
  [FRAME_FLUSH] = { "FLUSH", &duplex__flush__descriptor },
  [FRAME_ACK] = { "ACK", &duplex__ack__descriptor },
  [FRAME_SYNC_STATE] = { "SYNC_STATE", &duplex__sync_state__descriptor },
  [FRAME_HEARTBEAT] = { "HEARTBEAT", &duplex__heartbeat__descriptor },
  [FRAME_ERROR] = { "ERROR", &duplex__error__descriptor },
  [FRAME_BITMAP] = { "BITMAP", &duplex__bitmap__descriptor },
  [FRAME_VERIFY] = { "VERIFY", &duplex__verify__descriptor },
  [FRAME_VERIFY_RESULT] = { "VERIFY_RESULT",
                            &duplex__verify_result__descriptor },
  [FRAME_SNAPSHOT] = { "SNAPSHOT", &duplex__snapshot__descriptor },
  [FRAME_SNAPSHOT_DONE] = { "SNAPSHOT_DONE",
                            &duplex__snapshot_done__descriptor },
  [FRAME_FETCH] = { "FETCH", &duplex__fetch__descriptor },
  [FRAME_FETCH_DATA] = { "FETCH_DATA", &duplex__fetch_data__descriptor },
  [FRAME_RESTORE_PLAN] = { "RESTORE_PLAN",
                           &duplex__restore_plan__descriptor },
  [FRAME_RESTORE_PLAN_PART] = { "RESTORE_PLAN_PART",
                                &duplex__restore_plan_part__descriptor },
};

static bool
frame_type_valid(uint32_t type)
{
  return type >= FRAME_HELLO && type <= FRAME_RESTORE_PLAN_PART;
}

const char *
frame_type_name(enum frame_type type)
{
  return frame_type_valid(type) ? frame_kinds[type].name : "UNKNOWN";
}

static uint32_t
frame_get32(const uint8_t *p)
{
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
         p[3];
}

static uint16_t
frame_get16(const uint8_t *p)
{
  return (uint16_t)(p[0] << 8 | p[1]);
}

static void
frame_put32(uint8_t *p, uint32_t v)
{
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

static void
frame_put16(uint8_t *p, uint16_t v)
{
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}

int
frame_parse_header(const uint8_t hdr[FRAME_HDR_LEN], struct frame *out,
                   char *err, size_t errlen)
{
  uint32_t magic = frame_get32(hdr);
  uint16_t type = frame_get16(hdr + 4);
  uint16_t reserved = frame_get16(hdr + 6);
  uint32_t msg_len = frame_get32(hdr + 8);
  uint32_t payload_len = frame_get32(hdr + 12);
  const char *name;

  if (magic != FRAME_MAGIC) {
    snprintf(err, errlen, "bad frame magic 0x%08" PRIx32, magic);
    return -1;
  }
  if (!frame_type_valid(type)) {
    snprintf(err, errlen, "unknown frame type %u", type);
    return -1;
  }
  name = frame_kinds[type].name;
  if (reserved != 0) {
    snprintf(err, errlen, "%s frame: reserved header field is 0x%04x, "
             "expected 0", name, reserved);
    return -1;
  }
  if (msg_len > FRAME_MAX_MSG) {
    snprintf(err, errlen, "%s frame: message of %" PRIu32 " bytes exceeds "
             "the limit of %u", name, msg_len, FRAME_MAX_MSG);
    return -1;
  }
  if (payload_len > 0 && type != FRAME_WRITE && type != FRAME_BITMAP &&
      type != FRAME_FETCH_DATA && type != FRAME_RESTORE_PLAN_PART) {
    snprintf(err, errlen, "%s frame: unexpected payload of %" PRIu32
             " bytes (only WRITE, BITMAP, FETCH_DATA and RESTORE_PLAN_PART "
             "frames carry data)", name, payload_len);
    return -1;
  }
  if (payload_len > FRAME_MAX_PAYLOAD) {
    snprintf(err, errlen, "%s frame: payload of %" PRIu32 " bytes exceeds "
             "the limit of %u", name, payload_len, FRAME_MAX_PAYLOAD);
    return -1;
  }
  out->type = type;
  out->msg_len = msg_len;
  out->payload_len = payload_len;
  return 0;
}

static bool
frame_range_overflows(uint64_t off, uint64_t len)
{
  return off > UINT64_MAX - len;
}

/* Checks on the decoded message: everything a receiver indexes, sizes or
 * compares with must be in range here, so the handlers can trust it. */
static int
frame_check(const struct frame *f, char *err, size_t errlen)
{
  switch (f->type) {
  case FRAME_HELLO: {
    const Duplex__Hello *h = f->m.hello;
    if (h->proto_version == 0) {
      snprintf(err, errlen, "HELLO frame: protocol version 0");
      return -1;
    }
    if (h->volume_uuid.len != 16) {
      snprintf(err, errlen, "HELLO frame: volume uuid is %zu bytes, "
               "expected 16", h->volume_uuid.len);
      return -1;
    }
    if (h->mode != DUPLEX__MODE__MODE_UNSPECIFIED &&
        h->mode != DUPLEX__MODE__MODE_SYNC &&
        h->mode != DUPLEX__MODE__MODE_ASYNC) {
      snprintf(err, errlen, "HELLO frame: unknown mode %d", (int)h->mode);
      return -1;
    }
    return 0;
  }
  case FRAME_HELLO_REPLY: {
    const Duplex__HelloReply *r = f->m.hello_reply;
    if (r->replica_volume_uuid.len != 0 && r->replica_volume_uuid.len != 16) {
      snprintf(err, errlen, "HELLO_REPLY frame: replica volume uuid is %zu "
               "bytes, expected 16 or none", r->replica_volume_uuid.len);
      return -1;
    }
    return 0;
  }
  case FRAME_WRITE: {
    const Duplex__Write *w = f->m.write;
    if (w->length != f->payload_len) {
      snprintf(err, errlen, "WRITE frame: length %" PRIu32 " but payload %"
               PRIu32 " bytes", w->length, f->payload_len);
      return -1;
    }
    if (w->length == 0) {
      snprintf(err, errlen, "WRITE frame: length 0");
      return -1;
    }
    if (frame_range_overflows(w->offset, w->length)) {
      snprintf(err, errlen, "WRITE frame: offset %" PRIu64 " + length %"
               PRIu32 " overflows", w->offset, w->length);
      return -1;
    }
    return 0;
  }
  case FRAME_ZERO: {
    const Duplex__Zero *z = f->m.zero;
    if (z->length == 0) {
      snprintf(err, errlen, "ZERO frame: length 0");
      return -1;
    }
    if (frame_range_overflows(z->offset, z->length)) {
      snprintf(err, errlen, "ZERO frame: offset %" PRIu64 " + length %"
               PRIu64 " overflows", z->offset, z->length);
      return -1;
    }
    return 0;
  }
  case FRAME_ACK:
    if (f->m.ack->n_seq > FRAME_MAX_ACK_SEQS) {
      snprintf(err, errlen, "ACK frame: %zu sequence numbers, at most %u "
               "allowed", f->m.ack->n_seq, FRAME_MAX_ACK_SEQS);
      return -1;
    }
    return 0;
  case FRAME_BITMAP: {
    const Duplex__Bitmap *b = f->m.bitmap;
    if (b->length != f->payload_len || b->length == 0) {
      snprintf(err, errlen, "BITMAP frame: length %" PRIu32 " but payload %"
               PRIu32 " bytes", b->length, f->payload_len);
      return -1;
    }
    if (frame_range_overflows(b->offset, b->length)) {
      snprintf(err, errlen, "BITMAP frame: offset %" PRIu64 " + length %"
               PRIu32 " overflows", b->offset, b->length);
      return -1;
    }
    return 0;
  }
  case FRAME_VERIFY: {
    const Duplex__Verify *v = f->m.verify;
    if (v->block_size != 4096 || v->length == 0 ||
        v->length % v->block_size || v->offset % v->block_size ||
        v->length > 32u * 1024 * 1024) {
      snprintf(err, errlen, "VERIFY frame: bad range %" PRIu64 "+%" PRIu32
               " or block size %" PRIu32, v->offset, v->length,
               v->block_size);
      return -1;
    }
    if (frame_range_overflows(v->offset, v->length)) {
      snprintf(err, errlen, "VERIFY frame: offset %" PRIu64 " + length %"
               PRIu32 " overflows", v->offset, v->length);
      return -1;
    }
    return 0;
  }
  case FRAME_VERIFY_RESULT:
    if (f->m.verify_result->n_hashes > 8192) {
      snprintf(err, errlen, "VERIFY_RESULT frame: %zu hashes, at most 8192",
               f->m.verify_result->n_hashes);
      return -1;
    }
    return 0;
  case FRAME_SNAPSHOT:
    if (strlen(f->m.snapshot->name) > FRAME_MAX_SNAP_NAME) {
      snprintf(err, errlen, "SNAPSHOT frame: name of %zu bytes, at most %u",
               strlen(f->m.snapshot->name), FRAME_MAX_SNAP_NAME);
      return -1;
    }
    return 0;
  case FRAME_FETCH: {
    const Duplex__Fetch *v = f->m.fetch;
    if (v->length == 0 || v->length % 4096 || v->offset % 4096 ||
        v->length > 32u * 1024 * 1024 ||
        frame_range_overflows(v->offset, v->length)) {
      snprintf(err, errlen, "FETCH frame: bad range %" PRIu64 "+%" PRIu32,
               v->offset, v->length);
      return -1;
    }
    return 0;
  }
  case FRAME_FETCH_DATA: {
    const Duplex__FetchData *d = f->m.fetch_data;
    if (d->error == 0 ? d->length != f->payload_len || d->length == 0
                      : f->payload_len != 0) {
      snprintf(err, errlen, "FETCH_DATA frame: length %" PRIu32 ", error %"
               PRIu32 ", payload %" PRIu32 " bytes", d->length, d->error,
               f->payload_len);
      return -1;
    }
    return 0;
  }
  case FRAME_RESTORE_PLAN:
    if (f->m.restore_plan->grain == 0 ||
        f->m.restore_plan->grain % 4096) {
      snprintf(err, errlen, "RESTORE_PLAN frame: grain %" PRIu32 " is not "
               "a multiple of 4096", f->m.restore_plan->grain);
      return -1;
    }
    return 0;
  case FRAME_RESTORE_PLAN_PART: {
    const Duplex__RestorePlanPart *p = f->m.restore_plan_part;
    if (p->length != f->payload_len ||
        frame_range_overflows(p->offset, p->length)) {
      snprintf(err, errlen, "RESTORE_PLAN_PART frame: length %" PRIu32
               " but payload %" PRIu32 " bytes", p->length, f->payload_len);
      return -1;
    }
    return 0;
  }
  case FRAME_FLUSH:
  case FRAME_SYNC_STATE:
  case FRAME_HEARTBEAT:
  case FRAME_ERROR:
  case FRAME_SNAPSHOT_DONE:
    return 0;
  }
  snprintf(err, errlen, "unknown frame type %d", (int)f->type);
  return -1;
}

ssize_t
frame_parse(const uint8_t *buf, size_t len, struct frame *out, char *err,
            size_t errlen)
{
  struct frame f = { 0 };
  size_t total;

  if (len < FRAME_HDR_LEN)
    return 0;
  if (frame_parse_header(buf, &f, err, errlen) == -1)
    return -1;
  total = FRAME_HDR_LEN + (size_t)f.msg_len + f.payload_len;
  if (len < total)
    return 0;

  f.m.any = protobuf_c_message_unpack(frame_kinds[f.type].desc, NULL,
                                      f.msg_len, buf + FRAME_HDR_LEN);
  if (!f.m.any) {
    snprintf(err, errlen, "%s frame: malformed message (%" PRIu32 " bytes)",
             frame_kinds[f.type].name, f.msg_len);
    return -1;
  }
  f.payload = f.payload_len ? buf + FRAME_HDR_LEN + f.msg_len : NULL;
  if (frame_check(&f, err, errlen) == -1) {
    frame_release(&f);
    return -1;
  }
  *out = f;
  return (ssize_t)total;
}

void
frame_release(struct frame *f)
{
  if (f->m.any)
    protobuf_c_message_free_unpacked(f->m.any, NULL);
  f->m.any = NULL;
}

size_t
frame_packed_len(const ProtobufCMessage *msg)
{
  return FRAME_HDR_LEN + protobuf_c_message_get_packed_size(msg);
}

size_t
frame_pack(enum frame_type type, const ProtobufCMessage *msg,
           uint32_t payload_len, uint8_t *out)
{
  size_t msg_len;

  assert(frame_type_valid(type) && msg->descriptor == frame_kinds[type].desc);
  msg_len = protobuf_c_message_pack(msg, out + FRAME_HDR_LEN);
  frame_put32(out, FRAME_MAGIC);
  frame_put16(out + 4, (uint16_t)type);
  frame_put16(out + 6, 0);
  frame_put32(out + 8, (uint32_t)msg_len);
  frame_put32(out + 12, payload_len);
  return FRAME_HDR_LEN + msg_len;
}
