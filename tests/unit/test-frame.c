/* Frame decoder: every message round-trips, and every malformed header,
 * message or payload is refused with a message saying why. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "frame.h"

static const uint8_t uuid16[16] = { 1, 2, 3, 4, 5, 6, 7, 8,
                                    9, 10, 11, 12, 13, 14, 15, 16 };

/* Pack msg as a frame of type plus payload_len bytes of payload (0xab). */
static uint8_t *
pack(enum frame_type type, const ProtobufCMessage *msg, uint32_t payload_len,
     size_t *len)
{
  uint8_t *buf = malloc(frame_packed_len(msg) + payload_len);
  size_t n = frame_pack(type, msg, payload_len, buf);

  assert_int_equal(n, frame_packed_len(msg));
  memset(buf + n, 0xab, payload_len);
  *len = n + payload_len;
  return buf;
}

static void
put32(uint8_t *p, uint32_t v)
{
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

/* Parse must fail and err must contain want. */
static void
expect_error(const uint8_t *buf, size_t len, const char *want)
{
  struct frame f;
  char err[256] = "";

  assert_int_equal(frame_parse(buf, len, &f, err, sizeof err), -1);
  if (!strstr(err, want))
    fail_msg("error \"%s\" does not contain \"%s\"", err, want);
}

static void
test_hello_roundtrip(void **state)
{
  Duplex__Hello h = DUPLEX__HELLO__INIT;
  struct frame f;
  char err[256];
  uint8_t *buf;
  size_t len;

  (void)state;
  h.proto_version = DUPLEX_PROTO_VERSION;
  h.volume_uuid.data = (uint8_t *)uuid16;
  h.volume_uuid.len = 16;
  h.size_bytes = 1ull << 40;
  h.block_size = 4096;
  h.mode = DUPLEX__MODE__MODE_ASYNC;
  h.node_name = "alpha";
  buf = pack(FRAME_HELLO, &h.base, 0, &len);
  assert_int_equal(frame_parse(buf, len, &f, err, sizeof err), (ssize_t)len);
  assert_int_equal(f.type, FRAME_HELLO);
  assert_int_equal(f.payload_len, 0);
  assert_null(f.payload);
  assert_int_equal(f.m.hello->proto_version, DUPLEX_PROTO_VERSION);
  assert_memory_equal(f.m.hello->volume_uuid.data, uuid16, 16);
  assert_true(f.m.hello->size_bytes == 1ull << 40);
  assert_int_equal(f.m.hello->block_size, 4096);
  assert_int_equal(f.m.hello->mode, DUPLEX__MODE__MODE_ASYNC);
  assert_string_equal(f.m.hello->node_name, "alpha");
  frame_release(&f);
  assert_null(f.m.any);
  free(buf);
}

static void
test_write_roundtrip_with_payload(void **state)
{
  Duplex__Write w = DUPLEX__WRITE__INIT;
  struct frame f;
  char err[256];
  uint8_t *buf;
  size_t len;

  (void)state;
  w.seq = 7;
  w.epoch = 3;
  w.offset = 1 << 20;
  w.length = 8192;
  w.flags = DUPLEX__OP_FLAG__OP_FLAG_FUA;
  buf = pack(FRAME_WRITE, &w.base, 8192, &len);
  assert_int_equal(frame_parse(buf, len, &f, err, sizeof err), (ssize_t)len);
  assert_int_equal(f.type, FRAME_WRITE);
  assert_int_equal(f.payload_len, 8192);
  assert_ptr_equal(f.payload, buf + len - 8192);
  assert_int_equal(f.m.write->seq, 7);
  assert_int_equal(f.m.write->epoch, 3);
  assert_int_equal(f.m.write->offset, 1 << 20);
  assert_int_equal(f.m.write->flags, DUPLEX__OP_FLAG__OP_FLAG_FUA);
  frame_release(&f);
  free(buf);
}

static void
test_every_type_roundtrips(void **state)
{
  Duplex__HelloReply hr = DUPLEX__HELLO_REPLY__INIT;
  Duplex__Zero z = DUPLEX__ZERO__INIT;
  Duplex__Flush fl = DUPLEX__FLUSH__INIT;
  Duplex__Ack ack = DUPLEX__ACK__INIT;
  Duplex__SyncState ss = DUPLEX__SYNC_STATE__INIT;
  Duplex__Heartbeat hb = DUPLEX__HEARTBEAT__INIT;
  Duplex__Error e = DUPLEX__ERROR__INIT;
  Duplex__Snapshot sn = DUPLEX__SNAPSHOT__INIT;
  Duplex__SnapshotDone sd = DUPLEX__SNAPSHOT_DONE__INIT;
  Duplex__Fetch fe = DUPLEX__FETCH__INIT;
  Duplex__RestorePlan rp = DUPLEX__RESTORE_PLAN__INIT;
  uint64_t seqs[1000];
  struct {
    enum frame_type type;
    ProtobufCMessage *msg;
  } cases[] = {
    { FRAME_HELLO_REPLY, &hr.base }, { FRAME_ZERO, &z.base },
    { FRAME_FLUSH, &fl.base },       { FRAME_ACK, &ack.base },
    { FRAME_SYNC_STATE, &ss.base },  { FRAME_HEARTBEAT, &hb.base },
    { FRAME_ERROR, &e.base },        { FRAME_SNAPSHOT, &sn.base },
    { FRAME_SNAPSHOT_DONE, &sd.base }, { FRAME_FETCH, &fe.base },
    { FRAME_RESTORE_PLAN, &rp.base },
  };

  (void)state;
  for (size_t i = 0; i < 1000; i++)
    seqs[i] = i * 1000003;
  hr.proto_version = 1;
  hr.replica_volume_uuid.data = (uint8_t *)uuid16;
  hr.replica_volume_uuid.len = 16;
  z.offset = 4096;
  z.length = 1ull << 35;
  z.flags = DUPLEX__OP_FLAG__OP_FLAG_PUNCH;
  fl.seq = 99;
  ack.n_seq = 1000;
  ack.seq = seqs;
  ss.in_sync = true;
  hb.nonce = 0; /* an all-default message packs to zero bytes */
  e.code = 28;
  e.message = "No space left on device";
  sn.seq = 7;
  sn.epoch = 12;
  sn.name = "before upgrade";
  sd.seq = 7;
  sd.id = 3;
  fe.seq = 8;
  fe.offset = 1 << 20;
  fe.length = 1 << 20;
  fe.snapshot = 3;
  rp.seq = 9;
  rp.from = 3;
  rp.to = 7;
  rp.grain = 4096;
  rp.size_bytes = 1 << 30;

  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    struct frame f;
    char err[256];
    size_t len;
    uint8_t *buf = pack(cases[i].type, cases[i].msg, 0, &len);

    assert_int_equal(frame_parse(buf, len, &f, err, sizeof err),
                     (ssize_t)len);
    assert_int_equal(f.type, cases[i].type);
    switch (f.type) {
    case FRAME_ZERO:
      assert_true(f.m.zero->length == 1ull << 35);
      break;
    case FRAME_ACK:
      assert_int_equal(f.m.ack->n_seq, 1000);
      assert_int_equal(f.m.ack->seq[999], 999 * 1000003ull);
      break;
    case FRAME_ERROR:
      assert_string_equal(f.m.error->message, "No space left on device");
      break;
    case FRAME_SNAPSHOT:
      assert_int_equal(f.m.snapshot->epoch, 12);
      assert_string_equal(f.m.snapshot->name, "before upgrade");
      break;
    case FRAME_SNAPSHOT_DONE:
      assert_int_equal(f.m.snapshot_done->id, 3);
      break;
    case FRAME_FETCH:
      assert_int_equal(f.m.fetch->snapshot, 3);
      assert_int_equal(f.m.fetch->length, 1 << 20);
      break;
    case FRAME_RESTORE_PLAN:
      assert_int_equal(f.m.restore_plan->to, 7);
      break;
    default:
      break;
    }
    frame_release(&f);
    free(buf);
  }
  assert_string_equal(frame_type_name(FRAME_SYNC_STATE), "SYNC_STATE");
  assert_string_equal(frame_type_name((enum frame_type)42), "UNKNOWN");
}

