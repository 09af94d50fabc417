/* Unit tests for common/nbd-proto.c: handshake bytes, client flags, option
 * parsing and replies, request parsing and the validation table. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <event2/buffer.h>

#include "nbd-proto.h"

#define SIZE (1024ull * 1024 * 1024) /* export size used by the tests */

static const uint16_t tflags_all =
    NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
    NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_CAN_MULTI_CONN;

static const struct nbd_export test_export = {
  .size = SIZE,
  .tflags = tflags_all,
  .name = "vol.img",
  .description = "duplex-primary volume /srv/vol.img",
};

/* ---- byte helpers ---- */

static uint16_t
be16(const uint8_t *p)
{
  return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t
be32(const uint8_t *p)
{
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
         p[3];
}

static uint64_t
be64(const uint8_t *p)
{
  return (uint64_t)be32(p) << 32 | be32(p + 4);
}

static void
put16(uint8_t *p, uint16_t v)
{
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}

static void
put32(uint8_t *p, uint32_t v)
{
  put16(p, (uint16_t)(v >> 16));
  put16(p + 2, (uint16_t)v);
}

static void
put64(uint8_t *p, uint64_t v)
{
  put32(p, (uint32_t)(v >> 32));
  put32(p + 4, (uint32_t)v);
}

/* One option reply taken off the front of buf. */
struct reply {
  uint32_t option, type, len;
  uint8_t data[8192];
};

static void
take_reply(struct evbuffer *buf, struct reply *r)
{
  uint8_t hdr[NBD_OPT_REPLY_HDR_LEN];

  assert_true(evbuffer_get_length(buf) >= sizeof hdr);
  evbuffer_remove(buf, hdr, sizeof hdr);
  assert_int_equal(be64(hdr), NBD_REP_MAGIC);
  r->option = be32(hdr + 8);
  r->type = be32(hdr + 12);
  r->len = be32(hdr + 16);
  assert_true(r->len <= sizeof r->data);
  assert_int_equal(evbuffer_get_length(buf) >= r->len, 1);
  evbuffer_remove(buf, r->data, r->len);
}

static enum nbd_opt_result
run_option(uint32_t cflags, uint32_t option, const uint8_t *payload,
           uint32_t len, struct evbuffer *out, char *why, size_t whylen)
{
  struct nbd_opt_hdr hdr = { .option = option, .length = len };
  static const uint8_t none[1];

  return nbd_proto_option(&test_export, cflags, &hdr,
                          payload != NULL ? payload : none, out, why, whylen);
}

/* GO/INFO payload: name, then the information requests. */
static uint32_t
go_payload(uint8_t *buf, const char *name, const uint16_t *infos, uint16_t n)
{
  uint32_t len = (uint32_t)strlen(name);

  put32(buf, len);
  memcpy(buf + 4, name, len);
  put16(buf + 4 + len, n);
  for (uint16_t i = 0; i < n; i++)
    put16(buf + 6 + len + 2 * i, infos[i]);
  return 6 + len + 2u * n;
}

/* ---- handshake ---- */

static void
test_handshake(void **state)
{
  uint8_t b[NBD_HANDSHAKE_LEN];
  static const uint8_t want[NBD_HANDSHAKE_LEN] = {
    'N', 'B', 'D', 'M', 'A', 'G', 'I', 'C',
    'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T',
    0x00, 0x03,
  };

  (void)state;
  nbd_proto_build_handshake(b);
  assert_memory_equal(b, want, sizeof want);
}

static void
test_client_flags(void **state)
{
  static const struct {
    uint32_t flags;
    int rc;
  } cases[] = {
    { NBD_FLAG_C_FIXED_NEWSTYLE, 0 },
    { NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES, 0 },
    { 0, 0 },                                /* non-fixed newstyle client */
    { NBD_FLAG_C_NO_ZEROES, 0 },
    { NBD_FLAG_C_FIXED_NEWSTYLE | 4, -1 },   /* unknown bit */
    { NBD_FLAG_C_FIXED_NEWSTYLE | 0x80000000u, -1 },
    { 4, -1 },
    { NBD_FLAG_C_NO_ZEROES | 0x100, -1 },
  };
  uint8_t b[4];
  uint32_t got;
  char why[200];

  (void)state;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    put32(b, cases[i].flags);
    got = 0xdead;
    why[0] = 'x';
    assert_int_equal(nbd_proto_parse_client_flags(b, &got, why, sizeof why),
                     cases[i].rc);
    if (cases[i].rc == 0) {
      assert_int_equal(got, cases[i].flags);
    } else {
      assert_true(strlen(why) > 10);
    }
  }
}

