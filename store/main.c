/* duplex-store: list, read, diff, restore, verify, serve and delete the
 * snapshots of a store, with no agent running (docs/STORE.md); and apply
 * a diff stream to a copy of a snapshot elsewhere, with no store at all.
 * Exit 0 on success, 1 when the operation failed (or verify found
 * problems), 2 on bad usage. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"
#include "nbd-export.h"
#include "snaplist.h"
#include "store.h"
#include "util.h"
#include "version.h"

enum { EXIT_FAIL = 1, EXIT_USAGE = 2 };

static void
usage(FILE *out)
{
  fprintf(out,
"Usage: duplex-store --store DIR COMMAND [ARGS...]\n"
"       duplex-store apply-diff --to PATH [--in FILE]\n"
"\n"
"Reads and maintains a duplex snapshot store (duplex-secondary\n"
"--snapshot-store DIR) with no agent running.  Read commands fail while a\n"
"duplex-secondary has the store open: use duplexctl on that agent then.\n"
"\n"
"Commands:\n"
"  list [--json]             the snapshots, oldest first\n"
"  restore ID --to PATH      write snapshot ID to a file or block device;\n"
"                            blocks that already match are not written\n"
"  diff ID1 ID2 [--json]     byte ranges whose contents differ\n"
"  diff ID1 ID2 --stream [--out FILE]\n"
"                            the same ranges with ID2's contents as a diff\n"
"                            stream (binary, checksummed) for apply-diff, to\n"
"                            stdout (never a terminal) or FILE; ID1 0: every\n"
"                            block of ID2, to seed a new copy\n"
"  verify [ID]               re-read and re-hash every stored block of one\n"
"                            or all snapshots; report what is missing or\n"
"                            damaged (exit 1 if anything is)\n"
"  delete ID                 delete a snapshot; frees exactly the data no\n"
"                            other snapshot needs\n"
"  import PATH [--name NAME] take a snapshot of a file or device into the\n"
"                            store (only blocks that differ from the newest\n"
"                            snapshot are stored)\n"
"  gc                        finish an interrupted delete: remove objects no\n"
"                            snapshot needs\n"
"  serve ID --nbd unix:PATH|HOST:PORT [--pidfile FILE]\n"
"                            serve snapshot ID read-only over NBD (zero\n"
"                            blocks reported as holes) until SIGTERM or\n"
"                            SIGINT; with port 0 the chosen port is printed\n"
"                            and written to FILE.port.  Writers (import,\n"
"                            delete, gc, a duplex-secondary) cannot open\n"
"                            the store meanwhile\n"
"  apply-diff --to PATH [--in FILE]\n"
"                            apply a diff stream (stdin, or FILE) to a copy\n"
"                            of snapshot ID1 (a file or block device), which\n"
"                            then holds ID2; needs no --store.  A damaged or\n"
"                            cut stream is refused (exit 1, saying where)\n"
"\n"
"Options:\n"
"  --store DIR   the store directory (not for apply-diff)\n"
"  -h, --help    this help;  -V, --version\n");
}

static int
fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int
fail(const char *fmt, ...)
{
  va_list ap;

  fputs("duplex-store: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  return EXIT_FAIL;
}

static int
parse_id(const char *s, uint64_t *id)
{
  char *end;

  errno = 0;
  *id = strtoull(s, &end, 10);
  return errno || end == s || *end || *id == 0 ? -1 : 0;
}

static int
cmd_list(struct store *s, bool json)
{
  const struct catalog *c = store_catalog(s);
  struct evbuffer *out = evbuffer_new();
  struct snaplist l;
  char err[1024];
  int rc = 0;

  if (!out)
    return fail("list: out of memory");
  snaplist_begin(&l, out, SNAPLIST_STORE, json);
  for (uint32_t i = 0; i < c->n_snaps; i++) {
    const struct manifest *m;
    if (store_manifest(s, c->snaps[i].id, &m, err, sizeof err) < 0) {
      rc = fail("%s", err);     /* what was listed so far is printed */
      break;
    }
    snaplist_add(&l, &(struct snaplist_entry){
      .id = m->id, .name = m->name, .created_ns = m->created_ns,
      .epoch = m->epoch, .reason = m->reason, .size_bytes = m->size_bytes,
      .stored_bytes = m->stored_bytes, .complete = true,
      .parent = m->parent });
  }
  if (rc == 0)
    snaplist_end(&l);
  fwrite(evbuffer_pullup(out, -1), 1, evbuffer_get_length(out), stdout);
  evbuffer_free(out);
  return rc;
}