/* The restore frames: FETCH ranges, FETCH_DATA and RESTORE_PLAN_PART
 * payloads, RESTORE_PLAN grains. */
static void
test_restore_frames(void **state)
{
  Duplex__Fetch fe = DUPLEX__FETCH__INIT;
  Duplex__FetchData fd = DUPLEX__FETCH_DATA__INIT;
  Duplex__RestorePlan rp = DUPLEX__RESTORE_PLAN__INIT;
  Duplex__RestorePlanPart pp = DUPLEX__RESTORE_PLAN_PART__INIT;
  struct frame f;
  char err[256];
  uint8_t *buf;
  size_t len;

  (void)state;
  fe.offset = 4096;
  fe.length = 0;
  buf = pack(FRAME_FETCH, &fe.base, 0, &len);
  expect_error(buf, len, "FETCH frame: bad range");
  free(buf);
  fe.length = 33u << 20;
  buf = pack(FRAME_FETCH, &fe.base, 0, &len);
  expect_error(buf, len, "FETCH frame: bad range");
  free(buf);
  fe.length = 512;
  buf = pack(FRAME_FETCH, &fe.base, 0, &len);
  expect_error(buf, len, "FETCH frame: bad range");
  free(buf);
  fe.offset = UINT64_MAX - 4095;
  fe.length = 8192;
  buf = pack(FRAME_FETCH, &fe.base, 0, &len);
  expect_error(buf, len, "FETCH frame: bad range");
  free(buf);

  fd.seq = 4;
  fd.length = 8192;
  buf = pack(FRAME_FETCH_DATA, &fd.base, 8192, &len);
  assert_int_equal(frame_parse(buf, len, &f, err, sizeof err), (ssize_t)len);
  assert_int_equal(f.payload_len, 8192);
  assert_ptr_equal(f.payload, buf + len - 8192);
  frame_release(&f);
  free(buf);
  buf = pack(FRAME_FETCH_DATA, &fd.base, 4096, &len);
  expect_error(buf, len, "FETCH_DATA frame: length 8192");
  free(buf);
  fd.error = 5;                 /* an error carries no data */
  fd.length = 0;
  buf = pack(FRAME_FETCH_DATA, &fd.base, 4096, &len);
  expect_error(buf, len, "FETCH_DATA frame");
  free(buf);
  buf = pack(FRAME_FETCH_DATA, &fd.base, 0, &len);
  assert_int_equal(frame_parse(buf, len, &f, err, sizeof err), (ssize_t)len);
  assert_int_equal(f.m.fetch_data->error, 5);
  frame_release(&f);
  free(buf);

  rp.grain = 1000;
  buf = pack(FRAME_RESTORE_PLAN, &rp.base, 0, &len);
  expect_error(buf, len, "grain 1000");
  free(buf);

  pp.length = 16;
  buf = pack(FRAME_RESTORE_PLAN_PART, &pp.base, 8, &len);
  expect_error(buf, len, "RESTORE_PLAN_PART frame: length 16");
  free(buf);
  buf = pack(FRAME_RESTORE_PLAN_PART, &pp.base, 16, &len);
  assert_int_equal(frame_parse(buf, len, &f, err, sizeof err), (ssize_t)len);
  frame_release(&f);
  free(buf);
  /* Only the data frames carry payload. */
  buf = pack(FRAME_FETCH, &fe.base, 4096, &len);
  expect_error(buf, len, "unexpected payload");
  free(buf);
}

