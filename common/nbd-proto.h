/* NBD wire format (NetworkBlockDevice/nbd doc/proto.md): newstyle handshake
 * (fixed, and non-fixed clients through NBD_OPT_EXPORT_NAME), simple
 * replies, and for exports that offer them structured replies with the
 * base:allocation metadata context (NBD_CMD_BLOCK_STATUS).  Everything here
 * is pure: bytes in, result or reply bytes (in an evbuffer, which is
 * memory, not a socket) out.  primary/nbd-server.c and store/nbd-export.c
 * do the I/O; the unit tests and fuzz-nbd drive these functions
 * directly. */
#ifndef DUPLEX_NBD_PROTO_H
#define DUPLEX_NBD_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>

/* ---- magic numbers ---- */
#define NBD_MAGIC 0x4e42444d41474943ull          /* "NBDMAGIC" */
#define NBD_OPTS_MAGIC 0x49484156454f5054ull     /* "IHAVEOPT" */
#define NBD_REP_MAGIC 0x0003e889045565a9ull      /* option reply */
#define NBD_REQUEST_MAGIC 0x25609513u
#define NBD_SIMPLE_REPLY_MAGIC 0x67446698u
#define NBD_STRUCTURED_REPLY_MAGIC 0x668e33efu

/* ---- handshake flags (server, 16 bits) and client flags (32 bits) ---- */
#define NBD_FLAG_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_NO_ZEROES (1u << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_C_NO_ZEROES (1u << 1)

/* ---- transmission flags (16 bits) ---- */
#define NBD_FLAG_HAS_FLAGS (1u << 0)
#define NBD_FLAG_READ_ONLY (1u << 1)
#define NBD_FLAG_SEND_FLUSH (1u << 2)
#define NBD_FLAG_SEND_FUA (1u << 3)
#define NBD_FLAG_ROTATIONAL (1u << 4)
#define NBD_FLAG_SEND_TRIM (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1u << 6)
#define NBD_FLAG_SEND_DF (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN (1u << 8)
#define NBD_FLAG_SEND_CACHE (1u << 10)
#define NBD_FLAG_SEND_FAST_ZERO (1u << 11)

/* ---- options ---- */
#define NBD_OPT_EXPORT_NAME 1u
#define NBD_OPT_ABORT 2u
#define NBD_OPT_LIST 3u
#define NBD_OPT_PEEK_EXPORT 4u
#define NBD_OPT_STARTTLS 5u
#define NBD_OPT_INFO 6u
#define NBD_OPT_GO 7u
#define NBD_OPT_STRUCTURED_REPLY 8u
#define NBD_OPT_LIST_META_CONTEXT 9u
#define NBD_OPT_SET_META_CONTEXT 10u
#define NBD_OPT_EXTENDED_HEADERS 11u

/* ---- option replies ---- */
#define NBD_REP_ACK 1u
#define NBD_REP_SERVER 2u
#define NBD_REP_INFO 3u
#define NBD_REP_META_CONTEXT 4u
#define NBD_REP_FLAG_ERROR (1u << 31)
#define NBD_REP_ERR_UNSUP (NBD_REP_FLAG_ERROR | 1u)
#define NBD_REP_ERR_POLICY (NBD_REP_FLAG_ERROR | 2u)
#define NBD_REP_ERR_INVALID (NBD_REP_FLAG_ERROR | 3u)
#define NBD_REP_ERR_PLATFORM (NBD_REP_FLAG_ERROR | 4u)
#define NBD_REP_ERR_TLS_REQD (NBD_REP_FLAG_ERROR | 5u)
#define NBD_REP_ERR_UNKNOWN (NBD_REP_FLAG_ERROR | 6u)
#define NBD_REP_ERR_SHUTDOWN (NBD_REP_FLAG_ERROR | 7u)
#define NBD_REP_ERR_BLOCK_SIZE_REQD (NBD_REP_FLAG_ERROR | 8u)
#define NBD_REP_ERR_TOO_BIG (NBD_REP_FLAG_ERROR | 9u)

