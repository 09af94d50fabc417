/* NBD wire format: handshake, option haggling (fixed and non-fixed
 * newstyle, structured replies, metadata contexts), request validation,
 * simple replies and structured reply chunks.  No I/O: see nbd-proto.h. */
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "evbuf.h"
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

uint16_t
nbd_proto_session_tflags(const struct nbd_export *exp,
                         const struct nbd_session *sess)
{
  uint16_t f = exp->tflags;

  if (!sess->structured)
    f &= (uint16_t)~NBD_FLAG_SEND_DF;
  return f;
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

/* Does one query of a LIST or SET_META_CONTEXT name base:allocation? */
static bool
nbd_proto_meta_match(uint32_t option, const uint8_t *q, uint32_t len)
{
  static const char base[] = "base:";
  static const char alloc[] = NBD_META_BASE_ALLOCATION;

  if (len == sizeof alloc - 1 && memcmp(q, alloc, len) == 0)
    return true;
  /* The namespace alone is a wildcard for LIST, and selects nothing. */
  return option == NBD_OPT_LIST_META_CONTEXT && len == sizeof base - 1 &&
         memcmp(q, base, len) == 0;
}

uint32_t
nbd_proto_parse_opt_meta(uint32_t option, const uint8_t *payload, uint32_t len,
                         struct nbd_opt_meta *out, char *why, size_t whylen)
{
  uint32_t pos, qlen;

  memset(out, 0, sizeof *out);
  if (len < 8) {
    nbd_proto_why(why, whylen, "option data of %" PRIu32 " bytes is shorter "
                  "than the 8 bytes required", len);
    return NBD_REP_ERR_INVALID;
  }
  out->name_len = nbd_proto_get32(payload);
  if (out->name_len > len - 8) {
    nbd_proto_why(why, whylen, "export name length %" PRIu32 " exceeds the "
                  "option data (%" PRIu32 " bytes)", out->name_len, len);
    return NBD_REP_ERR_INVALID;
  }
  out->name = payload + 4;
  pos = 4 + out->name_len;
  out->n_queries = nbd_proto_get32(payload + pos);
  pos += 4;
  /* No query: LIST lists everything, SET selects nothing. */
  if (out->n_queries == 0)
    out->base_allocation = option == NBD_OPT_LIST_META_CONTEXT;
  for (uint32_t i = 0; i < out->n_queries; i++) {
    if (len - pos < 4) {
      nbd_proto_why(why, whylen, "query %" PRIu32 " of %" PRIu32 ": the "
                    "option data ends before its length", i + 1,
                    out->n_queries);
      return NBD_REP_ERR_INVALID;
    }
    qlen = nbd_proto_get32(payload + pos);
    pos += 4;
    if (qlen > len - pos) {
      nbd_proto_why(why, whylen, "query %" PRIu32 " of %" PRIu32 ": length "
                    "%" PRIu32 " exceeds the option data (%" PRIu32
                    " bytes left)", i + 1, out->n_queries, qlen, len - pos);
      return NBD_REP_ERR_INVALID;
    }
    if (qlen > NBD_MAX_STRING) {
      nbd_proto_why(why, whylen, "query %" PRIu32 " of %" PRIu32 ": %"
                    PRIu32 " bytes, longer than a string may be (%u)", i + 1,
                    out->n_queries, qlen, NBD_MAX_STRING);
      return NBD_REP_ERR_INVALID;
    }
    if (nbd_proto_meta_match(option, payload + pos, qlen))
      out->base_allocation = true;
    pos += qlen;
  }
  if (pos != len) {
    nbd_proto_why(why, whylen, "%" PRIu32 " bytes of option data after the "
                  "last of %" PRIu32 " queries", len - pos, out->n_queries);
    return NBD_REP_ERR_INVALID;
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
nbd_proto_rep_meta_context(struct evbuffer *out, uint32_t option, uint32_t id,
                           const char *name)
{
  uint32_t len = nbd_proto_strlen(name);
  uint8_t buf[4 + NBD_MAX_STRING];

  nbd_proto_put32(buf, id);
  memcpy(buf + 4, name, len);
  nbd_proto_opt_reply(out, option, NBD_REP_META_CONTEXT, buf, 4 + len);
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
nbd_proto_info_go(const struct nbd_export *exp,
                  const struct nbd_session *sess,
                  const struct nbd_opt_hdr *hdr, const uint8_t *payload,
                  struct evbuffer *out, char *why, size_t whylen)
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
  nbd_proto_rep_info_export(out, hdr->option, exp->size,
                            nbd_proto_session_tflags(exp, sess));
  /* Sent whether asked for or not: the defaults would allow requests
   * larger than we accept, and proto.md lets a server volunteer it. */
  nbd_proto_rep_info_block_size(out, hdr->option, NBD_BLOCK_MIN,
                                NBD_BLOCK_PREFERRED, exp->block_max);
  if (go.want_name && exp->name != NULL)
    nbd_proto_rep_info_string(out, hdr->option, NBD_INFO_NAME, exp->name);
  if (go.want_description && exp->description != NULL)
    nbd_proto_rep_info_string(out, hdr->option, NBD_INFO_DESCRIPTION,
                              exp->description);
  nbd_proto_opt_reply(out, hdr->option, NBD_REP_ACK, NULL, 0);
  return hdr->option == NBD_OPT_GO ? NBD_OPT_TRANSMISSION : NBD_OPT_NEXT;
}

/* An option this export does not offer: clients probe for STARTTLS,
 * STRUCTURED_REPLY, meta contexts, extended headers..., so this is not the
 * client's fault. */
static enum nbd_opt_result
nbd_proto_unsupported(const struct nbd_opt_hdr *hdr, struct evbuffer *out)
{
  char msg[96];

  snprintf(msg, sizeof msg, "option %" PRIu32 " (%s) is not supported",
           hdr->option, nbd_proto_opt_name(hdr->option));
  nbd_proto_opt_error(out, hdr->option, NBD_REP_ERR_UNSUP, msg);
  return NBD_OPT_NEXT;
}

static enum nbd_opt_result
nbd_proto_structured(struct nbd_session *sess, const struct nbd_opt_hdr *hdr,
                     struct evbuffer *out, char *why, size_t whylen)
{
  if (hdr->length != 0) {
    nbd_proto_why(why, whylen, "NBD_OPT_STRUCTURED_REPLY with %" PRIu32
                  " bytes of data (expected none)", hdr->length);
    nbd_proto_opt_error(out, hdr->option, NBD_REP_ERR_INVALID,
                        "NBD_OPT_STRUCTURED_REPLY takes no data");
    return NBD_OPT_NEXT;
  }
  if (sess->structured) {
    /* As qemu-nbd answers a second request. */
    nbd_proto_why(why, whylen, "NBD_OPT_STRUCTURED_REPLY sent again");
    nbd_proto_opt_error(out, hdr->option, NBD_REP_ERR_INVALID,
                        "structured replies are already negotiated");
    return NBD_OPT_NEXT;
  }
  sess->structured = true;
  nbd_proto_opt_reply(out, hdr->option, NBD_REP_ACK, NULL, 0);
  return NBD_OPT_NEXT;
}

/* LIST_META_CONTEXT and SET_META_CONTEXT: one export (any name), one
 * context.  SET replaces the selection even when it fails (proto.md). */
static enum nbd_opt_result
nbd_proto_meta(struct nbd_session *sess, const struct nbd_opt_hdr *hdr,
               const uint8_t *payload, struct evbuffer *out, char *why,
               size_t whylen)
{
  struct nbd_opt_meta m;
  char reason[200];
  bool set = hdr->option == NBD_OPT_SET_META_CONTEXT;

  if (set)
    sess->base_allocation = false;
  if (!sess->structured) {
    nbd_proto_why(why, whylen, "%s before NBD_OPT_STRUCTURED_REPLY",
                  nbd_proto_opt_name(hdr->option));
    nbd_proto_opt_error(out, hdr->option, NBD_REP_ERR_INVALID,
                        "metadata contexts need structured replies: send "
                        "NBD_OPT_STRUCTURED_REPLY first");
    return NBD_OPT_NEXT;
  }
  if (nbd_proto_parse_opt_meta(hdr->option, payload, hdr->length, &m, reason,
                               sizeof reason) != 0) {
    nbd_proto_why(why, whylen, "%s: %s", nbd_proto_opt_name(hdr->option),
                  reason);
    nbd_proto_opt_error(out, hdr->option, NBD_REP_ERR_INVALID, reason);
    return NBD_OPT_NEXT;
  }
  if (m.base_allocation) {
    /* LIST answers id 0 (reserved); SET the id BLOCK_STATUS will carry. */
    nbd_proto_rep_meta_context(out, hdr->option,
                               set ? NBD_META_ID_BASE_ALLOCATION : 0,
                               NBD_META_BASE_ALLOCATION);
    if (set)
      sess->base_allocation = true;
  }
  nbd_proto_opt_reply(out, hdr->option, NBD_REP_ACK, NULL, 0);
  return NBD_OPT_NEXT;
}

enum nbd_opt_result
nbd_proto_option(const struct nbd_export *exp, struct nbd_session *sess,
                 const struct nbd_opt_hdr *hdr, const uint8_t *payload,
                 struct evbuffer *out, char *why, size_t whylen)
{
  uint32_t cflags = sess->cflags;

  nbd_proto_why(why, whylen, "%s", "");
  if (hdr->length > NBD_MAX_OPTION)
    return nbd_proto_option_too_big(hdr, sess, out, why, whylen);

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
    nbd_proto_export_name_reply(out, exp->size,
                                nbd_proto_session_tflags(exp, sess), cflags);
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
    return nbd_proto_info_go(exp, sess, hdr, payload, out, why, whylen);

  case NBD_OPT_STRUCTURED_REPLY:
    if (!exp->structured)
      return nbd_proto_unsupported(hdr, out);
    return nbd_proto_structured(sess, hdr, out, why, whylen);

  case NBD_OPT_LIST_META_CONTEXT:
  case NBD_OPT_SET_META_CONTEXT:
    if (!exp->structured)
      return nbd_proto_unsupported(hdr, out);
    return nbd_proto_meta(sess, hdr, payload, out, why, whylen);

  default:
    return nbd_proto_unsupported(hdr, out);
  }
}

enum nbd_opt_result
nbd_proto_option_too_big(const struct nbd_opt_hdr *hdr,
                         struct nbd_session *sess, struct evbuffer *out,
                         char *why, size_t whylen)
{
  nbd_proto_why(why, whylen, "%s with %" PRIu32 " bytes of data (limit %u)",
                nbd_proto_opt_name(hdr->option), hdr->length,
                NBD_MAX_OPTION);
  if (hdr->option == NBD_OPT_SET_META_CONTEXT)
    sess->base_allocation = false;
  /* EXPORT_NAME has no error reply: proto.md says terminate.  Nor has
   * anything sent by a client without fixed newstyle. */
  if (hdr->option == NBD_OPT_EXPORT_NAME ||
      !(sess->cflags & NBD_FLAG_C_FIXED_NEWSTYLE))
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
  if (type == NBD_CMD_READ && (tflags & NBD_FLAG_SEND_DF))
    f |= NBD_CMD_FLAG_DF;
  if (type == NBD_CMD_BLOCK_STATUS)
    f |= NBD_CMD_FLAG_REQ_ONE;
  return f;
}

uint32_t
nbd_proto_validate_request(const struct nbd_request *req,
                           const struct nbd_export *exp,
                           const struct nbd_session *sess, char *why,
                           size_t whylen)
{
  const char *name = nbd_proto_cmd_name(req->type);
  uint16_t tflags = nbd_proto_session_tflags(exp, sess);
  uint64_t size = exp->size;
  uint16_t bad;

  nbd_proto_why(why, whylen, "%s", "");
  switch (req->type) {
  case NBD_CMD_READ:
    break;
  case NBD_CMD_WRITE:
  case NBD_CMD_TRIM:
  case NBD_CMD_WRITE_ZEROES:
    /* proto.md: the server MUST error writes to a read-only export, and
     * SHOULD say EPERM (also for trims and zeroes). */
    if (tflags & NBD_FLAG_READ_ONLY) {
      nbd_proto_why(why, whylen, "%s: the export is read-only", name);
      return NBD_EPERM;
    }
    if (req->type == NBD_CMD_TRIM && !(tflags & NBD_FLAG_SEND_TRIM))
      goto unsupported;
    if (req->type == NBD_CMD_WRITE_ZEROES &&
        !(tflags & NBD_FLAG_SEND_WRITE_ZEROES))
      goto unsupported;
    break;
  case NBD_CMD_FLUSH:
    if (!(tflags & NBD_FLAG_SEND_FLUSH))
      goto unsupported;
    break;
  case NBD_CMD_BLOCK_STATUS:
    if (!exp->structured)
      goto unsupported;
    if (!sess->base_allocation) {
      nbd_proto_why(why, whylen, "%s without a metadata context selected "
                    "(NBD_OPT_SET_META_CONTEXT base:allocation)", name);
      return NBD_EINVAL;
    }
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
      req->length > exp->block_max) {
    nbd_proto_why(why, whylen, "%s: length %" PRIu32 " exceeds the maximum "
                  "of %" PRIu32, name, req->length, exp->block_max);
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

void
nbd_proto_build_chunk_hdr(uint8_t out[NBD_CHUNK_HDR_LEN], uint16_t flags,
                          uint16_t type, uint64_t cookie, uint32_t length)
{
  nbd_proto_put32(out, NBD_STRUCTURED_REPLY_MAGIC);
  nbd_proto_put16(out + 4, flags);
  nbd_proto_put16(out + 6, type);
  nbd_proto_put64(out + 8, cookie);
  nbd_proto_put32(out + 16, length);
}

void
nbd_proto_build_data_chunk_hdr(uint8_t out[NBD_DATA_CHUNK_HDR_LEN],
                               uint16_t flags, uint64_t cookie,
                               uint64_t offset, uint32_t len)
{
  nbd_proto_build_chunk_hdr(out, flags, NBD_REPLY_TYPE_OFFSET_DATA, cookie,
                            8 + len);
  nbd_proto_put64(out + NBD_CHUNK_HDR_LEN, offset);
}

/* Chunks go behind read data the caller may have added by reference, so
 * they are appended with evbuf_add_small (see evbuf.h). */
int
nbd_proto_chunk_done(struct evbuffer *out, uint64_t cookie)
{
  uint8_t hdr[NBD_CHUNK_HDR_LEN];

  nbd_proto_build_chunk_hdr(hdr, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE,
                            cookie, 0);
  return evbuf_add_small(out, hdr, sizeof hdr);
}

int
nbd_proto_chunk_error(struct evbuffer *out, uint16_t flags, uint64_t cookie,
                      uint32_t error, const char *msg)
{
  uint32_t len = nbd_proto_strlen(msg);
  uint8_t buf[NBD_CHUNK_HDR_LEN + 6 + NBD_MAX_STRING];

  nbd_proto_build_chunk_hdr(buf, flags, NBD_REPLY_TYPE_ERROR, cookie,
                            6 + len);
  nbd_proto_put32(buf + NBD_CHUNK_HDR_LEN, error);
  nbd_proto_put16(buf + NBD_CHUNK_HDR_LEN + 4, (uint16_t)len);
  if (len > 0)
    memcpy(buf + NBD_CHUNK_HDR_LEN + 6, msg, len);
  return evbuf_add_small(out, buf, NBD_CHUNK_HDR_LEN + 6 + len);
}

void
nbd_proto_extents_init(struct nbd_extents *x, const struct nbd_request *req,
                       struct nbd_extent *array, uint32_t max)
{
  x->next = req->offset;
  /* A validated request does not wrap; saturate for one that was not. */
  x->end = req->offset + req->length >= req->offset
               ? req->offset + req->length : UINT64_MAX;
  x->req_one = (req->flags & NBD_CMD_FLAG_REQ_ONE) != 0;
  x->e = array;
  x->n = 0;
  x->max = max;
}

int
nbd_proto_extents_add(struct nbd_extents *x, uint64_t off, uint64_t len,
                      uint32_t flags, char *why, size_t whylen)
{
  struct nbd_extent *last = x->n > 0 ? &x->e[x->n - 1] : NULL;
  uint64_t to;
  uint32_t l;

  if (x->next >= x->end)
    return 1;
  if (len == 0 || off > x->next || len > UINT64_MAX - off ||
      off + len <= x->next) {
    nbd_proto_why(why, whylen, "extent at %" PRIu64 " of %" PRIu64 " bytes "
                  "does not continue at %" PRIu64, off, len, x->next);
    return -1;
  }
  to = off + len < x->end ? off + len : x->end;
  /* At most the request's length, which is 32 bits. */
  l = (uint32_t)(to - x->next);
  if (last != NULL && last->flags == flags &&
      (uint64_t)last->length + l <= UINT32_MAX) {
    last->length += l;
  } else {
    if (x->n == (x->req_one ? 1 : x->max))
      return 1;
    x->e[x->n].length = l;
    x->e[x->n].flags = flags;
    x->n++;
  }
  x->next = to;
  return x->next >= x->end ? 1 : 0;
}

int
nbd_proto_chunk_block_status(struct evbuffer *out, uint16_t flags,
                             uint64_t cookie, uint32_t id,
                             const struct nbd_extents *x)
{
  size_t len = NBD_CHUNK_HDR_LEN + 4 + 8 * (size_t)x->n;
  struct evbuffer_iovec v;
  uint8_t *p;

  if (evbuffer_reserve_space(out, (ev_ssize_t)len, &v, 1) < 1)
    return -1;
  p = v.iov_base;
  nbd_proto_build_chunk_hdr(p, flags, NBD_REPLY_TYPE_BLOCK_STATUS, cookie,
                            (uint32_t)(len - NBD_CHUNK_HDR_LEN));
  nbd_proto_put32(p + NBD_CHUNK_HDR_LEN, id);
  for (uint32_t i = 0; i < x->n; i++) {
    nbd_proto_put32(p + NBD_CHUNK_HDR_LEN + 4 + 8 * i, x->e[i].length);
    nbd_proto_put32(p + NBD_CHUNK_HDR_LEN + 8 + 8 * i, x->e[i].flags);
  }
  v.iov_len = len;
  return evbuffer_commit_space(out, &v, 1);
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