static void
test_incomplete_needs_more(void **state)
{
  Duplex__Write w = DUPLEX__WRITE__INIT;
  struct frame f;
  char err[256];
  uint8_t *buf;
  size_t len;

  (void)state;
  w.length = 512;
  buf = pack(FRAME_WRITE, &w.base, 512, &len);
  for (size_t i = 0; i < len; i++)
    assert_int_equal(frame_parse(buf, i, &f, err, sizeof err), 0);
  free(buf);
}

static void
test_back_to_back(void **state)
{
  Duplex__Flush a = DUPLEX__FLUSH__INIT, b = DUPLEX__FLUSH__INIT;
  uint8_t buf[128];
  struct frame f;
  char err[256];
  size_t n1, n2;
  ssize_t r;

  (void)state;
  a.seq = 1;
  b.seq = 2;
  n1 = frame_pack(FRAME_FLUSH, &a.base, 0, buf);
  n2 = frame_pack(FRAME_FLUSH, &b.base, 0, buf + n1);
  r = frame_parse(buf, n1 + n2, &f, err, sizeof err);
  assert_int_equal(r, (ssize_t)n1);
  assert_int_equal(f.m.flush->seq, 1);
  frame_release(&f);
  r = frame_parse(buf + n1, n2, &f, err, sizeof err);
  assert_int_equal(r, (ssize_t)n2);
  assert_int_equal(f.m.flush->seq, 2);
  frame_release(&f);
}