/* ---- option headers and payloads ---- */

static void
test_opt_hdr(void **state)
{
  uint8_t b[NBD_OPT_HDR_LEN];
  struct nbd_opt_hdr h;
  char why[200];

  (void)state;
  put64(b, NBD_OPTS_MAGIC);
  put32(b + 8, NBD_OPT_GO);
  put32(b + 12, 0x12345678);
  assert_int_equal(nbd_proto_parse_opt_hdr(b, &h, why, sizeof why), 0);
  assert_int_equal(h.option, NBD_OPT_GO);
  assert_int_equal(h.length, 0x12345678);

  put64(b, NBD_MAGIC);
  assert_int_equal(nbd_proto_parse_opt_hdr(b, &h, why, sizeof why), -1);
  assert_non_null(strstr(why, "magic"));
}

static void
test_parse_opt_go(void **state)
{
  uint8_t b[256];
  uint16_t infos[] = { NBD_INFO_BLOCK_SIZE, NBD_INFO_NAME, 999,
                       NBD_INFO_DESCRIPTION };
  struct nbd_opt_go go;
  uint32_t len;
  char why[200];

  (void)state;
  len = go_payload(b, "disk", infos, 4);
  assert_int_equal(nbd_proto_parse_opt_go(b, len, &go, why, sizeof why), 0);
  assert_int_equal(go.name_len, 4);
  assert_memory_equal(go.name, "disk", 4);
  assert_int_equal(go.n_info, 4);
  assert_true(go.want_block_size);
  assert_true(go.want_name);
  assert_true(go.want_description);

  len = go_payload(b, "", NULL, 0);
  assert_int_equal(len, 6);
  assert_int_equal(nbd_proto_parse_opt_go(b, len, &go, why, sizeof why), 0);
  assert_int_equal(go.name_len, 0);
  assert_false(go.want_block_size || go.want_name || go.want_description);

  /* shorter than the fixed part */
  for (uint32_t l = 0; l < 6; l++)
    assert_int_equal(nbd_proto_parse_opt_go(b, l, &go, why, sizeof why),
                     NBD_REP_ERR_INVALID);
  /* name length beyond the data (and an overflow attempt) */
  len = go_payload(b, "disk", NULL, 0);
  put32(b, 5);
  assert_int_equal(nbd_proto_parse_opt_go(b, len, &go, why, sizeof why),
                   NBD_REP_ERR_INVALID);
  put32(b, 0xffffffffu);
  assert_int_equal(nbd_proto_parse_opt_go(b, len, &go, why, sizeof why),
                   NBD_REP_ERR_INVALID);
  assert_non_null(strstr(why, "name length"));
  /* info count disagrees with the data */
  len = go_payload(b, "disk", infos, 2);
  assert_int_equal(nbd_proto_parse_opt_go(b, len - 1, &go, why, sizeof why),
                   NBD_REP_ERR_INVALID);
  assert_int_equal(nbd_proto_parse_opt_go(b, len + 2, &go, why, sizeof why),
                   NBD_REP_ERR_INVALID);
  put16(b + 8, 0xffff);
  assert_int_equal(nbd_proto_parse_opt_go(b, len, &go, why, sizeof why),
                   NBD_REP_ERR_INVALID);
}

/* ---- options end to end: replies and next step ---- */

