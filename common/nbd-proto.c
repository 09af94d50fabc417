/* NBD wire format: handshake, option haggling (fixed and non-fixed
 * newstyle), request validation and simple replies.  No I/O: see
 * nbd-proto.h. */
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "nbd-proto.h"

static uint16_t
nbd_proto_get16(const uint8_t *p)
{
  uint16_t v;
  memcpy(&v, p, sizeof v);
  return be16toh(v);
}

static uint32_t
nbd_proto_get32(const uint8_t *p)
{
  uint32_t v;
  memcpy(&v, p, sizeof v);
  return be32toh(v);
}

static uint64_t
nbd_proto_get64(const uint8_t *p)
{
  uint64_t v;
  memcpy(&v, p, sizeof v);
  return be64toh(v);
}

static void
nbd_proto_put16(uint8_t *p, uint16_t v)
{
  v = htobe16(v);
  memcpy(p, &v, sizeof v);
}

static void
nbd_proto_put32(uint8_t *p, uint32_t v)
{
  v = htobe32(v);
  memcpy(p, &v, sizeof v);
}

static void
nbd_proto_put64(uint8_t *p, uint64_t v)
{
  v = htobe64(v);
  memcpy(p, &v, sizeof v);
}

static void nbd_proto_why(char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Strings on the wire are at most NBD_MAX_STRING bytes (proto.md). */
static uint32_t
nbd_proto_strlen(const char *s)
{
  size_t len = s != NULL ? strlen(s) : 0;

  return len > NBD_MAX_STRING ? NBD_MAX_STRING : (uint32_t)len;
}

static void
nbd_proto_why(char *why, size_t whylen, const char *fmt, ...)
{
  va_list ap;

  if (why == NULL || whylen == 0)
    return;
  va_start(ap, fmt);
  vsnprintf(why, whylen, fmt, ap);
  va_end(ap);
}

uint16_t
nbd_proto_tflags(void)
{
  return NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
         NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
         NBD_FLAG_CAN_MULTI_CONN;
}

void
nbd_proto_build_handshake(uint8_t out[NBD_HANDSHAKE_LEN])
{
  nbd_proto_put64(out, NBD_MAGIC);
  nbd_proto_put64(out + 8, NBD_OPTS_MAGIC);
  nbd_proto_put16(out + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
}

int
nbd_proto_parse_client_flags(const uint8_t in[NBD_CLIENT_FLAGS_LEN],
                             uint32_t *cflags, char *why, size_t whylen)
{
  uint32_t f = nbd_proto_get32(in);

  nbd_proto_why(why, whylen, "%s", "");
  if (f & ~(uint32_t)(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
    nbd_proto_why(why, whylen, "client flags 0x%08" PRIx32
                  " have unknown bits set", f);
    return -1;
  }
  *cflags = f;
  return 0;
}

int
nbd_proto_parse_opt_hdr(const uint8_t in[NBD_OPT_HDR_LEN],
                        struct nbd_opt_hdr *out, char *why, size_t whylen)
{
  uint64_t magic = nbd_proto_get64(in);

  if (magic != NBD_OPTS_MAGIC) {
    nbd_proto_why(why, whylen, "bad option magic 0x%016" PRIx64, magic);
    return -1;
  }
  out->option = nbd_proto_get32(in + 8);
  out->length = nbd_proto_get32(in + 12);
  return 0;
}

uint32_t
nbd_proto_parse_opt_go(const uint8_t *payload, uint32_t len,
                       struct nbd_opt_go *out, char *why, size_t whylen)
{
  uint32_t rest;

  memset(out, 0, sizeof *out);
  if (len < 6) {
    nbd_proto_why(why, whylen, "option data of %" PRIu32 " bytes is shorter "
                  "than the 6 bytes required", len);
    return NBD_REP_ERR_INVALID;
  }
  out->name_len = nbd_proto_get32(payload);
  if (out->name_len > len - 6) {
    nbd_proto_why(why, whylen, "export name length %" PRIu32 " exceeds the "
                  "option data (%" PRIu32 " bytes)", out->name_len, len);
    return NBD_REP_ERR_INVALID;
  }
  out->name = payload + 4;
  out->n_info = nbd_proto_get16(payload + 4 + out->name_len);
  rest = len - 6 - out->name_len;
  if (rest != 2u * out->n_info) {
    nbd_proto_why(why, whylen, "%" PRIu16 " information requests need %u "
                  "bytes, the option has %" PRIu32, out->n_info,
                  2u * out->n_info, rest);
    return NBD_REP_ERR_INVALID;
  }
  for (uint32_t i = 0; i < out->n_info; i++) {
    /* Unknown information requests are ignored, as proto.md says. */
    switch (nbd_proto_get16(payload + 6 + out->name_len + 2 * i)) {
    case NBD_INFO_NAME:
      out->want_name = true;
      break;
    case NBD_INFO_DESCRIPTION:
      out->want_description = true;
      break;
    case NBD_INFO_BLOCK_SIZE:
      out->want_block_size = true;
      break;
    default:
      break;
    }
  }
  return 0;
}

void
nbd_proto_opt_reply(struct evbuffer *out, uint32_t option, uint32_t type,
                    const void *data, uint32_t len)
{
  uint8_t hdr[NBD_OPT_REPLY_HDR_LEN];

  nbd_proto_put64(hdr, NBD_REP_MAGIC);
  nbd_proto_put32(hdr + 8, option);
  nbd_proto_put32(hdr + 12, type);
  nbd_proto_put32(hdr + 16, len);
  evbuffer_add(out, hdr, sizeof hdr);
  if (len > 0)
    evbuffer_add(out, data, len);
}

void
nbd_proto_opt_error(struct evbuffer *out, uint32_t option, uint32_t type,
                    const char *msg)
{
  nbd_proto_opt_reply(out, option, type, msg, nbd_proto_strlen(msg));
}

void
nbd_proto_rep_server(struct evbuffer *out, uint32_t option, const char *name)
{
  uint32_t len = nbd_proto_strlen(name);
  uint8_t buf[4 + NBD_MAX_STRING];

  nbd_proto_put32(buf, len);
  memcpy(buf + 4, name, len);
  nbd_proto_opt_reply(out, option, NBD_REP_SERVER, buf, 4 + len);
}

void
nbd_proto_rep_info_export(struct evbuffer *out, uint32_t option, uint64_t size,
                          uint16_t tflags)
{
  uint8_t buf[12];

  nbd_proto_put16(buf, NBD_INFO_EXPORT);
  nbd_proto_put64(buf + 2, size);
  nbd_proto_put16(buf + 10, tflags);
  nbd_proto_opt_reply(out, option, NBD_REP_INFO, buf, sizeof buf);
}

void
nbd_proto_rep_info_block_size(struct evbuffer *out, uint32_t option,
                              uint32_t min, uint32_t preferred, uint32_t max)
{
  uint8_t buf[14];

  nbd_proto_put16(buf, NBD_INFO_BLOCK_SIZE);
  nbd_proto_put32(buf + 2, min);
  nbd_proto_put32(buf + 6, preferred);
  nbd_proto_put32(buf + 10, max);
  nbd_proto_opt_reply(out, option, NBD_REP_INFO, buf, sizeof buf);
}

void
nbd_proto_rep_info_string(struct evbuffer *out, uint32_t option, uint16_t info,
                          const char *s)
{
  uint32_t len = nbd_proto_strlen(s);
  uint8_t buf[2 + NBD_MAX_STRING];

  nbd_proto_put16(buf, info);
  memcpy(buf + 2, s, len);
  nbd_proto_opt_reply(out, option, NBD_REP_INFO, buf, 2 + len);
}

void
nbd_proto_export_name_reply(struct evbuffer *out, uint64_t size,
                            uint16_t tflags, uint32_t cflags)
{
  uint8_t buf[10 + NBD_EXPORT_NAME_ZEROES];
  size_t len = 10;

  nbd_proto_put64(buf, size);
  nbd_proto_put16(buf + 8, tflags);
  if (!(cflags & NBD_FLAG_C_NO_ZEROES)) {
    memset(buf + 10, 0, NBD_EXPORT_NAME_ZEROES);
    len += NBD_EXPORT_NAME_ZEROES;
  }
  evbuffer_add(out, buf, len);
}

/* NBD_OPT_INFO and NBD_OPT_GO share their format and replies; only GO
 * enters transmission after the final ACK.  Any export name is accepted
 * (there is one export), like nbdkit's default. */
static enum nbd_opt_result
nbd_proto_info_go(const struct nbd_export *exp, const struct nbd_opt_hdr *hdr,
                  const uint8_t *payload, struct evbuffer *out, char *why,
                  size_t whylen)
{
  struct nbd_opt_go go;
  char reason[160];

  if (nbd_proto_parse_opt_go(payload, hdr->length, &go, reason,
                             sizeof reason) != 0) {
    nbd_proto_why(why, whylen, "%s: %s", nbd_proto_opt_name(hdr->option),
                  reason);
    nbd_proto_opt_error(out, hdr->option, NBD_REP_ERR_INVALID, reason);
    return NBD_OPT_NEXT;
  }
  nbd_proto_rep_info_export(out, hdr->option, exp->size, exp->tflags);
  /* Sent whether asked for or not: the defaults would allow requests
   * larger than we accept, and proto.md lets a server volunteer it. */
  nbd_proto_rep_info_block_size(out, hdr->option, NBD_BLOCK_MIN,
                                NBD_BLOCK_PREFERRED, NBD_BLOCK_MAX);
  if (go.want_name && exp->name != NULL)
    nbd_proto_rep_info_string(out, hdr->option, NBD_INFO_NAME, exp->name);
  if (go.want_description && exp->description != NULL)
    nbd_proto_rep_info_string(out, hdr->option, NBD_INFO_DESCRIPTION,
                              exp->description);
  nbd_proto_opt_reply(out, hdr->option, NBD_REP_ACK, NULL, 0);
  return hdr->option == NBD_OPT_GO ? NBD_OPT_TRANSMISSION : NBD_OPT_NEXT;
}

enum nbd_opt_result
nbd_proto_option(const struct nbd_export *exp, uint32_t cflags,
                 const struct nbd_opt_hdr *hdr, const uint8_t *payload,
                 struct evbuffer *out, char *why, size_t whylen)
{
  char msg[96];

  nbd_proto_why(why, whylen, "%s", "");
  if (hdr->length > NBD_MAX_OPTION)
    return nbd_proto_option_too_big(hdr, cflags, out, why, whylen);

  if (!(cflags & NBD_FLAG_C_FIXED_NEWSTYLE) &&
      hdr->option != NBD_OPT_EXPORT_NAME) {
    /* No reply format exists for this client: close without one. */
    if (hdr->option != NBD_OPT_ABORT)
      nbd_proto_why(why, whylen, "%s from a client without fixed newstyle "
                    "negotiation, which may send only NBD_OPT_EXPORT_NAME "
                    "and cannot read an error reply",
                    nbd_proto_opt_name(hdr->option));
    return NBD_OPT_CLOSE;
  }

  switch (hdr->option) {
  case NBD_OPT_EXPORT_NAME:
    nbd_proto_export_name_reply(out, exp->size, exp->tflags, cflags);
    return NBD_OPT_TRANSMISSION;

  case NBD_OPT_ABORT:
    /* Data, if any, is ignored as proto.md asks. */
    nbd_proto_opt_reply(out, hdr->option, NBD_REP_ACK, NULL, 0);
    return NBD_OPT_CLOSE;

  case NBD_OPT_LIST:
    if (hdr->length != 0) {
      nbd_proto_why(why, whylen, "NBD_OPT_LIST with %" PRIu32 " bytes of "
                    "data (expected none)", hdr->length);
      nbd_proto_opt_error(out, hdr->option, NBD_REP_ERR_INVALID,
                          "NBD_OPT_LIST takes no data");
      return NBD_OPT_NEXT;
    }
    nbd_proto_rep_server(out, hdr->option, exp->name != NULL ? exp->name : "");
    nbd_proto_opt_reply(out, hdr->option, NBD_REP_ACK, NULL, 0);
    return NBD_OPT_NEXT;

  case NBD_OPT_INFO:
  case NBD_OPT_GO:
    return nbd_proto_info_go(exp, hdr, payload, out, why, whylen);

  default:
    /* STARTTLS, STRUCTURED_REPLY, meta contexts, extended headers...:
     * clients probe for these, so this is not the client's fault. */
    snprintf(msg, sizeof msg, "option %" PRIu32 " (%s) is not supported",
             hdr->option, nbd_proto_opt_name(hdr->option));
    nbd_proto_opt_error(out, hdr->option, NBD_REP_ERR_UNSUP, msg);
    return NBD_OPT_NEXT;
  }
}

enum nbd_opt_result
nbd_proto_option_too_big(const struct nbd_opt_hdr *hdr, uint32_t cflags,
                         struct evbuffer *out, char *why, size_t whylen)
{
  nbd_proto_why(why, whylen, "%s with %" PRIu32 " bytes of data (limit %u)",
                nbd_proto_opt_name(hdr->option), hdr->length,
                NBD_MAX_OPTION);
  /* EXPORT_NAME has no error reply: proto.md says terminate.  Nor has
   * anything sent by a client without fixed newstyle. */
  if (hdr->option == NBD_OPT_EXPORT_NAME ||
      !(cflags & NBD_FLAG_C_FIXED_NEWSTYLE))
    return NBD_OPT_CLOSE;
  nbd_proto_opt_error(out, hdr->option, NBD_REP_ERR_TOO_BIG,
                      "option data too long");
  return NBD_OPT_NEXT;
}

int
nbd_proto_parse_request(const uint8_t in[NBD_REQUEST_LEN],
                        struct nbd_request *out, char *why, size_t whylen)
{
  uint32_t magic = nbd_proto_get32(in);

  if (magic != NBD_REQUEST_MAGIC) {
    nbd_proto_why(why, whylen, "bad request magic 0x%08" PRIx32, magic);
    return -1;
  }
  out->flags = nbd_proto_get16(in + 4);
  out->type = nbd_proto_get16(in + 6);
  out->cookie = nbd_proto_get64(in + 8);
  out->offset = nbd_proto_get64(in + 16);
  out->length = nbd_proto_get32(in + 24);
  return 0;
}

uint32_t
nbd_proto_request_payload(const struct nbd_request *req)
{
  return req->type == NBD_CMD_WRITE ? req->length : 0;
}

/* Which command flags each command accepts.  FUA is valid on every
 * command once SEND_FUA is advertised (proto.md: the server MUST accept
 * it, even by ignoring it). */
static uint16_t
nbd_proto_cmd_flags(uint16_t type, uint16_t tflags)
{
  uint16_t f = (tflags & NBD_FLAG_SEND_FUA) ? NBD_CMD_FLAG_FUA : 0;

  if (type == NBD_CMD_WRITE_ZEROES)
    f |= NBD_CMD_FLAG_NO_HOLE;
  return f;
}

uint32_t
nbd_proto_validate_request(const struct nbd_request *req, uint64_t size,
                           uint16_t tflags, char *why, size_t whylen)
{
  const char *name = nbd_proto_cmd_name(req->type);
  uint16_t bad;

  nbd_proto_why(why, whylen, "%s", "");
  switch (req->type) {
  case NBD_CMD_READ:
  case NBD_CMD_WRITE:
    break;
  case NBD_CMD_FLUSH:
    if (!(tflags & NBD_FLAG_SEND_FLUSH))
      goto unsupported;
    break;
  case NBD_CMD_TRIM:
    if (!(tflags & NBD_FLAG_SEND_TRIM))
      goto unsupported;
    break;
  case NBD_CMD_WRITE_ZEROES:
    if (!(tflags & NBD_FLAG_SEND_WRITE_ZEROES))
      goto unsupported;
    break;
  default:
    goto unsupported;
  }

  bad = req->flags & (uint16_t)~nbd_proto_cmd_flags(req->type, tflags);
  if (bad != 0) {
    nbd_proto_why(why, whylen, "%s: flags 0x%04x not valid for this "
                  "command", name, bad);
    return NBD_EINVAL;
  }

  if (req->type == NBD_CMD_FLUSH) {
    if (req->offset != 0 || req->length != 0) {
      nbd_proto_why(why, whylen, "%s: offset %" PRIu64 " and length %" PRIu32
                    " must be zero", name, req->offset, req->length);
      return NBD_EINVAL;
    }
    return 0;
  }

  if (req->length == 0) {
    nbd_proto_why(why, whylen, "%s: zero length at offset %" PRIu64, name,
                  req->offset);
    return NBD_EINVAL;
  }
  /* Data-carrying commands are bounded by what we buffer; TRIM and
   * WRITE_ZEROES carry no data and may cover up to 4 GiB (the kernel
   * client discards in such chunks). */
  if ((req->type == NBD_CMD_READ || req->type == NBD_CMD_WRITE) &&
      req->length > NBD_BLOCK_MAX) {
    nbd_proto_why(why, whylen, "%s: length %" PRIu32 " exceeds the maximum "
                  "of %u", name, req->length, NBD_BLOCK_MAX);
    return NBD_EINVAL;
  }
  if (req->offset > size || req->length > size - req->offset) {
    nbd_proto_why(why, whylen, "%s: offset %" PRIu64 " length %" PRIu32
                  " is beyond the end of the export (%" PRIu64 " bytes)",
                  name, req->offset, req->length, size);
    /* proto.md: ENOSPC for writes past the end, EINVAL for reads and
     * trims. */
    if (req->type == NBD_CMD_WRITE || req->type == NBD_CMD_WRITE_ZEROES)
      return NBD_ENOSPC;
    return NBD_EINVAL;
  }
  return 0;

unsupported:
  nbd_proto_why(why, whylen, "unsupported command %" PRIu16 " (%s)",
                req->type, name);
  return NBD_EINVAL;
}

uint32_t
nbd_proto_errno(int err)
{
  switch (err) {
  case 0:
    return NBD_SUCCESS;
  case EPERM:
  case EROFS:
    return NBD_EPERM;
  case ENOMEM:
    return NBD_ENOMEM;
  case EINVAL:
    return NBD_EINVAL;
  case ENOSPC:
  case EDQUOT:
  case EFBIG:
    return NBD_ENOSPC;
  case EOVERFLOW:
    return NBD_EOVERFLOW;
  case ESHUTDOWN:
    return NBD_ESHUTDOWN;
  case EIO:
  default:
    /* Whatever else the engine reports is a failure to do the I/O. */
    return NBD_EIO;
  }
}

void
nbd_proto_build_simple_reply(uint8_t out[NBD_SIMPLE_REPLY_LEN], uint32_t error,
                             uint64_t cookie)
{
  nbd_proto_put32(out, NBD_SIMPLE_REPLY_MAGIC);
  nbd_proto_put32(out + 4, error);
  nbd_proto_put64(out + 8, cookie);
}

const char *
nbd_proto_opt_name(uint32_t option)
{
  switch (option) {
  case NBD_OPT_EXPORT_NAME: return "NBD_OPT_EXPORT_NAME";
  case NBD_OPT_ABORT: return "NBD_OPT_ABORT";
  case NBD_OPT_LIST: return "NBD_OPT_LIST";
  case NBD_OPT_PEEK_EXPORT: return "NBD_OPT_PEEK_EXPORT";
  case NBD_OPT_STARTTLS: return "NBD_OPT_STARTTLS";
  case NBD_OPT_INFO: return "NBD_OPT_INFO";
  case NBD_OPT_GO: return "NBD_OPT_GO";
  case NBD_OPT_STRUCTURED_REPLY: return "NBD_OPT_STRUCTURED_REPLY";
  case NBD_OPT_LIST_META_CONTEXT: return "NBD_OPT_LIST_META_CONTEXT";
  case NBD_OPT_SET_META_CONTEXT: return "NBD_OPT_SET_META_CONTEXT";
  case NBD_OPT_EXTENDED_HEADERS: return "NBD_OPT_EXTENDED_HEADERS";
  default: return "unknown option";
  }
}

const char *
nbd_proto_cmd_name(uint16_t type)
{
  switch (type) {
  case NBD_CMD_READ: return "NBD_CMD_READ";
  case NBD_CMD_WRITE: return "NBD_CMD_WRITE";
  case NBD_CMD_DISC: return "NBD_CMD_DISC";
  case NBD_CMD_FLUSH: return "NBD_CMD_FLUSH";
  case NBD_CMD_TRIM: return "NBD_CMD_TRIM";
  case NBD_CMD_CACHE: return "NBD_CMD_CACHE";
  case NBD_CMD_WRITE_ZEROES: return "NBD_CMD_WRITE_ZEROES";
  case NBD_CMD_BLOCK_STATUS: return "NBD_CMD_BLOCK_STATUS";
  default: return "unknown command";
  }
}