/* ---- NBD_REP_INFO types ---- */
#define NBD_INFO_EXPORT 0u
#define NBD_INFO_NAME 1u
#define NBD_INFO_DESCRIPTION 2u
#define NBD_INFO_BLOCK_SIZE 3u

/* ---- commands and command flags ---- */
#define NBD_CMD_READ 0u
#define NBD_CMD_WRITE 1u
#define NBD_CMD_DISC 2u
#define NBD_CMD_FLUSH 3u
#define NBD_CMD_TRIM 4u
#define NBD_CMD_CACHE 5u
#define NBD_CMD_WRITE_ZEROES 6u
#define NBD_CMD_BLOCK_STATUS 7u

#define NBD_CMD_FLAG_FUA (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE (1u << 1)
#define NBD_CMD_FLAG_DF (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE (1u << 3)
#define NBD_CMD_FLAG_FAST_ZERO (1u << 4)

/* ---- structured replies: chunk flags and types ---- */
#define NBD_REPLY_FLAG_DONE (1u << 0)
#define NBD_REPLY_TYPE_NONE 0u
#define NBD_REPLY_TYPE_OFFSET_DATA 1u
#define NBD_REPLY_TYPE_OFFSET_HOLE 2u
#define NBD_REPLY_TYPE_BLOCK_STATUS 5u
#define NBD_REPLY_TYPE_ERROR ((1u << 15) + 1)
#define NBD_REPLY_TYPE_ERROR_OFFSET ((1u << 15) + 2)

/* ---- metadata contexts: the one we know, and its status flags ---- */
#define NBD_META_BASE_ALLOCATION "base:allocation"
/* The id NBD_OPT_SET_META_CONTEXT answers for base:allocation (any
 * nonzero value would do; the client treats it as opaque). */
#define NBD_META_ID_BASE_ALLOCATION 1u
#define NBD_STATE_HOLE (1u << 0)
#define NBD_STATE_ZERO (1u << 1)

/* ---- error values in replies ---- */
#define NBD_SUCCESS 0u
#define NBD_EPERM 1u
#define NBD_EIO 5u
#define NBD_ENOMEM 12u
#define NBD_EINVAL 22u
#define NBD_ENOSPC 28u
#define NBD_EOVERFLOW 75u
#define NBD_ENOTSUP 95u
#define NBD_ESHUTDOWN 108u

/* ---- sizes ---- */
#define NBD_HANDSHAKE_LEN 18u      /* NBDMAGIC, IHAVEOPT, u16 flags */
#define NBD_CLIENT_FLAGS_LEN 4u
#define NBD_OPT_HDR_LEN 16u        /* IHAVEOPT, u32 option, u32 length */
#define NBD_OPT_REPLY_HDR_LEN 20u
#define NBD_REQUEST_LEN 28u
#define NBD_SIMPLE_REPLY_LEN 16u
#define NBD_CHUNK_HDR_LEN 20u      /* structured reply chunk header */
#define NBD_DATA_CHUNK_HDR_LEN 28u /* chunk header + offset of OFFSET_DATA */
#define NBD_EXPORT_NAME_ZEROES 124u
#define NBD_MAX_OPTION (64u * 1024)      /* longer payloads: ERR_TOO_BIG */
#define NBD_MAX_STRING 4096u             /* proto.md string limit */

/* Block size constraints advertised in NBD_INFO_BLOCK_SIZE.  The maximum
 * is duplex-primary's largest READ or WRITE (nbdkit's limit too; the NBD
 * tester's integrityhuge trace sends up to 64 MiB); an export may set a
 * smaller one (struct nbd_export.block_max). */
#define NBD_BLOCK_MIN 1u
#define NBD_BLOCK_PREFERRED 4096u
#define NBD_BLOCK_MAX (64u * 1024 * 1024)
/* A rejected WRITE's payload is read and discarded up to this length, so
 * the connection stays usable; a longer one closes the connection (as
 * nbdkit does) rather than reading gigabytes of junk. */
#define NBD_MAX_SKIP (2u * NBD_BLOCK_MAX)