static void
check_go_replies(struct evbuffer *out, uint32_t option, bool name, bool desc)
{
  struct reply r;
  bool seen_export = false, seen_bs = false, seen_name = false,
       seen_desc = false;

  for (;;) {
    take_reply(out, &r);
    assert_int_equal(r.option, option);
    if (r.type == NBD_REP_ACK) {
      assert_int_equal(r.len, 0);
      break;
    }
    assert_int_equal(r.type, NBD_REP_INFO);
    assert_true(r.len >= 2);
    switch (be16(r.data)) {
    case NBD_INFO_EXPORT:
      assert_int_equal(r.len, 12);
      assert_int_equal(be64(r.data + 2), SIZE);
      assert_int_equal(be16(r.data + 10), tflags_all);
      seen_export = true;
      break;
    case NBD_INFO_BLOCK_SIZE:
      assert_int_equal(r.len, 14);
      assert_int_equal(be32(r.data + 2), 1);
      assert_int_equal(be32(r.data + 6), 4096);
      assert_int_equal(be32(r.data + 10), 64u * 1024 * 1024);
      seen_bs = true;
      break;
    case NBD_INFO_NAME:
      assert_int_equal(r.len, 2 + strlen(test_export.name));
      assert_memory_equal(r.data + 2, test_export.name,
                          strlen(test_export.name));
      seen_name = true;
      break;
    case NBD_INFO_DESCRIPTION:
      assert_int_equal(r.len, 2 + strlen(test_export.description));
      seen_desc = true;
      break;
    default:
      fail_msg("unexpected info type %u", be16(r.data));
    }
  }
  assert_true(seen_export);
  assert_true(seen_bs);
  assert_int_equal(seen_name, name);
  assert_int_equal(seen_desc, desc);
  assert_int_equal(evbuffer_get_length(out), 0);
}

static void
test_option_go_info(void **state)
{
  struct evbuffer *out = evbuffer_new();
  uint16_t infos[] = { NBD_INFO_NAME, NBD_INFO_DESCRIPTION };
  uint8_t b[64];
  uint32_t len;
  char why[200];

  (void)state;
  /* INFO stays in negotiation, GO enters transmission; any name goes. */
  len = go_payload(b, "whatever", NULL, 0);
  assert_int_equal(run_option(NBD_FLAG_C_FIXED_NEWSTYLE, NBD_OPT_INFO, b, len,
                              out, why, sizeof why), NBD_OPT_NEXT);
  assert_string_equal(why, "");
  check_go_replies(out, NBD_OPT_INFO, false, false);

  len = go_payload(b, "", infos, 2);
  assert_int_equal(run_option(NBD_FLAG_C_FIXED_NEWSTYLE, NBD_OPT_INFO, b, len,
                              out, why, sizeof why), NBD_OPT_NEXT);
  check_go_replies(out, NBD_OPT_INFO, true, true);

  len = go_payload(b, "", NULL, 0);
  assert_int_equal(run_option(NBD_FLAG_C_FIXED_NEWSTYLE, NBD_OPT_GO, b, len,
                              out, why, sizeof why), NBD_OPT_TRANSMISSION);
  check_go_replies(out, NBD_OPT_GO, false, false);
  evbuffer_free(out);
}

static void
test_option_go_invalid(void **state)
{
  struct evbuffer *out = evbuffer_new();
  struct reply r;
  uint8_t b[16] = { 0 };
  char why[200];

  (void)state;
  assert_int_equal(run_option(NBD_FLAG_C_FIXED_NEWSTYLE, NBD_OPT_GO, b, 3,
                              out, why, sizeof why), NBD_OPT_NEXT);
  assert_non_null(strstr(why, "NBD_OPT_GO"));
  take_reply(out, &r);
  assert_int_equal(r.option, NBD_OPT_GO);
  assert_int_equal(r.type, NBD_REP_ERR_INVALID);
  assert_true(r.len > 0); /* carries a message */
  assert_int_equal(evbuffer_get_length(out), 0);
  evbuffer_free(out);
}

static void
test_option_export_name(void **state)
{
  struct evbuffer *out = evbuffer_new();
  uint8_t b[200];
  char why[200];

  (void)state;
  assert_int_equal(run_option(NBD_FLAG_C_FIXED_NEWSTYLE, NBD_OPT_EXPORT_NAME,
                              (const uint8_t *)"x", 1, out, why, sizeof why),
                   NBD_OPT_TRANSMISSION);
  assert_int_equal(evbuffer_get_length(out), 10 + 124);
  evbuffer_remove(out, b, 134);
  assert_int_equal(be64(b), SIZE);
  assert_int_equal(be16(b + 8), tflags_all);
  for (int i = 10; i < 134; i++)
    assert_int_equal(b[i], 0);

  assert_int_equal(run_option(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES,
                              NBD_OPT_EXPORT_NAME, NULL, 0, out, why,
                              sizeof why), NBD_OPT_TRANSMISSION);
  assert_int_equal(evbuffer_get_length(out), 10);
  evbuffer_remove(out, b, 10);
  assert_int_equal(be64(b), SIZE);
  assert_int_equal(be16(b + 8), tflags_all);
  evbuffer_free(out);
}

