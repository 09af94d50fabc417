/* libFuzzer target for the NBD parsers in common/nbd-proto.c.
 *
 * The input is an export size (8 bytes), a byte choosing the export (bit
 * 0: the read-only snapshot export of duplex-store serve, with structured
 * replies and base:allocation; else the primary's), then what a client
 * would send: client flags, options, then transmission requests with their
 * WRITE payloads.  It is fed through the same steps primary/nbd-server.c
 * and store/nbd-export.c take, and every answer is checked: option replies
 * must be well formed, the session must only hold what was acknowledged, a
 * request that validates must lie inside the export and within the size
 * limits.  A valid BLOCK_STATUS runs the extent collector over stretches
 * made from the bytes that follow it, and its reply chunk is checked. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "nbd-proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "fuzz-nbd: check failed: %s (line %d)\n", #cond,         \
              __LINE__);                                                       \
      abort();                                                                 \
    }                                                                          \
  } while (0)

static uint32_t
fuzz_be32(const uint8_t *p)
{
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
         p[3];
}

static uint64_t
fuzz_be64(const uint8_t *p)
{
  return (uint64_t)fuzz_be32(p) << 32 | fuzz_be32(p + 4);
}

/* Every option reply in out is well formed; for an accepted INFO/GO the
 * export information precedes the ACK; a metadata context is announced
 * only as base:allocation, with id 0 for LIST and the selected id for
 * SET. */
static void
fuzz_check_replies(struct evbuffer *out, uint32_t option,
                   enum nbd_opt_result res, const struct nbd_export *exp,
                   const struct nbd_session *sess)
{
  uint32_t cflags = sess->cflags;
  size_t len = evbuffer_get_length(out);
  const uint8_t *p = evbuffer_pullup(out, -1);
  bool saw_export = false, saw_ack = false;
  size_t off = 0, n_meta = 0;

  if (option == NBD_OPT_EXPORT_NAME && res == NBD_OPT_TRANSMISSION) {
    CHECK(len == ((cflags & NBD_FLAG_C_NO_ZEROES) ? 10u : 134u));
    return;
  }
  if (res == NBD_OPT_CLOSE && (option == NBD_OPT_EXPORT_NAME ||
                                !(cflags & NBD_FLAG_C_FIXED_NEWSTYLE))) {
    /* No reply exists: EXPORT_NAME refused, or a non-fixed client. */
    CHECK(len == 0);
    return;
  }
  /* A non-fixed client gets no option reply at all. */
  CHECK(option == NBD_OPT_EXPORT_NAME ||
        (cflags & NBD_FLAG_C_FIXED_NEWSTYLE));
  CHECK(len > 0);
  while (off < len) {
    uint32_t type, rlen;

    CHECK(len - off >= NBD_OPT_REPLY_HDR_LEN);
    CHECK(fuzz_be64(p + off) == NBD_REP_MAGIC);
    CHECK(fuzz_be32(p + off + 8) == option);
    type = fuzz_be32(p + off + 12);
    rlen = fuzz_be32(p + off + 16);
    CHECK(len - off - NBD_OPT_REPLY_HDR_LEN >= rlen);
    CHECK(!saw_ack);
    if (type == NBD_REP_INFO) {
      CHECK(rlen >= 2);
      if (p[off + 20] == 0 && p[off + 21] == NBD_INFO_EXPORT) {
        uint16_t tflags = (uint16_t)(p[off + 30] << 8 | p[off + 31]);
        CHECK(rlen == 12);
        CHECK(fuzz_be64(p + off + 22) == exp->size);
        CHECK(tflags == nbd_proto_session_tflags(exp, sess));
        CHECK(!(tflags & NBD_FLAG_SEND_DF) || sess->structured);
        saw_export = true;
      }
      if (p[off + 20] == 0 && p[off + 21] == NBD_INFO_BLOCK_SIZE) {
        CHECK(rlen == 14);
        CHECK(fuzz_be32(p + off + 30) == exp->block_max);
      }
    }
    if (type == NBD_REP_META_CONTEXT) {
      static const char name[] = NBD_META_BASE_ALLOCATION;
      CHECK(exp->structured && sess->structured);
      CHECK(option == NBD_OPT_LIST_META_CONTEXT ||
            option == NBD_OPT_SET_META_CONTEXT);
      CHECK(rlen == 4 + sizeof name - 1);
      CHECK(memcmp(p + off + 24, name, sizeof name - 1) == 0);
      CHECK(fuzz_be32(p + off + 20) ==
            (option == NBD_OPT_SET_META_CONTEXT ? NBD_META_ID_BASE_ALLOCATION
                                                : 0));
      n_meta++;
    }
    if (type == NBD_REP_ACK) {
      CHECK(rlen == 0);
      saw_ack = true;
    }
    if (type & NBD_REP_FLAG_ERROR)
      CHECK(res == NBD_OPT_NEXT && off + NBD_OPT_REPLY_HDR_LEN + rlen == len);
    off += NBD_OPT_REPLY_HDR_LEN + rlen;
  }
  if (saw_ack && (option == NBD_OPT_GO || option == NBD_OPT_INFO))
    CHECK(saw_export);
  if (res == NBD_OPT_TRANSMISSION)
    CHECK(saw_ack && saw_export);
  CHECK(n_meta <= 1);
  if (option == NBD_OPT_SET_META_CONTEXT)
    CHECK(sess->base_allocation == (saw_ack && n_meta == 1));
  if (option == NBD_OPT_STRUCTURED_REPLY && saw_ack)
    CHECK(sess->structured);
}