static int
cmd_restore(struct store *s, uint64_t id, const char *to)
{
  struct restore_stats st;
  char err[1024];
  uint64_t t0 = util_now_ms();

  if (store_restore(s, id, to, &st, err, sizeof err) < 0)
    return fail("restore %" PRIu64 " to %s: %s", id, to, err);
  printf("restored snapshot %" PRIu64 " to %s in %.3f s: %" PRIu64
         " blocks, %" PRIu64 " written, %" PRIu64 " zeroed, %" PRIu64
         " already equal\n", id, to, (double)(util_now_ms() - t0) / 1000,
         st.blocks, st.written_blocks, st.zeroed_blocks, st.same_blocks);
  return 0;
}

static int
cmd_diff(struct store *s, uint64_t a, uint64_t b, bool json)
{
  char err[1024], *text;
  size_t len;

  if (store_diff_text(s, a, b, json, &text, &len, err, sizeof err) < 0)
    return fail("%s", err);
  fwrite(text, 1, len, stdout);
  free(text);
  return 0;
}

static int
stream_write(const void *buf, size_t len, void *arg)
{
  errno = 0;
  if (fwrite(buf, 1, len, arg) != len)
    return errno ? -errno : -EIO;
  return 0;
}

/* The stream goes out through a 1 MiB stdio buffer; a regular file is
 * synced before success, and removed after a failure (a partial stream
 * would be refused anyway). */
static int
cmd_diff_stream(struct store *s, uint64_t a, uint64_t b, const char *out)
{
  struct store_diff_stream_stats st;
  const char *name = out ? out : "stdout";
  struct stat sb;
  char err[1024];
  bool regular;
  FILE *f = stdout;
  int rc;

  /* A reader that went away is an error message, not a silent SIGPIPE. */
  signal(SIGPIPE, SIG_IGN);
  if (out && !(f = fopen(out, "wb")))
    return fail("diff --stream: --out %s: %s", out, strerror(errno));
  setvbuf(f, NULL, _IOFBF, 1u << 20);
  regular = fstat(fileno(f), &sb) == 0 && S_ISREG(sb.st_mode);
  rc = store_diff_stream(s, a, b, stream_write, f, &st, err, sizeof err);
  if (rc == 0 && (fflush(f) == EOF ||
                  (regular && fsync(fileno(f)) == -1))) {
    rc = -errno;
    snprintf(err, sizeof err, "cannot write the stream: %s", strerror(-rc));
  }
  if (out && fclose(f) == EOF && rc == 0) {
    rc = -errno;
    snprintf(err, sizeof err, "cannot write the stream: %s", strerror(-rc));
  }
  if (rc < 0) {
    if (out && regular)
      unlink(out);
    return fail("diff %" PRIu64 " %" PRIu64 " --stream to %s: %s%s", a, b,
                name, err, out && regular ? " (the partial file was "
                "removed)" : rc == -EPIPE ? " (the reading side stopped: "
                "see its message)" : "");
  }
  if (out)
    printf("wrote the diff stream from %s%" PRIu64 " to snapshot %" PRIu64
           " to %s: %" PRIu64 " records, %" PRIu64 " bytes of data, %"
           PRIu64 " bytes zeroed, %" PRIu64 " bytes in all\n",
           a ? "snapshot " : "", a, b, out, st.records, st.data_bytes,
           st.zero_bytes, st.stream_bytes);
  return 0;
}

/* "snapshot 7 (taken 2024-05-01T10:00:00Z)" */
static void
snap_label(uint64_t id, uint64_t created_ns, char *out, size_t outlen)
{
  char when[32];

  snaplist_rfc3339(created_ns, when, sizeof when);
  snprintf(out, outlen, "snapshot %" PRIu64 " (taken %s)", id, when);
}

/* ", volume UUID" when the snapshot has one (an import has none). */
static void
volume_label(const uint8_t uuid[16], char *out, size_t outlen)
{
  char u[37];

  out[0] = '\0';
  if (util_is_zero(uuid, 16))
    return;
  util_uuid_format(uuid, u);
  snprintf(out, outlen, ", volume %s", u);
}