/* What the server exports (one export, any name accepted). */
struct nbd_export {
  uint64_t size;
  uint16_t tflags;             /* transmission flags */
  uint32_t block_max;          /* largest READ or WRITE, advertised as the
                                * maximum of NBD_INFO_BLOCK_SIZE */
  /* Offers NBD_OPT_STRUCTURED_REPLY, the base:allocation metadata context
   * and NBD_CMD_BLOCK_STATUS.  Without it those options get
   * NBD_REP_ERR_UNSUP, as from a server that does not know them. */
  bool structured;
  const char *name;            /* canonical name: listed, NBD_INFO_NAME */
  const char *description;     /* NBD_INFO_DESCRIPTION, may be NULL */
};

/* What one client has negotiated so far: zero it when the client
 * connects, set cflags from nbd_proto_parse_client_flags, and let
 * nbd_proto_option update the rest. */
struct nbd_session {
  uint32_t cflags;             /* the client's handshake flags */
  bool structured;             /* NBD_OPT_STRUCTURED_REPLY acknowledged */
  bool base_allocation;        /* base:allocation selected, with the id
                                * NBD_META_ID_BASE_ALLOCATION */
};

/* The transmission flags duplex-primary advertises. */
uint16_t nbd_proto_tflags(void);

/* The transmission flags a client of exp is given: exp->tflags, without
 * NBD_FLAG_SEND_DF unless it negotiated structured replies (proto.md). */
uint16_t nbd_proto_session_tflags(const struct nbd_export *exp,
                                  const struct nbd_session *sess);

/* Server greeting: NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE|NO_ZEROES. */
void nbd_proto_build_handshake(uint8_t out[NBD_HANDSHAKE_LEN]);

/* The client's 32-bit flags.  0, or -1 with the reason in why (unknown
 * flag bits: the server must close).  A client without
 * NBD_FLAG_C_FIXED_NEWSTYLE (old nbd-client, libnbd with handshake flags 0)
 * is accepted: it may send only NBD_OPT_EXPORT_NAME, see nbd_proto_option. */
int nbd_proto_parse_client_flags(const uint8_t in[NBD_CLIENT_FLAGS_LEN],
                                 uint32_t *cflags, char *why, size_t whylen);

/* Option header.  0, or -1 with the reason in why (bad magic). */
struct nbd_opt_hdr {
  uint32_t option;
  uint32_t length;
};
int nbd_proto_parse_opt_hdr(const uint8_t in[NBD_OPT_HDR_LEN],
                            struct nbd_opt_hdr *out, char *why,
                            size_t whylen);

/* NBD_OPT_INFO / NBD_OPT_GO payload.  name points into the payload.
 * Returns 0, or NBD_REP_ERR_INVALID with the reason in why. */
struct nbd_opt_go {
  const uint8_t *name;
  uint32_t name_len;
  uint16_t n_info;
  bool want_name;
  bool want_description;
  bool want_block_size;
};
uint32_t nbd_proto_parse_opt_go(const uint8_t *payload, uint32_t len,
                                struct nbd_opt_go *out, char *why,
                                size_t whylen);

/* NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT payload: export
 * name, then queries (u32 length + string each).  Only base:allocation is
 * known: for LIST, no query, "base:" or "base:allocation" match it; for
 * SET, only "base:allocation" selects it (proto.md: "base:" selects
 * nothing there, unknown namespaces and leaf names are ignored).  Returns
 * 0, or NBD_REP_ERR_INVALID with the reason in why. */
struct nbd_opt_meta {
  const uint8_t *name;         /* export name, points into the payload */
  uint32_t name_len;
  uint32_t n_queries;
  bool base_allocation;        /* the reply lists base:allocation */
};
uint32_t nbd_proto_parse_opt_meta(uint32_t option, const uint8_t *payload,
                                  uint32_t len, struct nbd_opt_meta *out,
                                  char *why, size_t whylen);

/* Reply builders: append to out. */
void nbd_proto_opt_reply(struct evbuffer *out, uint32_t option,
                         uint32_t type, const void *data, uint32_t len);
/* An error reply carrying a message for humans (may be NULL). */
void nbd_proto_opt_error(struct evbuffer *out, uint32_t option,
                         uint32_t type, const char *msg);