/* What a session may hold: only what the export offers, a context only
 * with structured replies. */
static void
fuzz_check_session(const struct nbd_export *exp,
                   const struct nbd_session *sess)
{
  CHECK(!sess->structured || exp->structured);
  CHECK(!sess->base_allocation || sess->structured);
}

static void
fuzz_check_request(const struct nbd_request *req,
                   const struct nbd_export *exp,
                   const struct nbd_session *sess, uint32_t err,
                   const char *why)
{
  bool ro = (exp->tflags & NBD_FLAG_READ_ONLY) != 0;
  bool write = req->type == NBD_CMD_WRITE || req->type == NBD_CMD_TRIM ||
               req->type == NBD_CMD_WRITE_ZEROES;
  uint16_t ok_flags = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE;

  CHECK(strlen(why) < 300);
  if (err != 0) {
    CHECK(err == NBD_EINVAL || err == NBD_ENOSPC || err == NBD_EPERM);
    /* EPERM exactly for writes to a read-only export */
    CHECK((err == NBD_EPERM) == (ro && write));
    CHECK(why[0] != '\0');
    return;
  }
  CHECK(!(ro && write));
  switch (req->type) {
  case NBD_CMD_FLUSH:
    CHECK(req->offset == 0 && req->length == 0);
    return;
  case NBD_CMD_BLOCK_STATUS:
    CHECK(exp->structured && sess->structured && sess->base_allocation);
    ok_flags = NBD_CMD_FLAG_REQ_ONE;
    goto range;
  case NBD_CMD_READ:
    if (req->flags & NBD_CMD_FLAG_DF)
      CHECK(sess->structured && (exp->tflags & NBD_FLAG_SEND_DF));
    ok_flags |= NBD_CMD_FLAG_DF;
    /* fall through */
  case NBD_CMD_WRITE:
    CHECK(req->length <= exp->block_max);
    /* fall through */
  case NBD_CMD_TRIM:
  case NBD_CMD_WRITE_ZEROES:
  range:
    CHECK(req->length > 0);
    CHECK(req->offset < exp->size);
    CHECK(req->length <= exp->size - req->offset);
    CHECK((req->flags & ~ok_flags) == 0);
    if (req->type != NBD_CMD_WRITE_ZEROES)
      CHECK(!(req->flags & NBD_CMD_FLAG_NO_HOLE));
    return;
  default:
    CHECK(!"an unsupported command validated");
  }
}

/* A valid BLOCK_STATUS: stretches from the input bytes `src` (each byte:
 * bit 0 the status, the rest a length in 4 KiB blocks, 0 meaning a 1-byte
 * stretch) starting at the request's offset rounded down to 4 KiB, as a
 * snapshot source gives them.  The reply must stay inside the request,
 * describe something, and hold one extent with REQ_ONE. */