static void
apply_header(const struct diffstream_header *h, void *arg)
{
  const char *to = arg;
  char from[96], dest[96], store_uuid[37], vol[64], vol_from[64] = "";
  char size[32];

  snap_label(h->from_id, h->from_created_ns, from, sizeof from);
  snap_label(h->to_id, h->to_created_ns, dest, sizeof dest);
  util_uuid_format(h->store_uuid, store_uuid);
  volume_label(h->to_volume_uuid, vol, sizeof vol);
  if (memcmp(h->from_volume_uuid, h->to_volume_uuid, 16) != 0)
    volume_label(h->from_volume_uuid, vol_from, sizeof vol_from);
  util_format_bytes(h->volume_size, size, sizeof size);
  if (h->from_id)
    printf("applying the diff from %s%s to %s of store %s%s (%s) to %s\n",
           from, vol_from, dest, store_uuid, vol, size, to);
  else
    printf("applying all of %s of store %s%s (%s) to %s\n", dest,
           store_uuid, vol, size, to);
  fflush(stdout);
}

static int
cmd_apply_diff(const char *to, const char *in)
{
  struct apply_diff_stats st;
  const char *name = in ? in : "stdin";
  uint64_t t0 = util_now_ms();
  char err[2048];
  int fd = STDIN_FILENO, rc;

  if (in && (fd = open(in, O_RDONLY | O_CLOEXEC)) == -1)
    return fail("apply-diff: --in %s: %s", in, strerror(errno));
  if (!in && isatty(fd))
    return fail("apply-diff: the diff stream is read from stdin, which is a "
                "terminal: pipe it in (duplex-store --store DIR diff ID1 ID2 "
                "--stream | duplex-store apply-diff --to PATH) or give "
                "--in FILE");
  rc = apply_diff(fd, name, to, apply_header, (void *)to, &st, err,
                  sizeof err);
  if (in)
    close(fd);
  if (rc < 0)
    return fail("apply-diff: %s", err);
  printf("applied in %.3f s: %" PRIu64 " records, %" PRIu64 " bytes "
         "written, %" PRIu64 " bytes zeroed, %" PRIu64 " stream bytes; %s "
         "holds snapshot %" PRIu64 " now\n",
         (double)(util_now_ms() - t0) / 1000, st.records, st.data_bytes,
         st.zero_bytes, st.stream_bytes, to, st.hdr.to_id);
  return 0;
}

static void
verify_report(uint64_t snap, uint64_t offset, const char *what, void *arg)
{
  (void)arg;
  if (snap && offset != UINT64_MAX)
    printf("snapshot %" PRIu64 ": offset %" PRIu64 ": %s\n", snap, offset,
           what);
  else if (snap)
    printf("snapshot %" PRIu64 ": %s\n", snap, what);
  else
    printf("store: %s\n", what);
}

static int
cmd_verify(struct store *s, uint64_t id)
{
  char err[1024];
  long n = store_check(s, id, verify_report, NULL, err, sizeof err);

  if (n < 0)
    return fail("verify: %s", err);
  if (n > 0) {
    printf("verify: %ld problem%s found\n", n, n == 1 ? "" : "s");
    return EXIT_FAIL;
  }
  printf("verify: %s: every stored block of %s reads back and matches its "
         "hash\n", store_desc(s), id ? "the snapshot" : "every snapshot");
  return 0;
}

static int
cmd_delete(struct store *s, uint64_t id)
{
  struct gc_stats st;
  char err[1024];

  if (store_delete(s, id, &st, err, sizeof err) < 0)
    return fail("delete %" PRIu64 ": %s", id, err);
  printf("deleted snapshot %" PRIu64 ": store %" PRIu64 " -> %" PRIu64
         " bytes (%" PRIu64 " packs rewritten, %" PRIu64 " objects "
         "deleted)\n", id, st.bytes_before, st.bytes_after,
         st.packs_rewritten, st.objects_deleted);
  return 0;
}