/* A client without fixed newstyle (old nbd-client, libnbd with handshake
 * flags 0): NBD_OPT_EXPORT_NAME works, with or without the zeroes. */
static void
test_option_export_name_non_fixed(void **state)
{
  struct evbuffer *out = evbuffer_new();
  uint8_t b[200];
  char why[200];

  (void)state;
  assert_int_equal(run_option(0, NBD_OPT_EXPORT_NAME, (const uint8_t *)"vol",
                              3, out, why, sizeof why),
                   NBD_OPT_TRANSMISSION);
  assert_string_equal(why, "");
  assert_int_equal(evbuffer_get_length(out), 10 + 124);
  evbuffer_remove(out, b, 134);
  assert_int_equal(be64(b), SIZE);
  assert_int_equal(be16(b + 8), tflags_all);
  for (int i = 10; i < 134; i++)
    assert_int_equal(b[i], 0);

  assert_int_equal(run_option(NBD_FLAG_C_NO_ZEROES, NBD_OPT_EXPORT_NAME, NULL,
                              0, out, why, sizeof why), NBD_OPT_TRANSMISSION);
  assert_string_equal(why, "");
  assert_int_equal(evbuffer_get_length(out), 10);
  evbuffer_remove(out, b, 10);
  assert_int_equal(be64(b), SIZE);
  assert_int_equal(be16(b + 8), tflags_all);
  evbuffer_free(out);
}

/* Any other option from such a client closes the connection without a
 * reply: it has no way to parse one. */
static void
test_option_non_fixed_others(void **state)
{
  static const uint32_t opts[] = {
    NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_LIST, NBD_OPT_STARTTLS,
    NBD_OPT_STRUCTURED_REPLY, NBD_OPT_EXTENDED_HEADERS, 0, 4242,
  };
  static const uint32_t cflags[] = { 0, NBD_FLAG_C_NO_ZEROES };
  struct evbuffer *out = evbuffer_new();
  uint8_t b[64];
  uint32_t len = go_payload(b, "", NULL, 0);
  struct nbd_opt_hdr h;
  char why[200];

  (void)state;
  for (size_t f = 0; f < 2; f++) {
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++) {
      assert_int_equal(run_option(cflags[f], opts[i], b,
                                  opts[i] == NBD_OPT_LIST ? 0 : len, out, why,
                                  sizeof why), NBD_OPT_CLOSE);
      assert_int_equal(evbuffer_get_length(out), 0);
      assert_non_null(strstr(why, nbd_proto_opt_name(opts[i])));
      assert_non_null(strstr(why, "fixed newstyle"));
    }
    /* ABORT: closed as asked, no reply and no complaint */
    assert_int_equal(run_option(cflags[f], NBD_OPT_ABORT, NULL, 0, out, why,
                                sizeof why), NBD_OPT_CLOSE);
    assert_int_equal(evbuffer_get_length(out), 0);
    assert_string_equal(why, "");

    /* an oversized option cannot get ERR_TOO_BIG either */
    h.option = NBD_OPT_GO;
    h.length = NBD_MAX_OPTION + 1;
    assert_int_equal(nbd_proto_option_too_big(&h, cflags[f], out, why,
                                              sizeof why), NBD_OPT_CLOSE);
    assert_int_equal(evbuffer_get_length(out), 0);
    assert_true(strlen(why) > 10);
  }
  evbuffer_free(out);
}

static void
test_option_list(void **state)
{
  struct evbuffer *out = evbuffer_new();
  struct reply r;
  char why[200];

  (void)state;
  assert_int_equal(run_option(NBD_FLAG_C_FIXED_NEWSTYLE, NBD_OPT_LIST, NULL, 0,
                              out, why, sizeof why), NBD_OPT_NEXT);
  take_reply(out, &r);
  assert_int_equal(r.type, NBD_REP_SERVER);
  assert_int_equal(r.len, 4 + strlen(test_export.name));
  assert_int_equal(be32(r.data), strlen(test_export.name));
  assert_memory_equal(r.data + 4, "vol.img", 7);
  take_reply(out, &r);
  assert_int_equal(r.type, NBD_REP_ACK);
  assert_int_equal(evbuffer_get_length(out), 0);

  /* LIST takes no data */
  assert_int_equal(run_option(NBD_FLAG_C_FIXED_NEWSTYLE, NBD_OPT_LIST,
                              (const uint8_t *)"ab", 2, out, why, sizeof why),
                   NBD_OPT_NEXT);
  assert_true(strlen(why) > 0);
  take_reply(out, &r);
  assert_int_equal(r.type, NBD_REP_ERR_INVALID);
  assert_int_equal(evbuffer_get_length(out), 0);
  evbuffer_free(out);
}

