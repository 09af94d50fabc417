/* duplex-primary command line: parsing and validation, no I/O beyond
 * checking that named files are readable. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "version.h"

enum {
  OPT_VOLUME = 256, OPT_META, OPT_NBD, OPT_PEER, OPT_MODE, OPT_ASYNC_BUFFER,
  OPT_TLS_CERT, OPT_TLS_KEY, OPT_TLS_CA, OPT_PEER_NAME, OPT_CONTROL,
  OPT_PIDFILE, OPT_FOREGROUND, OPT_PEER_TIMEOUT, OPT_BITMAP_GRAIN,
  OPT_ON_CONGESTION, OPT_RESYNC_CHECKSUMS, OPT_CONNECT_INTERVAL, OPT_LISTEN,
  OPT_CAPTURE, OPT_TRACE_BUFFER, OPT_FREEZE, OPT_FREEZE_TIMEOUT,
  OPT_SNAPSHOT_EVERY, OPT_PRE_HOOK, OPT_POST_HOOK,
};

static const struct option config_options[] = {
  { "volume", required_argument, NULL, OPT_VOLUME },
  { "meta", required_argument, NULL, OPT_META },
  { "nbd", required_argument, NULL, OPT_NBD },
  { "peer", required_argument, NULL, OPT_PEER },
  { "listen", required_argument, NULL, OPT_LISTEN },
  { "mode", required_argument, NULL, OPT_MODE },
  { "async-buffer", required_argument, NULL, OPT_ASYNC_BUFFER },
  { "tls-cert", required_argument, NULL, OPT_TLS_CERT },
  { "tls-key", required_argument, NULL, OPT_TLS_KEY },
  { "tls-ca", required_argument, NULL, OPT_TLS_CA },
  { "peer-name", required_argument, NULL, OPT_PEER_NAME },
  { "control", required_argument, NULL, OPT_CONTROL },
  { "pidfile", required_argument, NULL, OPT_PIDFILE },
  { "foreground", no_argument, NULL, OPT_FOREGROUND },
  { "peer-timeout", required_argument, NULL, OPT_PEER_TIMEOUT },
  { "connect-interval", required_argument, NULL, OPT_CONNECT_INTERVAL },
  { "bitmap-grain", required_argument, NULL, OPT_BITMAP_GRAIN },
  { "on-congestion", required_argument, NULL, OPT_ON_CONGESTION },
  { "resync-checksums", no_argument, NULL, OPT_RESYNC_CHECKSUMS },
  { "capture", required_argument, NULL, OPT_CAPTURE },
  { "trace-buffer", required_argument, NULL, OPT_TRACE_BUFFER },
  { "freeze", required_argument, NULL, OPT_FREEZE },
  { "freeze-timeout", required_argument, NULL, OPT_FREEZE_TIMEOUT },
  { "snapshot-every", required_argument, NULL, OPT_SNAPSHOT_EVERY },
  { "pre-hook", required_argument, NULL, OPT_PRE_HOOK },
  { "post-hook", required_argument, NULL, OPT_POST_HOOK },
  { "verbose", no_argument, NULL, 'v' },
  { "help", no_argument, NULL, 'h' },
  { "version", no_argument, NULL, 'V' },
  { NULL, 0, NULL, 0 },
};

void
config_usage(FILE *out)
{
  fprintf(out,
"Usage: duplex-primary --volume PATH --meta PATH --nbd unix:PATH|HOST:PORT\n"
"                      --peer HOST:PORT|--listen HOST:PORT\n"
"   or: duplex-primary --capture tail --volume /dev/DEVICE --meta PATH\n"
"                      --peer HOST:PORT|--listen HOST:PORT [--mode async]\n"
"                      [--snapshot-every SECONDS [--freeze MOUNTPOINT]]\n"
"                      [--pre-hook CMD] [--post-hook CMD]\n"
"                      [--freeze-timeout SECONDS] [--trace-buffer SIZE]\n"
"                      --mode sync|async [--async-buffer SIZE]\n"
"                      --tls-cert PEM --tls-key PEM --tls-ca PEM --peer-name NAME\n"
"                      [--on-congestion block|pull-ahead]\n"
"                      [--peer-timeout SECONDS] [--connect-interval DURATION]\n"
"                      [--bitmap-grain SIZE]\n"
"                      [--resync-checksums]\n"
"                      [--control SOCKET] [--pidfile PATH] [--foreground] [-v]\n"
"\n"
"Serves VOLUME over NBD and replicates every write over TLS 1.3 to a\n"
"duplex-secondary.\n"
"\n"
"  --volume PATH        source volume: a regular file or a block device;\n"
"                       its size must be a multiple of 4096 bytes\n"
"  --meta PATH          metadata file (created if missing)\n"
"  --nbd ENDPOINT       NBD listener, unix:/path/sock or HOST:PORT; may be\n"
"                       given up to %d times\n"
"  --peer HOST:PORT     dial the secondary at its replication address\n"
"  --listen HOST:PORT   or let the secondary dial this address instead\n"
"                       (duplex-secondary --peer; port 0: any free port,\n"
"                       written to PIDFILE.port); a newly verified\n"
"                       connection replaces the current one\n"
"  --mode sync|async    sync: a write is answered when it is on both sides;\n"
"                       async: answered when local, the replica lags behind\n"
"  --async-buffer SIZE  async mode: bytes that may be unacknowledged by the\n"
"                       secondary before new writes wait (default 64M);\n"
"                       tail capture: bytes read back and in flight at most\n"
"                       (changes beyond wait in the bitmap: tail capture is\n"
"                       always pulled ahead, --on-congestion changes nothing)\n"
"  --on-congestion block|pull-ahead\n"
"                       async mode, buffer full: block new writes (default),\n"
"                       or pull ahead: stop sending, record the blocks in the\n"
"                       bitmap and resync them once the link catches up\n"
"  --peer-timeout SECS  a secondary silent this long is dropped; writes then\n"
"                       continue locally and are resynced later (default 10);\n"
"                       the secondary adopts it from the primary's hello\n"
"  --connect-interval DURATION\n"
"                       --peer: longest wait between attempts to reach the\n"
"                       secondary\n"
"                       (e.g. 500ms, 5s; default 500ms): a lost link is\n"
"                       retried after 100 ms, then at doubling intervals\n"
"                       up to this one while attempts fail\n"
"  --bitmap-grain SIZE  bytes of volume per bit of the write-intent bitmap\n"
"                       (default 4K: 32 MiB of bitmap per TiB, on disk and\n"
"                       in memory; 64K: 2 MiB per TiB)\n"
"  --resync-checksums   resync: the secondary hashes its blocks first and\n"
"                       only blocks whose hash differs are sent (less\n"
"                       traffic, one round trip per chunk)\n"
"\n"
"Tail capture (--capture tail): replicate a block device that applications\n"
"write directly (no --nbd, nothing to re-point, no kernel module).  The\n"
"block layer's tracepoint block_rq_complete says which ranges completed\n"
"writes, discards or write-zeroes; they go into the bitmap and are read back\n"
"from the device and sent.  At start, after a crash or when trace records\n"
"were lost, the whole device is compared with the secondary by checksums and\n"
"only differing blocks travel.  Asynchronous by nature (--mode async):\n"
"between consistency points the replica is as fresh as possible, not\n"
"write-ordered; snapshots taken at points are crash-consistent.\n"
"  --capture nbd|tail   nbd (default): serve the volume over NBD; tail:\n"
"                       tail --volume, a block device (a loop device counts)\n"
"  --trace-buffer SIZE  tail: trace ring per CPU, a power of two of pages\n"
"                       (default 1M); an overrun makes the agent compare\n"
"                       the whole device\n"
"  --snapshot-every SECS  tail: a consistency point (and a snapshot on the\n"
"                       secondary) every SECS seconds\n"
"  --freeze MOUNTPOINT  tail: freeze this file system (FIFREEZE) at each\n"
"                       point of --snapshot-every, drain every captured\n"
"                       change, place the snapshot, thaw (FITHAW)\n"
"  --freeze-timeout SECS  thaw after this long whatever happens (default\n"
"                       10); a watchdog process also thaws if the agent dies\n"
"  --pre-hook CMD, --post-hook CMD\n"
"                       tail: run with /bin/sh -c before and after each\n"
"                       point (e.g. a database's lock and unlock), with\n"
"                       DUPLEX_POINT set to the snapshot's name; a failing\n"
"                       hook aborts the point, the file system is thawed\n"
"  --tls-cert PEM       this agent's certificate (chain)\n"
"  --tls-key PEM        its private key\n"
"  --tls-ca PEM         CA the secondary's certificate must chain to\n"
"  --peer-name NAME     CN or SAN the secondary's certificate must carry\n"
"  --control SOCKET     control socket for duplexctl\n"
"  --pidfile PATH       written once the agent serves NBD\n"
"  --foreground         stay in the foreground, log to stderr\n"
"  -v, --verbose        debug logging\n"
"  -h, --help           this text\n"
"  -V, --version        print the version\n",
          NBD_MAX_ENDPOINTS);
}

static int
config_check_file(const char *flag, const char *path, char *err,
                  size_t errlen)
{
  if (access(path, R_OK) == -1) {
    snprintf(err, errlen, "%s %s: %s", flag, path, strerror(errno));
    return -1;
  }
  return 0;
}

int
config_parse(int argc, char **argv, struct config *cfg, char *err,
             size_t errlen)
{
  char sub[256];
  bool have_peer = false;
  int c;

  memset(cfg, 0, sizeof *cfg);
  cfg->async_buffer = DEFAULT_ASYNC_BUFFER;
  cfg->peer_timeout_ms = 10000;
  cfg->connect_interval_ms = 500;
  cfg->bitmap_grain = 4096;
  cfg->trace_buffer_pages = 256;
  cfg->freeze_timeout_ms = 10000;
  optind = 1;
  opterr = 0;

  while ((c = getopt_long(argc, argv, ":vhV", config_options, NULL)) != -1) {
    switch (c) {
    case OPT_VOLUME: cfg->volume = optarg; break;
    case OPT_META: cfg->meta = optarg; break;
    case OPT_NBD:
      if (cfg->n_nbd == NBD_MAX_ENDPOINTS) {
        snprintf(err, errlen, "--nbd: at most %d endpoints",
                 NBD_MAX_ENDPOINTS);
        return -1;
      }
      if (util_parse_endpoint(optarg, &cfg->nbd[cfg->n_nbd], sub,
                              sizeof sub) == -1) {
        snprintf(err, errlen, "--nbd %s: %s", optarg, sub);
        return -1;
      }
      cfg->n_nbd++;
      break;
    case OPT_PEER:
    case OPT_LISTEN: {
      const char *flag = c == OPT_PEER ? "--peer" : "--listen";
      if (have_peer) {
        snprintf(err, errlen, "%s %s: --peer or --listen, once (the "
                 "primary either dials its secondary or waits for it)",
                 flag, optarg);
        return -1;
      }
      if (util_parse_endpoint(optarg, &cfg->peer, sub, sizeof sub) == -1) {
        snprintf(err, errlen, "%s %s: %s", flag, optarg, sub);
        return -1;
      }
      if (cfg->peer.is_unix) {
        snprintf(err, errlen, "%s %s: must be HOST:PORT", flag, optarg);
        return -1;
      }
      cfg->listen = c == OPT_LISTEN;
      have_peer = true;
      break;
    }
    case OPT_MODE:
      if (strcmp(optarg, "sync") == 0)
        cfg->mode = REPL_SYNC;
      else if (strcmp(optarg, "async") == 0)
        cfg->mode = REPL_ASYNC;
      else {
        snprintf(err, errlen, "--mode %s: must be sync or async", optarg);
        return -1;
      }
      break;
    case OPT_ASYNC_BUFFER:
      if (util_parse_size(optarg, &cfg->async_buffer, sub, sizeof sub) == -1) {
        snprintf(err, errlen, "--async-buffer %s: %s", optarg, sub);
        return -1;
      }
      if (cfg->async_buffer < 1024 * 1024) {
        snprintf(err, errlen, "--async-buffer %s: must be at least 1M",
                 optarg);
        return -1;
      }
      break;
    case OPT_PEER_TIMEOUT: {
      char *end;
      unsigned long v;
      errno = 0;
      v = strtoul(optarg, &end, 10);
      if (errno || end == optarg || *end || v < 1 || v > 3600) {
        snprintf(err, errlen, "--peer-timeout %s: must be 1..3600 seconds",
                 optarg);
        return -1;
      }
      cfg->peer_timeout_ms = (unsigned)v * 1000;
      break;
    }
    case OPT_CONNECT_INTERVAL:
      if (util_parse_connect_interval(optarg, &cfg->connect_interval_ms, err,
                                      errlen) == -1)
        return -1;
      break;
    case OPT_BITMAP_GRAIN: {
      uint64_t g;
      if (util_parse_size(optarg, &g, sub, sizeof sub) == -1) {
        snprintf(err, errlen, "--bitmap-grain %s: %s", optarg, sub);
        return -1;
      }
      if (g < 4096 || g > (1u << 24) || (g & (g - 1))) {
        snprintf(err, errlen, "--bitmap-grain %s: must be a power of two "
                 "from 4K to 16M", optarg);
        return -1;
      }
      cfg->bitmap_grain = (uint32_t)g;
      break;
    }
    case OPT_ON_CONGESTION:
      if (strcmp(optarg, "block") == 0)
        cfg->pull_ahead = false;
      else if (strcmp(optarg, "pull-ahead") == 0)
        cfg->pull_ahead = true;
      else {
        snprintf(err, errlen, "--on-congestion %s: must be block or "
                 "pull-ahead", optarg);
        return -1;
      }
      break;
    case OPT_RESYNC_CHECKSUMS: cfg->resync_checksums = true; break;
    case OPT_CAPTURE:
      if (strcmp(optarg, "nbd") == 0)
        cfg->capture = CAPTURE_NBD;
      else if (strcmp(optarg, "tail") == 0)
        cfg->capture = CAPTURE_TAIL;
      else {
        snprintf(err, errlen, "--capture %s: must be nbd or tail", optarg);
        return -1;
      }
      break;
    case OPT_TRACE_BUFFER: {
      uint64_t b;
      if (util_parse_size(optarg, &b, sub, sizeof sub) == -1) {
        snprintf(err, errlen, "--trace-buffer %s: %s", optarg, sub);
        return -1;
      }
      if (b < 4096 || b > (256u << 20) || (b & (b - 1))) {
        snprintf(err, errlen, "--trace-buffer %s: must be a power of two "
                 "from 4K to 256M", optarg);
        return -1;
      }
      cfg->trace_buffer_pages = (unsigned)(b / 4096);
      break;
    }
    case OPT_FREEZE: cfg->freeze = optarg; break;
    case OPT_PRE_HOOK: cfg->pre_hook = optarg; break;
    case OPT_POST_HOOK: cfg->post_hook = optarg; break;
    case OPT_FREEZE_TIMEOUT:
    case OPT_SNAPSHOT_EVERY: {
      const char *flag = c == OPT_FREEZE_TIMEOUT ? "--freeze-timeout"
                                                 : "--snapshot-every";
      char *end;
      unsigned long v;
      errno = 0;
      v = strtoul(optarg, &end, 10);
      if (errno || end == optarg || *end || v < 1 || v > 86400) {
        snprintf(err, errlen, "%s %s: must be 1..86400 seconds", flag,
                 optarg);
        return -1;
      }
      if (c == OPT_FREEZE_TIMEOUT)
        cfg->freeze_timeout_ms = (unsigned)v * 1000;
      else
        cfg->snapshot_every_ms = (unsigned)v * 1000;
      break;
    }
    case OPT_TLS_CERT: cfg->tls.cert = optarg; break;
    case OPT_TLS_KEY: cfg->tls.key = optarg; break;
    case OPT_TLS_CA: cfg->tls.ca = optarg; break;
    case OPT_PEER_NAME: cfg->tls.peer_name = optarg; break;
    case OPT_CONTROL: cfg->control = optarg; break;
    case OPT_PIDFILE: cfg->pidfile = optarg; break;
    case OPT_FOREGROUND: cfg->foreground = true; break;
    case 'v': cfg->verbose = true; break;
    case 'h': config_usage(stdout); return 1;
    case 'V': printf("duplex-primary %s\n", DUPLEX_VERSION_TEXT); return 1;
    case ':':
      snprintf(err, errlen, "%s: missing argument", argv[optind - 1]);
      return -1;
    default:
      snprintf(err, errlen, "%s: unknown option (see --help)",
               argv[optind - 1]);
      return -1;
    }
  }
  if (optind < argc) {
    snprintf(err, errlen, "%s: unexpected argument (see --help)",
             argv[optind]);
    return -1;
  }

#define REQUIRE(cond, flag)                                                    \
  if (!(cond)) {                                                               \
    snprintf(err, errlen, "%s is required (see --help)", flag);                \
    return -1;                                                                 \
  }
  REQUIRE(cfg->volume, "--volume");
  REQUIRE(cfg->meta, "--meta");
  if (cfg->capture == CAPTURE_TAIL && cfg->n_nbd > 0) {
    snprintf(err, errlen, "--nbd: not with --capture tail (applications "
             "keep writing the device directly)");
    return -1;
  }
  if (cfg->capture == CAPTURE_NBD) {
    REQUIRE(cfg->n_nbd > 0, "--nbd");
  }
  REQUIRE(have_peer, "--peer (or --listen)");
  if (cfg->capture == CAPTURE_TAIL && !cfg->mode)
    cfg->mode = REPL_ASYNC; /* the only mode tail capture has */
  REQUIRE(cfg->mode, "--mode");
  REQUIRE(cfg->tls.cert, "--tls-cert");
  REQUIRE(cfg->tls.key, "--tls-key");
  REQUIRE(cfg->tls.ca, "--tls-ca");
  REQUIRE(cfg->tls.peer_name && *cfg->tls.peer_name, "--peer-name");