static int
cmd_gc(struct store *s)
{
  struct gc_stats st;
  char err[1024];

  if (store_gc(s, true, &st, err, sizeof err) < 0)
    return fail("gc: %s", err);
  printf("gc: store %" PRIu64 " -> %" PRIu64 " bytes (%" PRIu64
         " objects deleted)\n", st.bytes_before, st.bytes_after,
         st.objects_deleted);
  return 0;
}

static int
cmd_import(struct store *s, const char *path, const char *name)
{
  struct snap_meta meta = { 0 };
  struct store_writer *w = NULL;
  struct store_writer_stats st;
  struct store_map prev = { 0 };
  const struct catalog *c = store_catalog(s);
  uint8_t block[STORE_BLOCK];
  char err[1024];
  FILE *f;
  uint64_t size, id, b;
  int rc = EXIT_FAIL;

  f = fopen(path, "rb");
  if (!f)
    return fail("import: %s: %s", path, strerror(errno));
  if (fseeko(f, 0, SEEK_END) == -1 || (size = (uint64_t)ftello(f)) == 0 ||
      size % STORE_BLOCK || fseeko(f, 0, SEEK_SET) == -1) {
    fclose(f);
    return fail("import: %s: its size must be a positive multiple of %u",
                path, STORE_BLOCK);
  }
  snprintf(meta.name, sizeof meta.name, "%s", name ? name : "");
  meta.created_ns = util_wall_ns();
  meta.reason = SNAP_MANUAL;
  meta.size_bytes = size;
  if (c->n_snaps &&
      store_map_resolve(s, c->snaps[c->n_snaps - 1].id, &prev, err,
                        sizeof err) < 0) {
    fclose(f);
    return fail("import: %s", err);
  }
  if (store_writer_begin(s, &meta, false, &w, err, sizeof err) < 0) {
    fail("import: %s", err);
    goto out;
  }
  for (b = 0; b < size / STORE_BLOCK; b++) {
    const struct store_hash *was = prev.blocks == size / STORE_BLOCK
                                       ? store_map_lookup(&prev, b) : NULL;
    struct store_hash h;
    if (fread(block, 1, STORE_BLOCK, f) != STORE_BLOCK) {
      fail("import: %s: read error at %" PRIu64, path, b * STORE_BLOCK);
      goto out;
    }
    /* Only what differs from the newest snapshot goes into the delta. */
    if (prev.blocks == size / STORE_BLOCK) {
      if (util_is_zero(block, STORE_BLOCK)) {
        if (!was)
          continue;
      } else {
        format_hash(block, STORE_BLOCK, &h);
        if (was && memcmp(was->b, h.b, STORE_HASH_LEN) == 0)
          continue;
      }
    }
    if (store_writer_block(w, b, block, err, sizeof err) < 0) {
      fail("import: %s", err);
      goto out;
    }
  }
  if (store_writer_commit(w, &id, &st, err, sizeof err) < 0) {
    fail("import: %s", err);
    goto out;
  }
  w = NULL;
  printf("snapshot %" PRIu64 ": %" PRIu64 " blocks changed, %" PRIu64
         " new, %" PRIu64 " already stored, %" PRIu64 " bytes added\n", id,
         st.blocks + st.zero_blocks, st.new_blobs, st.dedup_blobs,
         st.stored_bytes);
  rc = 0;

out:
  store_writer_abort(w);
  store_map_free(&prev);
  fclose(f);
  return rc;
}

/* PATH.port for a TCP listener on port 0, written before the pidfile (as
 * the agents do): tmp + rename. */
static int
write_port_file(const char *path, int port)
{
  char tmp[PATH_MAX + 8], text[32];
  int fd, n, saved;
  ssize_t w;

  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  n = snprintf(text, sizeof text, "%d\n", port);
  fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd == -1)
    return -1;
  w = write(fd, text, (size_t)n);
  if (w != n) {
    saved = w < 0 ? errno : EIO;
    close(fd);
    goto fail;
  }
  if (close(fd) == -1 || rename(tmp, path) == -1) {
    saved = errno;
    goto fail;
  }
  return 0;

fail:
  unlink(tmp);
  errno = saved;
  return -1;
}

static void
serve_signal_cb(evutil_socket_t sig, short what, void *arg)
{
  (void)what;
  log_info("serve: %s received, stopping",
           sig == SIGTERM ? "SIGTERM" : "SIGINT");
  event_base_loopbreak(arg);
}