static void
test_option_abort(void **state)
{
  struct evbuffer *out = evbuffer_new();
  struct reply r;
  char why[200];

  (void)state;
  /* data is ignored, not an error */
  assert_int_equal(run_option(NBD_FLAG_C_FIXED_NEWSTYLE, NBD_OPT_ABORT,
                              (const uint8_t *)"zz", 2, out, why, sizeof why),
                   NBD_OPT_CLOSE);
  take_reply(out, &r);
  assert_int_equal(r.option, NBD_OPT_ABORT);
  assert_int_equal(r.type, NBD_REP_ACK);
  assert_int_equal(r.len, 0);
  evbuffer_free(out);
}

static void
test_option_unsupported(void **state)
{
  static const uint32_t opts[] = {
    NBD_OPT_STARTTLS, NBD_OPT_STRUCTURED_REPLY, NBD_OPT_LIST_META_CONTEXT,
    NBD_OPT_SET_META_CONTEXT, NBD_OPT_EXTENDED_HEADERS, NBD_OPT_PEEK_EXPORT,
    0, 12, 0x7fffffffu, 0xffffffffu,
  };
  struct evbuffer *out = evbuffer_new();
  uint8_t payload[100] = { 1, 2, 3 };
  struct reply r;
  char why[200];

  (void)state;
  for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++) {
    assert_int_equal(run_option(NBD_FLAG_C_FIXED_NEWSTYLE, opts[i], payload,
                                sizeof payload, out, why, sizeof why),
                     NBD_OPT_NEXT);
    assert_string_equal(why, ""); /* probing is not a client error */
    take_reply(out, &r);
    assert_int_equal(r.option, opts[i]);
    assert_int_equal(r.type, NBD_REP_ERR_UNSUP);
    assert_int_equal(evbuffer_get_length(out), 0);
  }
  evbuffer_free(out);
}

static void
test_option_too_big(void **state)
{
  struct evbuffer *out = evbuffer_new();
  struct nbd_opt_hdr h = { .option = NBD_OPT_GO,
                           .length = NBD_MAX_OPTION + 1 };
  struct reply r;
  char why[200];

  (void)state;
  assert_int_equal(nbd_proto_option_too_big(&h, NBD_FLAG_C_FIXED_NEWSTYLE,
                                            out, why, sizeof why),
                   NBD_OPT_NEXT);
  assert_non_null(strstr(why, "65537"));
  take_reply(out, &r);
  assert_int_equal(r.option, NBD_OPT_GO);
  assert_int_equal(r.type, NBD_REP_ERR_TOO_BIG);
  assert_int_equal(evbuffer_get_length(out), 0);

  /* EXPORT_NAME cannot be answered with an error: close */
  h.option = NBD_OPT_EXPORT_NAME;
  h.length = 0xffffffffu;
  assert_int_equal(nbd_proto_option_too_big(&h, NBD_FLAG_C_FIXED_NEWSTYLE,
                                            out, why, sizeof why),
                   NBD_OPT_CLOSE);
  assert_int_equal(evbuffer_get_length(out), 0);
  evbuffer_free(out);
}

/* ---- transmission ---- */

static void
make_request(uint8_t *b, uint32_t magic, uint16_t flags, uint16_t type,
             uint64_t cookie, uint64_t off, uint32_t len)
{
  put32(b, magic);
  put16(b + 4, flags);
  put16(b + 6, type);
  put64(b + 8, cookie);
  put64(b + 16, off);
  put32(b + 24, len);
}