static void
test_bad_headers(void **state)
{
  Duplex__Flush fl = DUPLEX__FLUSH__INIT;
  uint8_t buf[64], hdr[FRAME_HDR_LEN];
  struct frame f;
  char err[256];
  size_t n;

  (void)state;
  fl.seq = 5;
  n = frame_pack(FRAME_FLUSH, &fl.base, 0, buf);

  memcpy(hdr, buf, FRAME_HDR_LEN);
  assert_int_equal(frame_parse_header(hdr, &f, err, sizeof err), 0);
  assert_int_equal(f.type, FRAME_FLUSH);
  assert_int_equal(f.msg_len, n - FRAME_HDR_LEN);

  put32(buf, 0x12345678);
  expect_error(buf, n, "bad frame magic 0x12345678");
  assert_int_equal(frame_parse_header(buf, &f, err, sizeof err), -1);

  frame_pack(FRAME_FLUSH, &fl.base, 0, buf);
  buf[4] = 0;
  buf[5] = 42;
  expect_error(buf, n, "unknown frame type 42");
  buf[5] = 0;
  expect_error(buf, n, "unknown frame type 0");
  buf[5] = 19;
  expect_error(buf, n, "unknown frame type 19");

  frame_pack(FRAME_FLUSH, &fl.base, 0, buf);
  buf[7] = 1;
  expect_error(buf, n, "reserved");

  /* Lengths are checked from the header alone, before the body arrives. */
  frame_pack(FRAME_FLUSH, &fl.base, 0, buf);
  put32(buf + 8, FRAME_MAX_MSG + 1);
  expect_error(buf, FRAME_HDR_LEN, "exceeds");

  frame_pack(FRAME_FLUSH, &fl.base, 0, buf);
  put32(buf + 12, 512);
  expect_error(buf, FRAME_HDR_LEN, "FLUSH frame: unexpected payload of 512");
}

static void
test_write_semantics(void **state)
{
  Duplex__Write w = DUPLEX__WRITE__INIT;
  uint8_t *buf;
  size_t len;

  (void)state;
  w.length = 4096;
  buf = pack(FRAME_WRITE, &w.base, 512, &len);
  expect_error(buf, len, "WRITE frame: length 4096 but payload 512 bytes");
  free(buf);

  w.length = 0;
  buf = pack(FRAME_WRITE, &w.base, 0, &len);
  expect_error(buf, len, "WRITE frame: length 0");
  free(buf);

  w.length = 4096;
  w.offset = UINT64_MAX - 100;
  buf = pack(FRAME_WRITE, &w.base, 4096, &len);
  expect_error(buf, len, "overflows");
  free(buf);

  w.offset = 0;
  buf = pack(FRAME_WRITE, &w.base, 0, &len);
  put32(buf + 12, FRAME_MAX_PAYLOAD + 1);
  expect_error(buf, FRAME_HDR_LEN, "exceeds");
  free(buf);
}