/* The export runs on this thread's event loop until SIGTERM or SIGINT;
 * then clients are closed and a unix socket removed. */
static int
cmd_serve(struct store *s, uint64_t id, const struct endpoint *ep,
          const char *pidfile)
{
  static const int signals[] = { SIGTERM, SIGINT };
  struct event *sigs[ARRAY_SIZE(signals)] = { NULL };
  const struct nbd_export_source *src;
  struct snap_source *ss = NULL;
  struct nbd_export_server *srv = NULL;
  struct event_base *base = NULL;
  const struct manifest *m;
  char err[1024], name[64], desc[512], when[32], portfile[PATH_MAX];
  bool wrote_port = false, wrote_pid = false;
  int rc = EXIT_FAIL;

  log_init("duplex-store", true);
  signal(SIGPIPE, SIG_IGN);
  /* READ buffers of up to 32 MiB, one per request: from the heap, not an
   * mmap (and a page fault per 4 KiB) each time.  The memory bound per
   * client holds the heap down. */
  util_tune_malloc();
  if (snap_source_open(s, id, NULL, &ss, err, sizeof err) < 0)
    return fail("serve %" PRIu64 ": %s", id, err);
  src = snap_source_get(ss);
  if (store_manifest(s, id, &m, err, sizeof err) < 0) {
    fail("serve %" PRIu64 ": %s", id, err);
    goto out;
  }
  snaplist_rfc3339(m->created_ns, when, sizeof when);
  snprintf(name, sizeof name, "snapshot-%" PRIu64, id);
  snprintf(desc, sizeof desc, "duplex snapshot %" PRIu64 "%s%.64s%s of %s, "
           "taken %s, read-only", id, m->name[0] ? " (" : "", m->name,
           m->name[0] ? ")" : "", store_desc(s), when);
  base = event_base_new();
  if (base == NULL) {
    fail("serve %" PRIu64 ": cannot create the event loop", id);
    goto out;
  }
  if (nbd_export_new(base, ep, src, name, desc, &srv, err, sizeof err) < 0) {
    fail("serve %" PRIu64 ": --nbd: %s", id, err);
    goto out;
  }
  for (size_t i = 0; i < ARRAY_SIZE(signals); i++) {
    sigs[i] = evsignal_new(base, signals[i], serve_signal_cb, base);
    if (sigs[i] == NULL || event_add(sigs[i], NULL) == -1) {
      fail("serve %" PRIu64 ": cannot install signal handlers", id);
      goto out;
    }
  }
  /* The line first: whoever waits for the pidfile may read it then. */
  printf("serving snapshot %" PRIu64 " (%" PRIu64 " bytes) read-only on %s\n",
         id, src->size, nbd_export_where(srv));
  fflush(stdout);
  if (pidfile != NULL) {
    if (nbd_export_port(srv) >= 0 && strcmp(ep->port, "0") == 0) {
      snprintf(portfile, sizeof portfile, "%s.port", pidfile);
      if (write_port_file(portfile, nbd_export_port(srv)) == -1) {
        fail("serve: --pidfile %s: cannot write %s: %s", pidfile, portfile,
             strerror(errno));
        goto out;
      }
      wrote_port = true;
    }
    if (util_write_pidfile(pidfile) == -1) {
      fail("serve: --pidfile %s: %s", pidfile, strerror(errno));
      goto out;
    }
    wrote_pid = true;
  }
  if (event_base_dispatch(base) == -1) {
    fail("serve %" PRIu64 ": the event loop failed", id);
    goto out;
  }
  rc = 0;

out:
  nbd_export_free(srv);
  for (size_t i = 0; i < ARRAY_SIZE(signals); i++)
    if (sigs[i] != NULL)
      event_free(sigs[i]);
  if (base != NULL)
    event_base_free(base);
  if (wrote_pid)
    unlink(pidfile);
  if (wrote_port)
    unlink(portfile);
  snap_source_close(ss);
  return rc;
}

