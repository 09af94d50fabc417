/* Unit tests for common/nbd-proto.c: handshake bytes, client flags, option
 * parsing and replies, request parsing and the validation table; for a
 * read-only export with structured replies (duplex-store serve): the
 * structured reply and metadata context options, BLOCK_STATUS validation,
 * the reply chunks and the extent collector. */
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
  .block_max = NBD_BLOCK_MAX,
  .name = "vol.img",
  .description = "duplex-primary volume /srv/vol.img",
};

/* A snapshot served read-only, as store/nbd-export.c exports it. */
#define RO_MAX (32u * 1024 * 1024)
static const uint16_t tflags_ro =
    NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_FLUSH |
    NBD_FLAG_SEND_DF | NBD_FLAG_CAN_MULTI_CONN;

static const struct nbd_export ro_export = {
  .size = SIZE,
  .tflags = tflags_ro,
  .block_max = RO_MAX,
  .structured = true,
  .name = "snapshot-7",
  .description = "duplex snapshot 7",
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
run_option_on(const struct nbd_export *exp, struct nbd_session *sess,
              uint32_t option, const uint8_t *payload, uint32_t len,
              struct evbuffer *out, char *why, size_t whylen)
{
  struct nbd_opt_hdr hdr = { .option = option, .length = len };
  static const uint8_t none[1];

  return nbd_proto_option(exp, sess, &hdr, payload != NULL ? payload : none,
                          out, why, whylen);
}

/* An option from a fresh client of the primary's export. */
static enum nbd_opt_result
run_option(uint32_t cflags, uint32_t option, const uint8_t *payload,
           uint32_t len, struct evbuffer *out, char *why, size_t whylen)
{
  struct nbd_session sess = { .cflags = cflags };
  enum nbd_opt_result res;

  res = run_option_on(&test_export, &sess, option, payload, len, out, why,
                      whylen);
  /* The primary offers nothing to negotiate. */
  assert_false(sess.structured);
  assert_false(sess.base_allocation);
  return res;
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
  struct nbd_session sess;
  char why[200];

  (void)state;
  for (size_t f = 0; f < 2; f++) {
    sess = (struct nbd_session){ .cflags = cflags[f] };
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
    assert_int_equal(nbd_proto_option_too_big(&h, &sess, out, why,
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
  struct nbd_session sess = { .cflags = NBD_FLAG_C_FIXED_NEWSTYLE };
  struct reply r;
  char why[200];

  (void)state;
  assert_int_equal(nbd_proto_option_too_big(&h, &sess, out, why, sizeof why),
                   NBD_OPT_NEXT);
  assert_non_null(strstr(why, "65537"));
  take_reply(out, &r);
  assert_int_equal(r.option, NBD_OPT_GO);
  assert_int_equal(r.type, NBD_REP_ERR_TOO_BIG);
  assert_int_equal(evbuffer_get_length(out), 0);

  /* EXPORT_NAME cannot be answered with an error: close */
  h.option = NBD_OPT_EXPORT_NAME;
  h.length = 0xffffffffu;
  assert_int_equal(nbd_proto_option_too_big(&h, &sess, out, why, sizeof why),
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
  const struct nbd_session sess = { .cflags = NBD_FLAG_C_FIXED_NEWSTYLE };
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
    got = nbd_proto_validate_request(&req, &test_export, &sess, why,
                                     sizeof why);
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
  const struct nbd_export bare = { .size = SIZE,
                                   .tflags = NBD_FLAG_HAS_FLAGS,
                                   .block_max = NBD_BLOCK_MAX };
  const struct nbd_export empty = { .size = 0, .tflags = tflags_all,
                                    .block_max = NBD_BLOCK_MAX };
  const struct nbd_session sess = { .cflags = NBD_FLAG_C_FIXED_NEWSTYLE };
  struct nbd_request req = { .type = NBD_CMD_FLUSH };
  char why[300];

  (void)state;
  /* commands and flags the export does not advertise */
  assert_int_equal(nbd_proto_validate_request(&req, &bare, &sess, why,
                                              sizeof why), NBD_EINVAL);
  req.type = NBD_CMD_TRIM;
  req.length = 512;
  assert_int_equal(nbd_proto_validate_request(&req, &bare, &sess, why,
                                              sizeof why), NBD_EINVAL);
  req.type = NBD_CMD_WRITE_ZEROES;
  assert_int_equal(nbd_proto_validate_request(&req, &bare, &sess, why,
                                              sizeof why), NBD_EINVAL);
  req.type = NBD_CMD_WRITE;
  req.flags = NBD_CMD_FLAG_FUA;
  assert_int_equal(nbd_proto_validate_request(&req, &bare, &sess, why,
                                              sizeof why), NBD_EINVAL);
  req.flags = 0;
  assert_int_equal(nbd_proto_validate_request(&req, &bare, &sess, why,
                                              sizeof why), 0);
  /* an empty export accepts nothing with a length */
  req.type = NBD_CMD_READ;
  assert_int_equal(nbd_proto_validate_request(&req, &empty, &sess, why,
                                              sizeof why), NBD_EINVAL);
}

/* ---- a read-only export with structured replies ---- */

/* LIST/SET_META_CONTEXT payload: export name, then the queries. */
static uint32_t
meta_payload(uint8_t *buf, const char *name, const char *const *q,
             uint32_t n)
{
  uint32_t len = (uint32_t)strlen(name), pos;

  put32(buf, len);
  memcpy(buf + 4, name, len);
  pos = 4 + len;
  put32(buf + pos, n);
  pos += 4;
  for (uint32_t i = 0; i < n; i++) {
    uint32_t ql = (uint32_t)strlen(q[i]);
    put32(buf + pos, ql);
    memcpy(buf + pos + 4, q[i], ql);
    pos += 4 + ql;
  }
  return pos;
}

/* Takes the replies to one META_CONTEXT option: the contexts announced
 * (0 or 1, base:allocation, with its id) and the final ACK. */
static int
take_meta_replies(struct evbuffer *out, uint32_t option, uint32_t *id)
{
  struct reply r;
  int n = 0;

  for (;;) {
    take_reply(out, &r);
    assert_int_equal(r.option, option);
    if (r.type == NBD_REP_ACK) {
      assert_int_equal(r.len, 0);
      break;
    }
    assert_int_equal(r.type, NBD_REP_META_CONTEXT);
    assert_int_equal(r.len, 4 + strlen(NBD_META_BASE_ALLOCATION));
    assert_memory_equal(r.data + 4, NBD_META_BASE_ALLOCATION,
                        strlen(NBD_META_BASE_ALLOCATION));
    *id = be32(r.data);
    n++;
  }
  assert_int_equal(evbuffer_get_length(out), 0);
  return n;
}

static void
test_structured_reply(void **state)
{
  struct nbd_session sess = { .cflags = NBD_FLAG_C_FIXED_NEWSTYLE };
  struct evbuffer *out = evbuffer_new();
  struct reply r;
  char why[200];

  (void)state;
  /* with data: refused, nothing negotiated */
  assert_int_equal(run_option_on(&ro_export, &sess, NBD_OPT_STRUCTURED_REPLY,
                                 (const uint8_t *)"x", 1, out, why,
                                 sizeof why), NBD_OPT_NEXT);
  assert_non_null(strstr(why, "NBD_OPT_STRUCTURED_REPLY"));
  take_reply(out, &r);
  assert_int_equal(r.type, NBD_REP_ERR_INVALID);
  assert_false(sess.structured);

  assert_int_equal(run_option_on(&ro_export, &sess, NBD_OPT_STRUCTURED_REPLY,
                                 NULL, 0, out, why, sizeof why),
                   NBD_OPT_NEXT);
  assert_string_equal(why, "");
  take_reply(out, &r);
  assert_int_equal(r.option, NBD_OPT_STRUCTURED_REPLY);
  assert_int_equal(r.type, NBD_REP_ACK);
  assert_int_equal(r.len, 0);
  assert_true(sess.structured);
  assert_int_equal(evbuffer_get_length(out), 0);

  /* twice: refused, still negotiated */
  assert_int_equal(run_option_on(&ro_export, &sess, NBD_OPT_STRUCTURED_REPLY,
                                 NULL, 0, out, why, sizeof why),
                   NBD_OPT_NEXT);
  assert_true(strlen(why) > 0);
  take_reply(out, &r);
  assert_int_equal(r.type, NBD_REP_ERR_INVALID);
  assert_true(sess.structured);
  assert_int_equal(evbuffer_get_length(out), 0);
  evbuffer_free(out);
}

static void
test_parse_opt_meta(void **state)
{
  static const char *const one[] = { "base:allocation" };
  static const char *const wild[] = { "base:" };
  static const char *const other[] = { "qemu:dirty-bitmap:b0", "x-a:b",
                                       "base:other", "base:allocationx",
                                       "BASE:allocation", "base" };
  static const char *const mixed[] = { "x-foo:bar", "base:allocation", "" };
  uint8_t b[512];
  struct nbd_opt_meta m;
  uint32_t len;
  char why[200];

  (void)state;
  len = meta_payload(b, "snap", one, 1);
  assert_int_equal(nbd_proto_parse_opt_meta(NBD_OPT_SET_META_CONTEXT, b, len,
                                            &m, why, sizeof why), 0);
  assert_int_equal(m.name_len, 4);
  assert_memory_equal(m.name, "snap", 4);
  assert_int_equal(m.n_queries, 1);
  assert_true(m.base_allocation);

  /* no query: LIST lists everything, SET selects nothing */
  len = meta_payload(b, "", NULL, 0);
  assert_int_equal(len, 8);
  assert_int_equal(nbd_proto_parse_opt_meta(NBD_OPT_LIST_META_CONTEXT, b, len,
                                            &m, why, sizeof why), 0);
  assert_true(m.base_allocation);
  assert_int_equal(nbd_proto_parse_opt_meta(NBD_OPT_SET_META_CONTEXT, b, len,
                                            &m, why, sizeof why), 0);
  assert_false(m.base_allocation);

  /* "base:" is a wildcard for LIST only */
  len = meta_payload(b, "", wild, 1);
  assert_int_equal(nbd_proto_parse_opt_meta(NBD_OPT_LIST_META_CONTEXT, b, len,
                                            &m, why, sizeof why), 0);
  assert_true(m.base_allocation);
  assert_int_equal(nbd_proto_parse_opt_meta(NBD_OPT_SET_META_CONTEXT, b, len,
                                            &m, why, sizeof why), 0);
  assert_false(m.base_allocation);

  /* unknown namespaces and leaf names are ignored, not errors */
  len = meta_payload(b, "x", other, 6);
  for (uint32_t opt = NBD_OPT_LIST_META_CONTEXT;
       opt <= NBD_OPT_SET_META_CONTEXT; opt++) {
    assert_int_equal(nbd_proto_parse_opt_meta(opt, b, len, &m, why,
                                              sizeof why), 0);
    assert_int_equal(m.n_queries, 6);
    assert_false(m.base_allocation);
  }
  len = meta_payload(b, "x", mixed, 3);
  assert_int_equal(nbd_proto_parse_opt_meta(NBD_OPT_SET_META_CONTEXT, b, len,
                                            &m, why, sizeof why), 0);
  assert_true(m.base_allocation);

  /* malformed */
  for (uint32_t l = 0; l < 8; l++)
    assert_int_equal(nbd_proto_parse_opt_meta(NBD_OPT_SET_META_CONTEXT, b, l,
                                              &m, why, sizeof why),
                     NBD_REP_ERR_INVALID);
  len = meta_payload(b, "snap", one, 1);
  put32(b, 5 + 4 + 4 + 15);           /* name swallows everything */
  assert_int_equal(nbd_proto_parse_opt_meta(NBD_OPT_SET_META_CONTEXT, b, len,
                                            &m, why, sizeof why),
                   NBD_REP_ERR_INVALID);
  assert_non_null(strstr(why, "name length"));
  put32(b, 0xfffffffcu);              /* and an overflow attempt */
  assert_int_equal(nbd_proto_parse_opt_meta(NBD_OPT_SET_META_CONTEXT, b, len,
                                            &m, why, sizeof why),
                   NBD_REP_ERR_INVALID);
  len = meta_payload(b, "snap", one, 1);
  put32(b + 8, 2);                    /* a second query that is missing */
  assert_int_equal(nbd_proto_parse_opt_meta(NBD_OPT_SET_META_CONTEXT, b, len,
                                            &m, why, sizeof why),
                   NBD_REP_ERR_INVALID);
  assert_non_null(strstr(why, "query 2 of 2"));
  put32(b + 8, 0xffffffffu);
  assert_int_equal(nbd_proto_parse_opt_meta(NBD_OPT_SET_META_CONTEXT, b, len,
                                            &m, why, sizeof why),
                   NBD_REP_ERR_INVALID);
  len = meta_payload(b, "snap", one, 1);
  put32(b + 12, 16);                  /* query longer than the data */
  assert_int_equal(nbd_proto_parse_opt_meta(NBD_OPT_SET_META_CONTEXT, b, len,
                                            &m, why, sizeof why),
                   NBD_REP_ERR_INVALID);
  put32(b + 12, 0xfffffff0u);
  assert_int_equal(nbd_proto_parse_opt_meta(NBD_OPT_SET_META_CONTEXT, b, len,
                                            &m, why, sizeof why),
                   NBD_REP_ERR_INVALID);
  len = meta_payload(b, "snap", one, 1);
  put32(b + 8, 0);                    /* bytes after the last query */
  assert_int_equal(nbd_proto_parse_opt_meta(NBD_OPT_SET_META_CONTEXT, b, len,
                                            &m, why, sizeof why),
                   NBD_REP_ERR_INVALID);
  assert_non_null(strstr(why, "after the last"));
}

static void
test_parse_opt_meta_long_query(void **state)
{
  static uint8_t b[8 + 4 + NBD_MAX_STRING + 1];
  struct nbd_opt_meta m;
  char why[200];

  (void)state;
  put32(b, 0);
  put32(b + 4, 1);
  put32(b + 8, NBD_MAX_STRING + 1);
  memset(b + 12, 'a', NBD_MAX_STRING + 1);
  assert_int_equal(nbd_proto_parse_opt_meta(NBD_OPT_LIST_META_CONTEXT, b,
                                            sizeof b, &m, why, sizeof why),
                   NBD_REP_ERR_INVALID);
  assert_non_null(strstr(why, "4097"));
}

static void
test_option_meta_context(void **state)
{
  static const char *const one[] = { "base:allocation" };
  static const char *const wild[] = { "base:" };
  static const char *const other[] = { "qemu:dirty-bitmap:b0" };
  struct nbd_session sess = { .cflags = NBD_FLAG_C_FIXED_NEWSTYLE };
  struct evbuffer *out = evbuffer_new();
  struct nbd_opt_hdr h;
  uint8_t b[256];
  struct reply r;
  uint32_t len, id;
  char why[200];

  (void)state;
  /* before structured replies: refused, and SET clears the selection */
  sess.base_allocation = true;
  len = meta_payload(b, "", one, 1);
  assert_int_equal(run_option_on(&ro_export, &sess, NBD_OPT_SET_META_CONTEXT,
                                 b, len, out, why, sizeof why), NBD_OPT_NEXT);
  assert_non_null(strstr(why, "NBD_OPT_STRUCTURED_REPLY"));
  take_reply(out, &r);
  assert_int_equal(r.type, NBD_REP_ERR_INVALID);
  assert_true(r.len > 0);
  assert_false(sess.base_allocation);
  assert_int_equal(run_option_on(&ro_export, &sess, NBD_OPT_LIST_META_CONTEXT,
                                 b, len, out, why, sizeof why), NBD_OPT_NEXT);
  take_reply(out, &r);
  assert_int_equal(r.type, NBD_REP_ERR_INVALID);
  assert_int_equal(evbuffer_get_length(out), 0);

  sess.structured = true;
  /* LIST: everything, the wildcard, the name; id 0 (reserved) */
  len = meta_payload(b, "", NULL, 0);
  assert_int_equal(run_option_on(&ro_export, &sess, NBD_OPT_LIST_META_CONTEXT,
                                 b, len, out, why, sizeof why), NBD_OPT_NEXT);
  assert_string_equal(why, "");
  id = 99;
  assert_int_equal(take_meta_replies(out, NBD_OPT_LIST_META_CONTEXT, &id), 1);
  assert_int_equal(id, 0);
  len = meta_payload(b, "any", wild, 1);
  run_option_on(&ro_export, &sess, NBD_OPT_LIST_META_CONTEXT, b, len, out,
                why, sizeof why);
  assert_int_equal(take_meta_replies(out, NBD_OPT_LIST_META_CONTEXT, &id), 1);
  len = meta_payload(b, "any", other, 1);
  run_option_on(&ro_export, &sess, NBD_OPT_LIST_META_CONTEXT, b, len, out,
                why, sizeof why);
  assert_int_equal(take_meta_replies(out, NBD_OPT_LIST_META_CONTEXT, &id), 0);
  assert_false(sess.base_allocation); /* LIST selects nothing */

  /* SET base:allocation: announced with its id, selected */
  len = meta_payload(b, "snapshot-7", one, 1);
  assert_int_equal(run_option_on(&ro_export, &sess, NBD_OPT_SET_META_CONTEXT,
                                 b, len, out, why, sizeof why), NBD_OPT_NEXT);
  assert_string_equal(why, "");
  assert_int_equal(take_meta_replies(out, NBD_OPT_SET_META_CONTEXT, &id), 1);
  assert_int_equal(id, NBD_META_ID_BASE_ALLOCATION);
  assert_true(sess.base_allocation);

  /* a later SET replaces the selection: nothing, then invalid */
  len = meta_payload(b, "", wild, 1);
  run_option_on(&ro_export, &sess, NBD_OPT_SET_META_CONTEXT, b, len, out, why,
                sizeof why);
  assert_int_equal(take_meta_replies(out, NBD_OPT_SET_META_CONTEXT, &id), 0);
  assert_false(sess.base_allocation);
  len = meta_payload(b, "", one, 1);
  run_option_on(&ro_export, &sess, NBD_OPT_SET_META_CONTEXT, b, len, out, why,
                sizeof why);
  assert_int_equal(take_meta_replies(out, NBD_OPT_SET_META_CONTEXT, &id), 1);
  assert_true(sess.base_allocation);
  assert_int_equal(run_option_on(&ro_export, &sess, NBD_OPT_SET_META_CONTEXT,
                                 b, len - 1, out, why, sizeof why),
                   NBD_OPT_NEXT);
  assert_true(strlen(why) > 0);
  take_reply(out, &r);
  assert_int_equal(r.type, NBD_REP_ERR_INVALID);
  assert_false(sess.base_allocation);

  /* too big to read: refused, and the selection is gone too */
  sess.base_allocation = true;
  h.option = NBD_OPT_SET_META_CONTEXT;
  h.length = NBD_MAX_OPTION + 1;
  assert_int_equal(nbd_proto_option_too_big(&h, &sess, out, why, sizeof why),
                   NBD_OPT_NEXT);
  take_reply(out, &r);
  assert_int_equal(r.type, NBD_REP_ERR_TOO_BIG);
  assert_false(sess.base_allocation);
  assert_int_equal(evbuffer_get_length(out), 0);
  evbuffer_free(out);
}

/* The transmission flags and block size a client of the read-only export
 * gets: SEND_DF only with structured replies; the export's maximum. */
static void
test_option_go_structured(void **state)
{
  struct nbd_session sess = { .cflags = NBD_FLAG_C_FIXED_NEWSTYLE |
                                        NBD_FLAG_C_NO_ZEROES };
  struct evbuffer *out = evbuffer_new();
  uint8_t b[64];
  struct reply r;
  uint32_t len = go_payload(b, "", NULL, 0);
  uint16_t tflags;
  char why[200];
  int pass;

  (void)state;
  for (pass = 0; pass < 2; pass++) {
    assert_int_equal(run_option_on(&ro_export, &sess, NBD_OPT_INFO, b, len,
                                   out, why, sizeof why), NBD_OPT_NEXT);
    tflags = 0;
    for (;;) {
      take_reply(out, &r);
      if (r.type == NBD_REP_ACK)
        break;
      assert_int_equal(r.type, NBD_REP_INFO);
      if (be16(r.data) == NBD_INFO_EXPORT) {
        tflags = be16(r.data + 10);
      } else if (be16(r.data) == NBD_INFO_BLOCK_SIZE) {
        assert_int_equal(be32(r.data + 2), 1);
        assert_int_equal(be32(r.data + 6), 4096);
        assert_int_equal(be32(r.data + 10), RO_MAX);
      }
    }
    assert_int_equal(tflags, pass == 0 ? tflags_ro & ~NBD_FLAG_SEND_DF
                                       : tflags_ro);
    assert_true(tflags & NBD_FLAG_READ_ONLY);
    /* the same for EXPORT_NAME */
    assert_int_equal(run_option_on(&ro_export, &sess, NBD_OPT_EXPORT_NAME,
                                   NULL, 0, out, why, sizeof why),
                     NBD_OPT_TRANSMISSION);
    assert_int_equal(evbuffer_get_length(out), 10);
    evbuffer_remove(out, b + 32, 10);
    assert_int_equal(be16(b + 40), tflags);
    run_option_on(&ro_export, &sess, NBD_OPT_STRUCTURED_REPLY, NULL, 0, out,
                  why, sizeof why);
    take_reply(out, &r);
  }
  assert_int_equal(nbd_proto_session_tflags(&test_export, &sess),
                   tflags_all);
  evbuffer_free(out);
}

static void
test_validate_read_only(void **state)
{
  static const struct {
    const char *what;
    int sess;        /* 0 plain, 1 structured, 2 structured + context */
    uint16_t type, flags;
    uint64_t off;
    uint32_t len;
    uint32_t want;
  } cases[] = {
    { "read", 0, NBD_CMD_READ, 0, 0, 4096, 0 },
    { "read 32 MiB", 0, NBD_CMD_READ, 0, 0, RO_MAX, 0 },
    { "read 32 MiB + 1", 0, NBD_CMD_READ, 0, 0, RO_MAX + 1, NBD_EINVAL },
    { "read 64 MiB", 2, NBD_CMD_READ, 0, 0, 64u << 20, NBD_EINVAL },
    { "read past end", 2, NBD_CMD_READ, 0, SIZE - 1, 2, NBD_EINVAL },
    { "read DF, plain", 0, NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 4096,
      NBD_EINVAL },
    { "read DF, structured", 1, NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 4096, 0 },
    { "read FUA", 2, NBD_CMD_READ, NBD_CMD_FLAG_FUA, 0, 4096, NBD_EINVAL },
    { "read REQ_ONE", 2, NBD_CMD_READ, NBD_CMD_FLAG_REQ_ONE, 0, 4096,
      NBD_EINVAL },
    { "write", 0, NBD_CMD_WRITE, 0, 0, 4096, NBD_EPERM },
    { "write FUA", 2, NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 0, 4096, NBD_EPERM },
    { "write past end", 0, NBD_CMD_WRITE, 0, SIZE, 4096, NBD_EPERM },
    { "write 4 GiB - 1", 0, NBD_CMD_WRITE, 0, 0, UINT32_MAX, NBD_EPERM },
    { "write zero length", 0, NBD_CMD_WRITE, 0, 0, 0, NBD_EPERM },
    { "trim", 1, NBD_CMD_TRIM, 0, 0, 4096, NBD_EPERM },
    { "zero", 2, NBD_CMD_WRITE_ZEROES, 0, 0, 4096, NBD_EPERM },
    { "flush", 0, NBD_CMD_FLUSH, 0, 0, 0, 0 },
    { "flush length", 0, NBD_CMD_FLUSH, 0, 0, 1, NBD_EINVAL },
    { "cache", 2, NBD_CMD_CACHE, 0, 0, 4096, NBD_EINVAL },
    { "status, plain", 0, NBD_CMD_BLOCK_STATUS, 0, 0, 4096, NBD_EINVAL },
    { "status, no context", 1, NBD_CMD_BLOCK_STATUS, 0, 0, 4096,
      NBD_EINVAL },
    { "status", 2, NBD_CMD_BLOCK_STATUS, 0, 0, 4096, 0 },
    { "status REQ_ONE", 2, NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_REQ_ONE, 4096,
      1, 0 },
    { "status whole export", 2, NBD_CMD_BLOCK_STATUS, 0, 0, (uint32_t)SIZE,
      0 },
    { "status 4 GiB - 1", 2, NBD_CMD_BLOCK_STATUS, 0, 0, UINT32_MAX,
      NBD_EINVAL },
    { "status to the end", 2, NBD_CMD_BLOCK_STATUS, 0, SIZE - 512, 512, 0 },
    { "status past end", 2, NBD_CMD_BLOCK_STATUS, 0, SIZE - 512, 1024,
      NBD_EINVAL },
    { "status beyond", 2, NBD_CMD_BLOCK_STATUS, 0, UINT64_MAX, 1,
      NBD_EINVAL },
    { "status zero length", 2, NBD_CMD_BLOCK_STATUS, 0, 0, 0, NBD_EINVAL },
    { "status FUA", 2, NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_FUA, 0, 4096,
      NBD_EINVAL },
    { "status DF", 2, NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_DF, 0, 4096,
      NBD_EINVAL },
    { "unknown command", 2, 9, 0, 0, 4096, NBD_EINVAL },
  };
  const struct nbd_session sessions[] = {
    { .cflags = NBD_FLAG_C_FIXED_NEWSTYLE },
    { .cflags = NBD_FLAG_C_FIXED_NEWSTYLE, .structured = true },
    { .cflags = NBD_FLAG_C_FIXED_NEWSTYLE, .structured = true,
      .base_allocation = true },
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
    got = nbd_proto_validate_request(&req, &ro_export,
                                     &sessions[cases[i].sess], why,
                                     sizeof why);
    if (got != cases[i].want)
      fail_msg("%s: got %u, want %u (%s)", cases[i].what, got, cases[i].want,
               why);
    if (got != 0)
      assert_true(strlen(why) > 10);
    else
      assert_string_equal(why, "");
  }
  /* the primary's export knows no BLOCK_STATUS, whatever the session */
  req = (struct nbd_request){ .type = NBD_CMD_BLOCK_STATUS, .length = 512 };
  assert_int_equal(nbd_proto_validate_request(&req, &test_export,
                                              &sessions[2], why, sizeof why),
                   NBD_EINVAL);
  assert_non_null(strstr(why, "unsupported"));
}

static void
test_chunks(void **state)
{
  static const uint8_t want_hdr[NBD_CHUNK_HDR_LEN] = {
    0x66, 0x8e, 0x33, 0xef, 0x00, 0x01, 0x80, 0x01,
    1, 2, 3, 4, 5, 6, 7, 8, 0x00, 0x00, 0x01, 0x00,
  };
  struct evbuffer *out = evbuffer_new();
  uint8_t b[NBD_CHUNK_HDR_LEN + 6 + NBD_MAX_STRING + 16];
  char longmsg[NBD_MAX_STRING + 100];

  (void)state;
  nbd_proto_build_chunk_hdr(b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR,
                            0x0102030405060708ull, 256);
  assert_memory_equal(b, want_hdr, sizeof want_hdr);

  nbd_proto_build_data_chunk_hdr(b, 0, 42, 0x1122334455667788ull, 4096);
  assert_int_equal(be32(b), NBD_STRUCTURED_REPLY_MAGIC);
  assert_int_equal(be16(b + 4), 0);
  assert_int_equal(be16(b + 6), NBD_REPLY_TYPE_OFFSET_DATA);
  assert_int_equal(be64(b + 8), 42);
  assert_int_equal(be32(b + 16), 8 + 4096);
  assert_int_equal(be64(b + 20), 0x1122334455667788ull);

  assert_int_equal(nbd_proto_chunk_done(out, 7), 0);
  assert_int_equal(evbuffer_get_length(out), NBD_CHUNK_HDR_LEN);
  evbuffer_remove(out, b, NBD_CHUNK_HDR_LEN);
  assert_int_equal(be32(b), NBD_STRUCTURED_REPLY_MAGIC);
  assert_int_equal(be16(b + 4), NBD_REPLY_FLAG_DONE);
  assert_int_equal(be16(b + 6), NBD_REPLY_TYPE_NONE);
  assert_int_equal(be64(b + 8), 7);
  assert_int_equal(be32(b + 16), 0);

  assert_int_equal(nbd_proto_chunk_error(out, NBD_REPLY_FLAG_DONE, 9,
                                         NBD_EIO, "block 3 is damaged"), 0);
  assert_int_equal(evbuffer_get_length(out), NBD_CHUNK_HDR_LEN + 6 + 18);
  evbuffer_remove(out, b, NBD_CHUNK_HDR_LEN + 6 + 18);
  assert_int_equal(be16(b + 4), NBD_REPLY_FLAG_DONE);
  assert_int_equal(be16(b + 6), NBD_REPLY_TYPE_ERROR);
  assert_int_equal(be32(b + 16), 6 + 18);
  assert_int_equal(be32(b + 20), NBD_EIO);
  assert_int_equal(be16(b + 24), 18);
  assert_memory_equal(b + 26, "block 3 is damaged", 18);

  /* no message; a message over the string limit is cut */
  nbd_proto_chunk_error(out, 0, 9, NBD_EINVAL, NULL);
  assert_int_equal(evbuffer_get_length(out), NBD_CHUNK_HDR_LEN + 6);
  evbuffer_remove(out, b, NBD_CHUNK_HDR_LEN + 6);
  assert_int_equal(be32(b + 16), 6);
  assert_int_equal(be16(b + 24), 0);
  memset(longmsg, 'e', sizeof longmsg - 1);
  longmsg[sizeof longmsg - 1] = '\0';
  nbd_proto_chunk_error(out, 0, 9, NBD_EINVAL, longmsg);
  assert_int_equal(evbuffer_get_length(out),
                   NBD_CHUNK_HDR_LEN + 6 + NBD_MAX_STRING);
  evbuffer_remove(out, b, NBD_CHUNK_HDR_LEN + 6 + NBD_MAX_STRING);
  assert_int_equal(be16(b + 24), NBD_MAX_STRING);
  evbuffer_free(out);
}

/* Runs a source's stretches through the collector for one request;
 * returns the add() result of the last stretch taken. */
struct stretch {
  uint64_t off, len;
  uint32_t flags;
};

static int
collect(struct nbd_extents *x, const struct stretch *st, size_t n,
        size_t *taken)
{
  char why[200];
  int rc = 0;

  for (*taken = 0; *taken < n; (*taken)++) {
    rc = nbd_proto_extents_add(x, st[*taken].off, st[*taken].len,
                               st[*taken].flags, why, sizeof why);
    if (rc != 0)
      break;
  }
  if (rc < 0)
    assert_true(strlen(why) > 10);
  return rc;
}

static void
test_extents(void **state)
{
  const uint32_t Z = NBD_STATE_HOLE | NBD_STATE_ZERO;
  /* 4 KiB blocks: data data zero zero data, then zero to 1 MiB */
  static const struct stretch src[] = {
    { 0, 4096, 0 }, { 4096, 4096, 0 },
    { 8192, 8192, NBD_STATE_HOLE | NBD_STATE_ZERO },
    { 16384, 4096, 0 },
    { 20480, 1048576 - 20480, NBD_STATE_HOLE | NBD_STATE_ZERO },
  };
  struct nbd_extent arr[8];
  struct nbd_extents x;
  struct nbd_request req = { .type = NBD_CMD_BLOCK_STATUS };
  size_t taken;

  (void)state;
  /* whole range: neighbours merge; the last one is cut at the end */
  req.offset = 0;
  req.length = 65536;
  nbd_proto_extents_init(&x, &req, arr, 8);
  assert_int_equal(collect(&x, src, 5, &taken), 1);
  assert_int_equal(taken, 4);
  assert_int_equal(x.n, 4);
  assert_int_equal(arr[0].length, 8192);
  assert_int_equal(arr[0].flags, 0);
  assert_int_equal(arr[1].length, 8192);
  assert_int_equal(arr[1].flags, Z);
  assert_int_equal(arr[2].length, 4096);
  assert_int_equal(arr[3].length, 65536 - 20480);
  assert_int_equal(arr[3].flags, Z);

  /* unaligned start and end inside stretches: cut at both ends */
  req.offset = 5000;
  req.length = 10000;
  nbd_proto_extents_init(&x, &req, arr, 8);
  assert_int_equal(collect(&x, src + 1, 4, &taken), 1);
  assert_int_equal(x.n, 2);
  assert_int_equal(arr[0].length, 8192 - 5000);
  assert_int_equal(arr[1].length, 15000 - 8192);
  assert_int_equal(arr[0].length + arr[1].length, 10000);

  /* REQ_ONE: one extent, merged as far as the status holds */
  req.offset = 0;
  req.length = 65536;
  req.flags = NBD_CMD_FLAG_REQ_ONE;
  nbd_proto_extents_init(&x, &req, arr, 8);
  assert_int_equal(collect(&x, src, 5, &taken), 1);
  assert_int_equal(taken, 2);             /* the zero stretch ends it */
  assert_int_equal(x.n, 1);
  assert_int_equal(arr[0].length, 8192);
  req.offset = 12288;
  req.length = 1;
  nbd_proto_extents_init(&x, &req, arr, 8);
  assert_int_equal(collect(&x, src + 2, 3, &taken), 1);
  assert_int_equal(x.n, 1);
  assert_int_equal(arr[0].length, 1);
  assert_int_equal(arr[0].flags, Z);
  req.flags = 0;

  /* at most max extents: a shorter reply */
  req.offset = 0;
  req.length = 65536;
  nbd_proto_extents_init(&x, &req, arr, 2);
  assert_int_equal(collect(&x, src, 5, &taken), 1);
  assert_int_equal(taken, 3);
  assert_int_equal(x.n, 2);
  assert_int_equal(arr[0].length + arr[1].length, 16384);
  /* complete: anything more is not taken */
  assert_int_equal(nbd_proto_extents_add(&x, 16384, 4096, 0, NULL, 0), 1);
  assert_int_equal(x.n, 2);

  /* a source that skips, steps back, or says nothing is wrong */
  {
    static const struct stretch gap[] = { { 0, 4096, 0 }, { 8192, 4096, 0 } };
    static const struct stretch back[] = { { 0, 8192, 0 },
                                           { 4096, 4096, Z } };
    static const struct stretch late[] = { { 4096, 4096, 0 } };
    static const struct stretch empty[] = { { 0, 0, 0 } };
    static const struct stretch wrap[] = { { 0, UINT64_MAX, 0 },
                                           { UINT64_MAX, 2, 0 } };

    nbd_proto_extents_init(&x, &req, arr, 8);
    assert_int_equal(collect(&x, gap, 2, &taken), -1);
    assert_int_equal(taken, 1);
    nbd_proto_extents_init(&x, &req, arr, 8);
    assert_int_equal(collect(&x, back, 2, &taken), -1);
    nbd_proto_extents_init(&x, &req, arr, 8);
    assert_int_equal(collect(&x, late, 1, &taken), -1);
    assert_int_equal(x.n, 0);
    nbd_proto_extents_init(&x, &req, arr, 8);
    assert_int_equal(collect(&x, empty, 1, &taken), -1);
    req.offset = UINT64_MAX - 10;
    req.length = 5;
    nbd_proto_extents_init(&x, &req, arr, 8);
    assert_int_equal(collect(&x, wrap, 2, &taken), 1);
    assert_int_equal(arr[0].length, 5);
    req.offset = UINT64_MAX;
    req.length = 5;                     /* wraps: saturated, empty */
    nbd_proto_extents_init(&x, &req, arr, 8);
    assert_int_equal(collect(&x, wrap + 1, 1, &taken), 1);
    assert_int_equal(x.n, 0);
  }
}

static void
test_chunk_block_status(void **state)
{
  struct nbd_extent arr[3] = { { 8192, 0 },
                               { 4096, NBD_STATE_HOLE | NBD_STATE_ZERO },
                               { 1, 0 } };
  struct nbd_extents x = { .e = arr, .n = 3, .max = 3 };
  struct evbuffer *out = evbuffer_new();
  uint8_t b[NBD_CHUNK_HDR_LEN + 4 + 24];

  (void)state;
  assert_int_equal(nbd_proto_chunk_block_status(out, NBD_REPLY_FLAG_DONE,
                                                0xabcdull,
                                                NBD_META_ID_BASE_ALLOCATION,
                                                &x), 0);
  assert_int_equal(evbuffer_get_length(out), sizeof b);
  evbuffer_remove(out, b, sizeof b);
  assert_int_equal(be32(b), NBD_STRUCTURED_REPLY_MAGIC);
  assert_int_equal(be16(b + 4), NBD_REPLY_FLAG_DONE);
  assert_int_equal(be16(b + 6), NBD_REPLY_TYPE_BLOCK_STATUS);
  assert_int_equal(be64(b + 8), 0xabcd);
  assert_int_equal(be32(b + 16), 4 + 24);
  assert_int_equal(be32(b + 20), NBD_META_ID_BASE_ALLOCATION);
  assert_int_equal(be32(b + 24), 8192);
  assert_int_equal(be32(b + 28), 0);
  assert_int_equal(be32(b + 32), 4096);
  assert_int_equal(be32(b + 36), 3);
  assert_int_equal(be32(b + 40), 1);
  assert_int_equal(be32(b + 44), 0);
  evbuffer_free(out);
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
    cmocka_unit_test(test_structured_reply),
    cmocka_unit_test(test_parse_opt_meta),
    cmocka_unit_test(test_parse_opt_meta_long_query),
    cmocka_unit_test(test_option_meta_context),
    cmocka_unit_test(test_option_go_structured),
    cmocka_unit_test(test_validate_read_only),
    cmocka_unit_test(test_chunks),
    cmocka_unit_test(test_extents),
    cmocka_unit_test(test_chunk_block_status),
    cmocka_unit_test(test_errno_map),
    cmocka_unit_test(test_simple_reply),
    cmocka_unit_test(test_tflags_and_names),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