#undef REQUIRE

  if (cfg->capture == CAPTURE_TAIL && cfg->mode == REPL_SYNC) {
    snprintf(err, errlen, "--mode sync: not with --capture tail: the "
             "applications' writes complete on the device before the trace "
             "reports them, so they cannot wait for the secondary; use "
             "--mode async (consistency points give crash-consistent "
             "snapshots), or --capture nbd for synchronous replication");
    return -1;
  }
  if (cfg->capture == CAPTURE_NBD &&
      (cfg->freeze || cfg->snapshot_every_ms || cfg->pre_hook ||
       cfg->post_hook)) {
    snprintf(err, errlen, "%s: only with --capture tail",
             cfg->freeze ? "--freeze" : cfg->snapshot_every_ms
             ? "--snapshot-every" : cfg->pre_hook ? "--pre-hook"
             : "--post-hook");
    return -1;
  }
  if (cfg->freeze && !cfg->snapshot_every_ms) {
    snprintf(err, errlen, "--freeze %s: needs --snapshot-every (or use "
             "duplexctl snapshot create --freeze)", cfg->freeze);
    return -1;
  }
  if (cfg->pull_ahead && cfg->mode != REPL_ASYNC) {
    snprintf(err, errlen, "--on-congestion pull-ahead: needs --mode async "
             "(sync mode never buffers)");
    return -1;
  }
  if (config_check_file("--tls-cert", cfg->tls.cert, err, errlen) == -1 ||
      config_check_file("--tls-key", cfg->tls.key, err, errlen) == -1 ||
      config_check_file("--tls-ca", cfg->tls.ca, err, errlen) == -1)
    return -1;
  return 0;
}
