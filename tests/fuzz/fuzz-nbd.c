/* libFuzzer target for the NBD parsers in common/nbd-proto.c.
 *
 * The input is an export size (8 bytes) followed by what a client would
 * send: client flags, options, then transmission requests with their WRITE
 * payloads.  It is fed through the same steps nbd-server.c takes, and
 * every answer is checked: option replies must be well formed, a request
 * that validates must lie inside the export and within the size limits. */
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
 * export information precedes the ACK. */
static void
fuzz_check_replies(struct evbuffer *out, uint32_t option,
                   enum nbd_opt_result res, uint32_t cflags)
{
  size_t len = evbuffer_get_length(out);
  const uint8_t *p = evbuffer_pullup(out, -1);
  bool saw_export = false, saw_ack = false;
  size_t off = 0;

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
        CHECK(rlen == 12);
        saw_export = true;
      }
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
}

static void
fuzz_check_request(const struct nbd_request *req, uint64_t size, uint32_t err,
                   const char *why)
{
  CHECK(strlen(why) < 300);
  if (err != 0) {
    CHECK(err == NBD_EINVAL || err == NBD_ENOSPC);
    CHECK(why[0] != '\0');
    return;
  }
  switch (req->type) {
  case NBD_CMD_FLUSH:
    CHECK(req->offset == 0 && req->length == 0);
    return;
  case NBD_CMD_READ:
  case NBD_CMD_WRITE:
    CHECK(req->length <= NBD_BLOCK_MAX);
    /* fall through */
  case NBD_CMD_TRIM:
  case NBD_CMD_WRITE_ZEROES:
    CHECK(req->length > 0);
    CHECK(req->offset < size);
    CHECK(req->length <= size - req->offset);
    CHECK((req->flags & ~(NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE)) == 0);
    if (req->type != NBD_CMD_WRITE_ZEROES)
      CHECK(!(req->flags & NBD_CMD_FLAG_NO_HOLE));
    return;
  default:
    CHECK(!"an unsupported command validated");
  }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct nbd_export exp = {
    .tflags = nbd_proto_tflags(),
    .name = "fuzz.img",
    .description = "fuzz export",
  };
  struct evbuffer *out = evbuffer_new();
  struct nbd_opt_hdr hdr;
  struct nbd_request req;
  enum nbd_opt_result res;
  uint32_t cflags, err;
  char why[300];
  size_t pos = 0;
  bool transmission = false;

  if (out == NULL)
    abort();
  if (size < 8 + NBD_CLIENT_FLAGS_LEN)
    goto out;
  /* Sizes around the interesting edges: small, 2^63 and 2^64-1. */
  exp.size = fuzz_be64(data);
  pos = 8;
  if (nbd_proto_parse_client_flags(data + pos, &cflags, why, sizeof why) != 0) {
    CHECK(why[0] != '\0');
    /* carry on with a sane value so options still get exercised */
    cflags = data[pos + 3] &
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
      res = nbd_proto_option_too_big(&hdr, cflags, out, why, sizeof why);
      CHECK(why[0] != '\0');
      if (res == NBD_OPT_NEXT)
        fuzz_check_replies(out, hdr.option, res, cflags);
      else
        CHECK(hdr.option == NBD_OPT_EXPORT_NAME ||
              !(cflags & NBD_FLAG_C_FIXED_NEWSTYLE));
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
      memcpy(payload, data + pos, hdr.length);
      res = nbd_proto_option(&exp, cflags, &hdr, payload, out, why,
                             sizeof why);
      free(payload);
    }
    pos += hdr.length;
    CHECK(strlen(why) < sizeof why);
    fuzz_check_replies(out, hdr.option, res, cflags);
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
    err = nbd_proto_validate_request(&req, exp.size, exp.tflags, why,
                                     sizeof why);
    fuzz_check_request(&req, exp.size, err, why);
    payload = nbd_proto_request_payload(&req);
    CHECK(payload == 0 || req.type == NBD_CMD_WRITE);
    pos += payload < size - pos ? payload : size - pos;
  }
  (void)nbd_proto_errno((int)(size & 0xff));

out:
  evbuffer_free(out);
  return 0;
}