static void
test_parse_request(void **state)
{
  uint8_t b[NBD_REQUEST_LEN];
  struct nbd_request req;
  char why[200];

  (void)state;
  make_request(b, NBD_REQUEST_MAGIC, NBD_CMD_FLAG_FUA, NBD_CMD_WRITE,
               0x0102030405060708ull, 0xfffffffffffff000ull, 4096);
  assert_int_equal(nbd_proto_parse_request(b, &req, why, sizeof why), 0);
  assert_int_equal(req.flags, NBD_CMD_FLAG_FUA);
  assert_int_equal(req.type, NBD_CMD_WRITE);
  assert_int_equal(req.cookie, 0x0102030405060708ull);
  assert_int_equal(req.offset, 0xfffffffffffff000ull);
  assert_int_equal(req.length, 4096);
  assert_int_equal(nbd_proto_request_payload(&req), 4096);

  req.type = NBD_CMD_READ;
  assert_int_equal(nbd_proto_request_payload(&req), 0);
  req.type = NBD_CMD_WRITE_ZEROES;
  assert_int_equal(nbd_proto_request_payload(&req), 0);
  req.type = 1234;
  assert_int_equal(nbd_proto_request_payload(&req), 0);

  make_request(b, NBD_SIMPLE_REPLY_MAGIC, 0, NBD_CMD_READ, 1, 0, 1);
  assert_int_equal(nbd_proto_parse_request(b, &req, why, sizeof why), -1);
  assert_non_null(strstr(why, "magic"));
}