static void
test_other_semantics(void **state)
{
  Duplex__Zero z = DUPLEX__ZERO__INIT;
  Duplex__Hello h = DUPLEX__HELLO__INIT;
  Duplex__HelloReply hr = DUPLEX__HELLO_REPLY__INIT;
  uint8_t *buf;
  size_t len;

  (void)state;
  z.offset = 4096;
  buf = pack(FRAME_ZERO, &z.base, 0, &len);
  expect_error(buf, len, "ZERO frame: length 0");
  free(buf);
  z.length = 8192;
  z.offset = UINT64_MAX - 4095;
  buf = pack(FRAME_ZERO, &z.base, 0, &len);
  expect_error(buf, len, "overflows");
  free(buf);

  h.proto_version = 1;
  h.volume_uuid.data = (uint8_t *)uuid16;
  h.volume_uuid.len = 15;
  buf = pack(FRAME_HELLO, &h.base, 0, &len);
  expect_error(buf, len, "uuid is 15 bytes");
  free(buf);
  h.volume_uuid.len = 16;
  h.proto_version = 0;
  buf = pack(FRAME_HELLO, &h.base, 0, &len);
  expect_error(buf, len, "protocol version 0");
  free(buf);
  h.proto_version = 1;
  h.mode = (Duplex__Mode)77;
  buf = pack(FRAME_HELLO, &h.base, 0, &len);
  expect_error(buf, len, "unknown mode 77");
  free(buf);

  hr.replica_volume_uuid.data = (uint8_t *)uuid16;
  hr.replica_volume_uuid.len = 3;
  buf = pack(FRAME_HELLO_REPLY, &hr.base, 0, &len);
  expect_error(buf, len, "replica volume uuid is 3 bytes");
  free(buf);

  {
    Duplex__Snapshot sn = DUPLEX__SNAPSHOT__INIT;
    char name[300];
    memset(name, 'x', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    sn.name = name;
    buf = pack(FRAME_SNAPSHOT, &sn.base, 0, &len);
    expect_error(buf, len, "SNAPSHOT frame: name of 299 bytes");
    free(buf);
  }
}

static void
test_malformed_protobuf(void **state)
{
  uint8_t buf[FRAME_HDR_LEN + 4];
  Duplex__Flush fl = DUPLEX__FLUSH__INIT;

  (void)state;
  frame_pack(FRAME_FLUSH, &fl.base, 0, buf);
  put32(buf + 8, 4);
  /* Field 1 varint whose continuation bit never ends. */
  memcpy(buf + FRAME_HDR_LEN, "\x08\xff\xff\xff", 4);
  expect_error(buf, sizeof buf, "FLUSH frame: malformed message");
}

static void
test_ack_limit(void **state)
{
  Duplex__Ack ack = DUPLEX__ACK__INIT;
  uint64_t *seqs = calloc(65537, sizeof *seqs);
  uint8_t *buf;
  size_t len;

  (void)state;
  ack.n_seq = 65537;
  ack.seq = seqs;
  buf = pack(FRAME_ACK, &ack.base, 0, &len);
  expect_error(buf, len, "ACK frame");
  free(buf);
  free(seqs);
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_hello_roundtrip),
    cmocka_unit_test(test_write_roundtrip_with_payload),
    cmocka_unit_test(test_every_type_roundtrips),
    cmocka_unit_test(test_restore_frames),
    cmocka_unit_test(test_incomplete_needs_more),
    cmocka_unit_test(test_back_to_back),
    cmocka_unit_test(test_bad_headers),
    cmocka_unit_test(test_write_semantics),
    cmocka_unit_test(test_other_semantics),
    cmocka_unit_test(test_malformed_protobuf),
    cmocka_unit_test(test_ack_limit),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