void nbd_proto_rep_server(struct evbuffer *out, uint32_t option,
                          const char *name);
void nbd_proto_rep_info_export(struct evbuffer *out, uint32_t option,
                               uint64_t size, uint16_t tflags);
void nbd_proto_rep_info_block_size(struct evbuffer *out, uint32_t option,
                                   uint32_t min, uint32_t preferred,
                                   uint32_t max);
void nbd_proto_rep_info_string(struct evbuffer *out, uint32_t option,
                               uint16_t info, const char *s);
void nbd_proto_rep_meta_context(struct evbuffer *out, uint32_t option,
                                uint32_t id, const char *name);
/* The reply to NBD_OPT_EXPORT_NAME: size, flags, 124 zeroes unless the
 * client set NBD_FLAG_C_NO_ZEROES. */
void nbd_proto_export_name_reply(struct evbuffer *out, uint64_t size,
                                 uint16_t tflags, uint32_t cflags);

/* What the connection does after an option was answered. */
enum nbd_opt_result {
  NBD_OPT_NEXT,          /* wait for the next option */
  NBD_OPT_TRANSMISSION,  /* enter the transmission phase */
  NBD_OPT_CLOSE,         /* flush the replies, then close */
};

/* Handle one complete option (header already parsed, payload of hdr->length
 * bytes, at most NBD_MAX_OPTION) for the single export exp: append every
 * reply to out, record what was negotiated in sess, and say what happens
 * next.  why gets a reason when the client did something wrong (an error
 * reply was built, or the connection must close without one), else "".
 *
 * A client without NBD_FLAG_C_FIXED_NEWSTYLE in cflags cannot parse option
 * replies (they came with fixed newstyle): for it, NBD_OPT_EXPORT_NAME is
 * answered as usual and any other option returns NBD_OPT_CLOSE with nothing
 * in out (proto.md: non-fixed newstyle has only NBD_OPT_EXPORT_NAME; qemu's
 * server closes too).  NBD_OPT_ABORT closes without a reply and without a
 * reason (it is what the client asked for). */
enum nbd_opt_result nbd_proto_option(const struct nbd_export *exp,
                                     struct nbd_session *sess,
                                     const struct nbd_opt_hdr *hdr,
                                     const uint8_t *payload,
                                     struct evbuffer *out, char *why,
                                     size_t whylen);

/* An option whose length exceeds NBD_MAX_OPTION: its payload is not
 * buffered.  Builds NBD_REP_ERR_TOO_BIG and returns NBD_OPT_NEXT (the
 * caller then discards hdr->length bytes), or NBD_OPT_CLOSE with nothing in
 * out for NBD_OPT_EXPORT_NAME, which has no error reply, and for a client
 * without fixed newstyle, which cannot read one.  A refused
 * NBD_OPT_SET_META_CONTEXT still clears the selected contexts. */
enum nbd_opt_result nbd_proto_option_too_big(const struct nbd_opt_hdr *hdr,
                                             struct nbd_session *sess,
                                             struct evbuffer *out, char *why,
                                             size_t whylen);

/* ---- transmission ---- */
struct nbd_request {
  uint16_t flags;
  uint16_t type;
  uint64_t cookie;
  uint64_t offset;
  uint32_t length;
};

/* Request header.  0, or -1 with the reason in why (bad magic: the stream
 * is out of sync and the connection must close). */
int nbd_proto_parse_request(const uint8_t in[NBD_REQUEST_LEN],
                            struct nbd_request *out, char *why,
                            size_t whylen);

/* Bytes of payload following this header on the wire (WRITE only), which
 * the server must consume whether or not the request is valid (up to
 * NBD_MAX_SKIP for a rejected one). */
uint32_t nbd_proto_request_payload(const struct nbd_request *req);

/* Check a request (not NBD_CMD_DISC) against the export and what the
 * client negotiated: 0 if it may be executed, else the NBD error to reply
 * with and the reason in why.  On a read-only export (NBD_FLAG_READ_ONLY)
 * WRITE, TRIM and WRITE_ZEROES get NBD_EPERM whatever their range.
 * NBD_CMD_BLOCK_STATUS needs base:allocation selected; its length is a
 * hint, not limited by block_max. */