static void
test_validate_table(void **state)
{
  static const uint32_t MAXLEN = 64u * 1024 * 1024;
  static const struct {
    const char *what;
    uint16_t type, flags;
    uint64_t off;
    uint32_t len;
    uint32_t want;
  } cases[] = {
    { "read", NBD_CMD_READ, 0, 0, 4096, 0 },
    { "read unaligned", NBD_CMD_READ, 0, 1, 4097, 0 },
    { "read last byte", NBD_CMD_READ, 0, SIZE - 1, 1, 0 },
    { "read to the end", NBD_CMD_READ, 0, SIZE - MAXLEN, MAXLEN, 0 },
    { "read past end", NBD_CMD_READ, 0, SIZE - 512, 1024, NBD_EINVAL },
    { "read at end", NBD_CMD_READ, 0, SIZE, 1, NBD_EINVAL },
    { "read beyond", NBD_CMD_READ, 0, SIZE + 4096, 1, NBD_EINVAL },
    { "read offset overflow", NBD_CMD_READ, 0, UINT64_MAX - 10, 512,
      NBD_EINVAL },
    { "read zero length", NBD_CMD_READ, 0, 0, 0, NBD_EINVAL },
    { "read 32 MiB", NBD_CMD_READ, 0, 0, 32u << 20, 0 },
    { "read 48 MiB unaligned", NBD_CMD_READ, 0, 1, (48u << 20) + 1, 0 },
    { "read 64 MiB", NBD_CMD_READ, 0, 0, MAXLEN, 0 },
    { "read 64 MiB + 1", NBD_CMD_READ, 0, 0, MAXLEN + 1, NBD_EINVAL },
    { "read 4 GiB - 1", NBD_CMD_READ, 0, 0, UINT32_MAX, NBD_EINVAL },
    { "read FUA", NBD_CMD_READ, NBD_CMD_FLAG_FUA, 0, 512, 0 },
    { "read NO_HOLE", NBD_CMD_READ, NBD_CMD_FLAG_NO_HOLE, 0, 512, NBD_EINVAL },
    { "read DF", NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 512, NBD_EINVAL },
    { "read unknown flag", NBD_CMD_READ, 0x8000, 0, 512, NBD_EINVAL },
    { "write", NBD_CMD_WRITE, 0, 4096, 4096, 0 },
    { "write FUA", NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 4096, 4096, 0 },
    { "write past end", NBD_CMD_WRITE, 0, SIZE - 512, 1024, NBD_ENOSPC },
    { "write beyond", NBD_CMD_WRITE, 0, SIZE + 1, 1, NBD_ENOSPC },
    { "write offset overflow", NBD_CMD_WRITE, 0, UINT64_MAX, 1, NBD_ENOSPC },
    { "write zero length", NBD_CMD_WRITE, 0, 0, 0, NBD_EINVAL },
    { "write 32 MiB", NBD_CMD_WRITE, 0, 0, 32u << 20, 0 },
    { "write 33 MiB", NBD_CMD_WRITE, 0, 0, 33u << 20, 0 },
    { "write 64 MiB", NBD_CMD_WRITE, 0, 0, MAXLEN, 0 },
    { "write 64 MiB to the end", NBD_CMD_WRITE, 0,
      SIZE - MAXLEN, MAXLEN, 0 },
    { "write 64 MiB + 1", NBD_CMD_WRITE, 0, 0, MAXLEN + 1, NBD_EINVAL },
    { "write 65 MiB past end", NBD_CMD_WRITE, 0, SIZE, 65u << 20,
      NBD_EINVAL },
    { "write NO_HOLE", NBD_CMD_WRITE, NBD_CMD_FLAG_NO_HOLE, 0, 512,
      NBD_EINVAL },
    { "write FAST_ZERO", NBD_CMD_WRITE, NBD_CMD_FLAG_FAST_ZERO, 0, 512,
      NBD_EINVAL },
    { "flush", NBD_CMD_FLUSH, 0, 0, 0, 0 },
    { "flush FUA", NBD_CMD_FLUSH, NBD_CMD_FLAG_FUA, 0, 0, 0 },
    { "flush offset", NBD_CMD_FLUSH, 0, 1, 0, NBD_EINVAL },
    { "flush length", NBD_CMD_FLUSH, 0, 0, 1, NBD_EINVAL },
    { "flush NO_HOLE", NBD_CMD_FLUSH, NBD_CMD_FLAG_NO_HOLE, 0, 0, NBD_EINVAL },
    { "trim", NBD_CMD_TRIM, 0, 0, 1 << 20, 0 },
    { "trim whole export", NBD_CMD_TRIM, 0, 0, (uint32_t)SIZE, 0 },
    { "trim FUA", NBD_CMD_TRIM, NBD_CMD_FLAG_FUA, 0, 4096, 0 },
    { "trim past end", NBD_CMD_TRIM, 0, SIZE - 4096, 8192, NBD_EINVAL },
    { "trim zero length", NBD_CMD_TRIM, 0, 0, 0, NBD_EINVAL },
    { "trim NO_HOLE", NBD_CMD_TRIM, NBD_CMD_FLAG_NO_HOLE, 0, 4096,
      NBD_EINVAL },
    { "zero", NBD_CMD_WRITE_ZEROES, 0, 0, 4096, 0 },
    { "zero NO_HOLE|FUA", NBD_CMD_WRITE_ZEROES,
      NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FUA, 0, 4096, 0 },
    { "zero 64 MiB", NBD_CMD_WRITE_ZEROES, 0, 0, 64u << 20, 0 },
    { "zero past end", NBD_CMD_WRITE_ZEROES, 0, SIZE - 4096, 8192,
      NBD_ENOSPC },
    { "zero zero length", NBD_CMD_WRITE_ZEROES, 0, 0, 0, NBD_EINVAL },
    { "zero FAST_ZERO", NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_FAST_ZERO, 0, 4096,
      NBD_EINVAL },
    { "cache", NBD_CMD_CACHE, 0, 0, 4096, NBD_EINVAL },
    { "block status", NBD_CMD_BLOCK_STATUS, 0, 0, 4096, NBD_EINVAL },
    { "unknown command", 8, 0, 0, 4096, NBD_EINVAL },
    { "unknown command 0xffff", 0xffff, 0, 0, 0, NBD_EINVAL },
  };
  struct nbd_request req;
  char why[300];
  uint32_t got;

  (void)state;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    req.type = cases[i].type;
    req.flags = cases[i].flags;
    req.offset = cases[i].off;
    req.length = cases[i].len;
    req.cookie = i;
    got = nbd_proto_validate_request(&req, SIZE, tflags_all, why, sizeof why);
    if (got != cases[i].want)
      fail_msg("%s: got %u, want %u (%s)", cases[i].what, got, cases[i].want,
               why);
    if (got != 0)
      assert_true(strlen(why) > 10);
    else
      assert_string_equal(why, "");
  }
}