static void
fuzz_block_status(const struct nbd_request *req, const uint8_t *src,
                  size_t n, struct evbuffer *out)
{
  struct nbd_extent arr[16];
  struct nbd_extents x;
  uint64_t at = req->offset & ~(uint64_t)4095, sum = 0;
  uint32_t max = 1 + (n > 0 ? src[0] % 16 : 15);
  char why[300];
  int rc = 0;

  nbd_proto_extents_init(&x, req, arr, max);
  for (size_t i = 0; rc == 0; i++) {
    uint64_t len = i < n ? (uint64_t)(src[i] >> 1) * 4096 : 0;
    uint32_t flags = i < n && (src[i] & 1)
                         ? NBD_STATE_HOLE | NBD_STATE_ZERO : 0;
    if (len == 0)
      len = i < n ? 1 : x.end - at;   /* then the rest in one */
    if (len > x.end - at)
      len = x.end - at;
    if (at + len <= req->offset)      /* the first holds the offset */
      len = req->offset - at + 1;
    rc = nbd_proto_extents_add(&x, at, len, flags, why, sizeof why);
    CHECK(rc >= 0);
    at += len;
  }
  CHECK(x.n >= 1 && x.n <= max);
  if (x.req_one)
    CHECK(x.n == 1);
  for (uint32_t i = 0; i < x.n; i++) {
    CHECK(arr[i].length > 0);
    if (i > 0)
      CHECK(arr[i].flags != arr[i - 1].flags);
    sum += arr[i].length;
  }
  CHECK(sum <= req->length);
  CHECK(x.next == req->offset + sum);
  if (!x.req_one && x.n < max)
    CHECK(sum == req->length);
  /* a gap is refused */
  if (x.next < x.end)
    CHECK(nbd_proto_extents_add(&x, x.next + 1, 1, 0, why, sizeof why) ==
          -1);
  evbuffer_drain(out, evbuffer_get_length(out));
  CHECK(nbd_proto_chunk_block_status(out, NBD_REPLY_FLAG_DONE, req->cookie,
                                     NBD_META_ID_BASE_ALLOCATION, &x) == 0);
  CHECK(evbuffer_get_length(out) == NBD_CHUNK_HDR_LEN + 4 + 8 * x.n);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct nbd_export exp = {
    .tflags = nbd_proto_tflags(),
    .block_max = NBD_BLOCK_MAX,
    .name = "fuzz.img",
    .description = "fuzz export",
  };
  struct nbd_session sess = { 0 };
  struct evbuffer *out = evbuffer_new();
  struct nbd_opt_hdr hdr;
  struct nbd_opt_meta meta;
  struct nbd_request req;
  enum nbd_opt_result res;
  uint32_t err;
  char why[300];
  size_t pos = 0;
  bool transmission = false;

  if (out == NULL)
    abort();
  if (size < 9 + NBD_CLIENT_FLAGS_LEN)
    goto out;
  /* Sizes around the interesting edges: small, 2^63 and 2^64-1. */
  exp.size = fuzz_be64(data);
  if (data[8] & 1) {
    /* store/nbd-export.c's snapshot export */
    exp.tflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY |
                 NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_DF |
                 NBD_FLAG_CAN_MULTI_CONN;
    exp.block_max = 32u << 20;
    exp.structured = true;
  }
  pos = 9;
  if (nbd_proto_parse_client_flags(data + pos, &sess.cflags, why,
                                   sizeof why) != 0) {
    CHECK(why[0] != '\0');
    /* carry on with a sane value so options still get exercised */
    sess.cflags = data[pos + 3] &
                  (NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  }
  pos += NBD_CLIENT_FLAGS_LEN;

  while (!transmission && size - pos >= NBD_OPT_HDR_LEN) {
    if (nbd_proto_parse_opt_hdr(data + pos, &hdr, why, sizeof why) != 0) {
      /* The server closes here; skip the magic to keep fuzzing options. */
      CHECK(why[0] != '\0');
      memset(&hdr, 0, sizeof hdr);
      hdr.option = fuzz_be32(data + pos + 8);
      hdr.length = fuzz_be32(data + pos + 12);
    }
    pos += NBD_OPT_HDR_LEN;
    evbuffer_drain(out, evbuffer_get_length(out));
    if (hdr.length > NBD_MAX_OPTION) {
      res = nbd_proto_option_too_big(&hdr, &sess, out, why, sizeof why);
      CHECK(why[0] != '\0');
      fuzz_check_session(&exp, &sess);
      if (hdr.option == NBD_OPT_SET_META_CONTEXT)
        CHECK(!sess.base_allocation);
      if (res == NBD_OPT_NEXT)
        fuzz_check_replies(out, hdr.option, res, &exp, &sess);
      else
        CHECK(hdr.option == NBD_OPT_EXPORT_NAME ||
              !(sess.cflags & NBD_FLAG_C_FIXED_NEWSTYLE));
      /* the payload is skipped: clamp to what we have */
      pos += hdr.length < size - pos ? hdr.length : size - pos;
      continue;
    }
    if (hdr.length > size - pos)
      break;
    {
      /* A private copy, so ASan sees reads past the payload. */
      uint8_t *payload = malloc(hdr.length ? hdr.length : 1);
      if (payload == NULL)
        abort();
      struct nbd_session before = sess;
      memcpy(payload, data + pos, hdr.length);
      /* The metadata context parser on every payload, for both options,
       * whether or not the session would get that far. */
      for (uint32_t o = NBD_OPT_LIST_META_CONTEXT;
           o <= NBD_OPT_SET_META_CONTEXT; o++) {
        if (nbd_proto_parse_opt_meta(o, payload, hdr.length, &meta, why,
                                     sizeof why) != 0) {
          CHECK(why[0] != '\0');
        } else {
          CHECK(meta.name_len <= hdr.length - 8);
          CHECK(meta.n_queries <= (hdr.length - 8 - meta.name_len) / 4);
        }
      }
      res = nbd_proto_option(&exp, &sess, &hdr, payload, out, why,
                             sizeof why);
      free(payload);
      fuzz_check_session(&exp, &sess);
      CHECK(sess.cflags == before.cflags);
      if (!exp.structured)
        CHECK(!sess.structured && !sess.base_allocation);
      if (hdr.option != NBD_OPT_SET_META_CONTEXT &&
          hdr.option != NBD_OPT_STRUCTURED_REPLY)
        CHECK(sess.structured == before.structured &&
              sess.base_allocation == before.base_allocation);
    }
    pos += hdr.length;
    CHECK(strlen(why) < sizeof why);
    fuzz_check_replies(out, hdr.option, res, &exp, &sess);
    if (res == NBD_OPT_TRANSMISSION)
      transmission = true;
    else if (res == NBD_OPT_CLOSE)
      goto out;
  }

  /* Transmission: even without a GO in the input, parse the rest as
   * requests so the validator sees every input. */
  while (size - pos >= NBD_REQUEST_LEN) {
    uint8_t hdrbuf[NBD_REQUEST_LEN];
    uint32_t payload;

    memcpy(hdrbuf, data + pos, sizeof hdrbuf);
    if (nbd_proto_parse_request(hdrbuf, &req, why, sizeof why) != 0) {
      CHECK(why[0] != '\0');
      /* Validate the fields anyway. */
      req.flags = (uint16_t)(hdrbuf[4] << 8 | hdrbuf[5]);
      req.type = (uint16_t)(hdrbuf[6] << 8 | hdrbuf[7]);
      req.offset = fuzz_be64(hdrbuf + 16);
      req.length = fuzz_be32(hdrbuf + 24);
    }
    pos += NBD_REQUEST_LEN;
    if (req.type == NBD_CMD_DISC)
      continue;
    err = nbd_proto_validate_request(&req, &exp, &sess, why, sizeof why);
    fuzz_check_request(&req, &exp, &sess, err, why);
    if (err == 0 && req.type == NBD_CMD_BLOCK_STATUS)
      fuzz_block_status(&req, data + pos,
                        size - pos < 64 ? size - pos : 64, out);
    if (err == 0 && req.type == NBD_CMD_READ && sess.structured) {
      uint8_t h[NBD_DATA_CHUNK_HDR_LEN];
      nbd_proto_build_data_chunk_hdr(h, NBD_REPLY_FLAG_DONE, req.cookie,
                                     req.offset, req.length);
      CHECK(fuzz_be32(h) == NBD_STRUCTURED_REPLY_MAGIC);
      CHECK(fuzz_be32(h + 16) == 8 + req.length);
    }
    if (err != 0 && sess.structured) {
      evbuffer_drain(out, evbuffer_get_length(out));
      CHECK(nbd_proto_chunk_error(out, NBD_REPLY_FLAG_DONE, req.cookie, err,
                                  why) == 0);
      CHECK(evbuffer_get_length(out) == NBD_CHUNK_HDR_LEN + 6 + strlen(why));
    }
    payload = nbd_proto_request_payload(&req);
    CHECK(payload == 0 || req.type == NBD_CMD_WRITE);
    pos += payload < size - pos ? payload : size - pos;
  }
  (void)nbd_proto_errno((int)(size & 0xff));

out:
  evbuffer_free(out);
  return 0;
}