uint32_t nbd_proto_validate_request(const struct nbd_request *req,
                                    const struct nbd_export *exp,
                                    const struct nbd_session *sess,
                                    char *why, size_t whylen);

/* A system errno (0 or positive) as the NBD error value for a reply. */
uint32_t nbd_proto_errno(int err);

void nbd_proto_build_simple_reply(uint8_t out[NBD_SIMPLE_REPLY_LEN],
                                  uint32_t error, uint64_t cookie);

/* ---- structured replies (only after NBD_OPT_STRUCTURED_REPLY) ---- */

/* A chunk header announcing `length` bytes of payload. */
void nbd_proto_build_chunk_hdr(uint8_t out[NBD_CHUNK_HDR_LEN], uint16_t flags,
                               uint16_t type, uint64_t cookie,
                               uint32_t length);
/* The header of an NBD_REPLY_TYPE_OFFSET_DATA chunk carrying `len` bytes
 * (at most 2^32 - 9) of data at `offset`; the caller appends the data (by
 * reference, say). */
void nbd_proto_build_data_chunk_hdr(uint8_t out[NBD_DATA_CHUNK_HDR_LEN],
                                    uint16_t flags, uint64_t cookie,
                                    uint64_t offset, uint32_t len);
/* These append a chunk to out: 0, or -1 when out cannot grow (nothing
 * was appended). */
/* NBD_REPLY_TYPE_NONE with NBD_REPLY_FLAG_DONE: the end of a reply. */
int nbd_proto_chunk_done(struct evbuffer *out, uint64_t cookie);
/* NBD_REPLY_TYPE_ERROR (error nonzero) with a message for humans (may be
 * NULL; cut to NBD_MAX_STRING bytes). */
int nbd_proto_chunk_error(struct evbuffer *out, uint16_t flags,
                          uint64_t cookie, uint32_t error, const char *msg);

/* The extents of one NBD_CMD_BLOCK_STATUS reply, collected from a source
 * that describes consecutive stretches of the export (off, len, status)
 * in order.  Stretches are cut to the request (the reply never describes
 * bytes before its offset or after its end), neighbours with the same
 * status merge, and collection stops at the request's end, at the first
 * extent with NBD_CMD_FLAG_REQ_ONE, or when `max` extents are held
 * (proto.md lets a reply cover less than asked, never nothing). */
struct nbd_extent {
  uint32_t length;
  uint32_t flags;              /* NBD_STATE_* */
};
struct nbd_extents {
  uint64_t next;               /* where the next stretch must begin */
  uint64_t end;                /* the request's end */
  bool req_one;
  struct nbd_extent *e;        /* the caller's array of max entries */
  uint32_t n, max;
};
void nbd_proto_extents_init(struct nbd_extents *x,
                            const struct nbd_request *req,
                            struct nbd_extent *array, uint32_t max);
/* Add the stretch [off, off + len): 0 to go on, 1 when the reply is
 * complete (the stretch was not taken if nothing more fits), -1 with the
 * reason in why when the stretch does not continue where the last one
 * ended (a gap or a step back: the source is wrong) or is empty.  The
 * first stretch must hold the request's offset; it may begin before it. */
int nbd_proto_extents_add(struct nbd_extents *x, uint64_t off, uint64_t len,
                          uint32_t flags, char *why, size_t whylen);
/* The NBD_REPLY_TYPE_BLOCK_STATUS chunk for x (at least one extent) and
 * context id, with flags (NBD_REPLY_FLAG_DONE when it is the last). */
int nbd_proto_chunk_block_status(struct evbuffer *out, uint16_t flags,
                                 uint64_t cookie, uint32_t id,
                                 const struct nbd_extents *x);

/* Names for logs: "NBD_OPT_GO", "NBD_CMD_READ", "unknown". */
const char *nbd_proto_opt_name(uint32_t option);
const char *nbd_proto_cmd_name(uint16_t type);

#endif