static void
test_validate_unadvertised(void **state)
{
  struct nbd_request req = { .type = NBD_CMD_FLUSH };
  char why[300];

  (void)state;
  /* commands and flags the export does not advertise */
  assert_int_equal(nbd_proto_validate_request(&req, SIZE, NBD_FLAG_HAS_FLAGS,
                                              why, sizeof why), NBD_EINVAL);
  req.type = NBD_CMD_TRIM;
  req.length = 512;
  assert_int_equal(nbd_proto_validate_request(&req, SIZE, NBD_FLAG_HAS_FLAGS,
                                              why, sizeof why), NBD_EINVAL);
  req.type = NBD_CMD_WRITE_ZEROES;
  assert_int_equal(nbd_proto_validate_request(&req, SIZE, NBD_FLAG_HAS_FLAGS,
                                              why, sizeof why), NBD_EINVAL);
  req.type = NBD_CMD_WRITE;
  req.flags = NBD_CMD_FLAG_FUA;
  assert_int_equal(nbd_proto_validate_request(&req, SIZE, NBD_FLAG_HAS_FLAGS,
                                              why, sizeof why), NBD_EINVAL);
  req.flags = 0;
  assert_int_equal(nbd_proto_validate_request(&req, SIZE, NBD_FLAG_HAS_FLAGS,
                                              why, sizeof why), 0);
  /* an empty export accepts nothing with a length */
  req.type = NBD_CMD_READ;
  assert_int_equal(nbd_proto_validate_request(&req, 0, tflags_all, why,
                                              sizeof why), NBD_EINVAL);
}

static void
test_errno_map(void **state)
{
  (void)state;
  assert_int_equal(nbd_proto_errno(0), NBD_SUCCESS);
  assert_int_equal(nbd_proto_errno(EPERM), NBD_EPERM);
  assert_int_equal(nbd_proto_errno(EROFS), NBD_EPERM);
  assert_int_equal(nbd_proto_errno(EIO), NBD_EIO);
  assert_int_equal(nbd_proto_errno(ENOMEM), NBD_ENOMEM);
  assert_int_equal(nbd_proto_errno(EINVAL), NBD_EINVAL);
  assert_int_equal(nbd_proto_errno(ENOSPC), NBD_ENOSPC);
  assert_int_equal(nbd_proto_errno(EDQUOT), NBD_ENOSPC);
  assert_int_equal(nbd_proto_errno(EFBIG), NBD_ENOSPC);
  assert_int_equal(nbd_proto_errno(EOVERFLOW), NBD_EOVERFLOW);
  assert_int_equal(nbd_proto_errno(ESHUTDOWN), NBD_ESHUTDOWN);
  assert_int_equal(nbd_proto_errno(ENOTCONN), NBD_EIO);
  assert_int_equal(nbd_proto_errno(ETIMEDOUT), NBD_EIO);
}

static void
test_simple_reply(void **state)
{
  uint8_t b[NBD_SIMPLE_REPLY_LEN];
  static const uint8_t want[NBD_SIMPLE_REPLY_LEN] = {
    0x67, 0x44, 0x66, 0x98, 0, 0, 0, 28, 1, 2, 3, 4, 5, 6, 7, 8,
  };

  (void)state;
  nbd_proto_build_simple_reply(b, NBD_ENOSPC, 0x0102030405060708ull);
  assert_memory_equal(b, want, sizeof want);
}

static void
test_tflags_and_names(void **state)
{
  (void)state;
  assert_int_equal(nbd_proto_tflags(), tflags_all);
  assert_string_equal(nbd_proto_opt_name(NBD_OPT_GO), "NBD_OPT_GO");
  assert_string_equal(nbd_proto_opt_name(4242), "unknown option");
  assert_string_equal(nbd_proto_cmd_name(NBD_CMD_WRITE_ZEROES),
                      "NBD_CMD_WRITE_ZEROES");
  assert_string_equal(nbd_proto_cmd_name(4242), "unknown command");
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_handshake),
    cmocka_unit_test(test_client_flags),
    cmocka_unit_test(test_opt_hdr),
    cmocka_unit_test(test_parse_opt_go),
    cmocka_unit_test(test_option_go_info),
    cmocka_unit_test(test_option_go_invalid),
    cmocka_unit_test(test_option_export_name),
    cmocka_unit_test(test_option_export_name_non_fixed),
    cmocka_unit_test(test_option_non_fixed_others),
    cmocka_unit_test(test_option_list),
    cmocka_unit_test(test_option_abort),
    cmocka_unit_test(test_option_unsupported),
    cmocka_unit_test(test_option_too_big),
    cmocka_unit_test(test_parse_request),
    cmocka_unit_test(test_validate_table),
    cmocka_unit_test(test_validate_unadvertised),
    cmocka_unit_test(test_errno_map),
    cmocka_unit_test(test_simple_reply),
    cmocka_unit_test(test_tflags_and_names),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