int
main(int argc, char **argv)
{
  static const struct option opts[] = {
    { "store", required_argument, NULL, 's' },
    { "json", no_argument, NULL, 'j' },
    { "to", required_argument, NULL, 't' },
    { "name", required_argument, NULL, 'n' },
    { "nbd", required_argument, NULL, 'N' },
    { "pidfile", required_argument, NULL, 'p' },
    { "stream", no_argument, NULL, 'S' },
    { "out", required_argument, NULL, 'o' },
    { "in", required_argument, NULL, 'i' },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
  };
  const char *dir = NULL, *to = NULL, *name = NULL, *cmd;
  const char *nbd = NULL, *pidfile = NULL, *out = NULL, *in = NULL;
  bool json = false, write_ = false, create = false, stream = false;
  struct endpoint ep;
  struct store *s = NULL;
  uint64_t a = 0, b = 0;
  char err[1024];
  int c, rc;

  /* GNU getopt moves the command and its arguments behind the options,
   * wherever they were given. */
  opterr = 0;                   /* one line of our own instead */
  while ((c = getopt_long(argc, argv, ":hV", opts, NULL)) != -1) {
    switch (c) {
    case 's': dir = optarg; break;
    case 'j': json = true; break;
    case 't': to = optarg; break;
    case 'n': name = optarg; break;
    case 'N': nbd = optarg; break;
    case 'p': pidfile = optarg; break;
    case 'S': stream = true; break;
    case 'o': out = optarg; break;
    case 'i': in = optarg; break;
    case 'h': usage(stdout); return 0;
    case 'V': printf("duplex-store %s\n", DUPLEX_VERSION_TEXT); return 0;
    case ':':
      fprintf(stderr, "duplex-store: %s: missing argument (see --help)\n",
              argv[optind - 1]);
      return EXIT_USAGE;
    default:
      fprintf(stderr, "duplex-store: %s: unknown option (see --help)\n",
              argv[optind - 1]);
      return EXIT_USAGE;
    }
  }
  /* apply-diff runs where there is no store, only the stream and the
   * target. */
  if (optind < argc && strcmp(argv[optind], "apply-diff") == 0) {
    const char *bad = dir ? "--store" : json ? "--json" : stream ? "--stream"
                      : out ? "--out" : name ? "--name" : nbd ? "--nbd"
                      : pidfile ? "--pidfile" : NULL;
    if (argc - optind > 1 || !to) {
      fprintf(stderr, "duplex-store: apply-diff: expected --to PATH [--in "
              "FILE] and no other arguments\n");
      return EXIT_USAGE;
    }
    if (bad) {
      fprintf(stderr, "duplex-store: apply-diff: %s is not an option of "
              "apply-diff (it needs no store: only the stream and --to "
              "PATH)\n", bad);
      return EXIT_USAGE;
    }
    return cmd_apply_diff(to, in);
  }
  if (!dir || optind >= argc) {
    fprintf(stderr, "duplex-store: %s\n", !dir ? "--store DIR is required"
            : "a command is required (list, restore, diff, verify, delete, "
              "import, gc, serve, apply-diff)");
    return EXIT_USAGE;
  }
  cmd = argv[optind];
  {
    const char *const *pos = (const char *const *)argv + optind + 1;
    int np = argc - optind - 1;
#define WANT(n, what)                                                       \
  do {                                                                      \
    if (np != (n)) {                                                        \
      fprintf(stderr, "duplex-store: %s: expected %s\n", cmd, what);        \
      return EXIT_USAGE;                                                    \
    }                                                                       \
  } while (0)
    if (strcmp(cmd, "list") == 0) {
      WANT(0, "no arguments");
    } else if (strcmp(cmd, "restore") == 0) {
      WANT(1, "a snapshot id and --to PATH");
      if (!to || parse_id(pos[0], &a) == -1) {
        fprintf(stderr, "duplex-store: restore: expected ID --to PATH\n");
        return EXIT_USAGE;
      }
    } else if (strcmp(cmd, "diff") == 0) {
      WANT(2, "two snapshot ids");
      /* ID1 0: from an empty volume, every block of ID2 (streams only) */
      if ((!(stream && strcmp(pos[0], "0") == 0) &&
           parse_id(pos[0], &a) == -1) || parse_id(pos[1], &b) == -1) {
        fprintf(stderr, "duplex-store: diff: snapshot ids are positive "
                "numbers (see list)%s\n", stream ? "; ID1 may be 0 (every "
                "block of ID2)" : "");
        return EXIT_USAGE;
      }
      if (stream && json) {
        fprintf(stderr, "duplex-store: diff: --stream and --json exclude "
                "each other\n");
        return EXIT_USAGE;
      }
      if (out && !stream) {
        fprintf(stderr, "duplex-store: diff: --out FILE goes with "
                "--stream\n");
        return EXIT_USAGE;
      }
      if (stream && !out && isatty(STDOUT_FILENO))
        return fail("diff --stream: refusing to write a binary stream to a "
                    "terminal: pipe it (| duplex-store apply-diff --to PATH, "
                    "| ssh HOST duplex-store apply-diff ...), redirect it, "
                    "or give --out FILE");
    } else if (strcmp(cmd, "verify") == 0) {
      if (np > 1 || (np == 1 && parse_id(pos[0], &a) == -1)) {
        fprintf(stderr, "duplex-store: verify: expected at most one "
                "snapshot id\n");
        return EXIT_USAGE;
      }
    } else if (strcmp(cmd, "delete") == 0) {
      WANT(1, "a snapshot id");
      if (parse_id(pos[0], &a) == -1) {
        fprintf(stderr, "duplex-store: delete: a snapshot id is a positive "
                "number (see list)\n");
        return EXIT_USAGE;
      }
      write_ = true;
    } else if (strcmp(cmd, "import") == 0) {
      WANT(1, "a file or device to import");
      to = pos[0];
      write_ = create = true;
    } else if (strcmp(cmd, "gc") == 0) {
      WANT(0, "no arguments");
      write_ = true;
    } else if (strcmp(cmd, "serve") == 0) {
      WANT(1, "a snapshot id and --nbd unix:PATH|HOST:PORT");
      if (parse_id(pos[0], &a) == -1) {
        fprintf(stderr, "duplex-store: serve: a snapshot id is a positive "
                "number (see list)\n");
        return EXIT_USAGE;
      }
      if (!nbd) {
        fprintf(stderr, "duplex-store: serve: --nbd unix:PATH|HOST:PORT is "
                "required\n");
        return EXIT_USAGE;
      }
      if (util_parse_endpoint(nbd, &ep, err, sizeof err) == -1) {
        fprintf(stderr, "duplex-store: serve: --nbd: %s\n", err);
        return EXIT_USAGE;
      }
    } else {
      fprintf(stderr, "duplex-store: unknown command \"%s\" (list, restore, "
              "diff, verify, delete, import, gc, serve, apply-diff)\n", cmd);
      return EXIT_USAGE;
    }
    if ((stream || out) && strcmp(cmd, "diff") != 0) {
      fprintf(stderr, "duplex-store: %s: --stream and --out are options of "
              "diff\n", cmd);
      return EXIT_USAGE;
    }
    if (in) {
      fprintf(stderr, "duplex-store: %s: --in is an option of apply-diff\n",
              cmd);
      return EXIT_USAGE;
    }
    if ((nbd || pidfile) && strcmp(cmd, "serve") != 0) {
      fprintf(stderr, "duplex-store: %s: --nbd and --pidfile are options of "
              "serve\n", cmd);
      return EXIT_USAGE;
    }
  }
  if (store_open(dir, (write_ ? STORE_WRITE : 0) | (create ? STORE_CREATE : 0),
                 &s, err, sizeof err) < 0)
    return fail("%s", err);
  if (strcmp(cmd, "list") == 0)
    rc = cmd_list(s, json);
  else if (strcmp(cmd, "restore") == 0)
    rc = cmd_restore(s, a, to);
  else if (strcmp(cmd, "diff") == 0 && stream)
    rc = cmd_diff_stream(s, a, b, out);
  else if (strcmp(cmd, "diff") == 0)
    rc = cmd_diff(s, a, b, json);
  else if (strcmp(cmd, "verify") == 0)
    rc = cmd_verify(s, a);
  else if (strcmp(cmd, "delete") == 0)
    rc = cmd_delete(s, a);
  else if (strcmp(cmd, "import") == 0)
    rc = cmd_import(s, to, name);
  else if (strcmp(cmd, "serve") == 0)
    rc = cmd_serve(s, a, &ep, pidfile);
  else
    rc = cmd_gc(s);
  store_close(s);
  return rc;
}
