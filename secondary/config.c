/* duplex-secondary command line: argv in, struct config or a one-line error
 * out.  No I/O (files are checked by main.c). */
#include <getopt.h>
#include <string.h>

#include "internal.h"
#include "version.h"

enum {
  OPT_VOLUME = 256, OPT_META, OPT_LISTEN, OPT_TLS_CERT, OPT_TLS_KEY,
  OPT_TLS_CA, OPT_PEER_NAME, OPT_CONTROL, OPT_PIDFILE, OPT_FOREGROUND,
  OPT_HELP, OPT_VERSION, OPT_SNAPSHOT_STORE, OPT_SNAPSHOT_EVERY, OPT_KEEP,
  OPT_KEEP_MANUAL, OPT_SNAPSHOT_COPY_RATE, OPT_PEER, OPT_CONNECT_INTERVAL,
};

static const struct option config_options[] = {
  { "volume", required_argument, NULL, OPT_VOLUME },
  { "meta", required_argument, NULL, OPT_META },
  { "listen", required_argument, NULL, OPT_LISTEN },
  { "peer", required_argument, NULL, OPT_PEER },
  { "connect-interval", required_argument, NULL, OPT_CONNECT_INTERVAL },
  { "tls-cert", required_argument, NULL, OPT_TLS_CERT },
  { "tls-key", required_argument, NULL, OPT_TLS_KEY },
  { "tls-ca", required_argument, NULL, OPT_TLS_CA },
  { "peer-name", required_argument, NULL, OPT_PEER_NAME },
  { "control", required_argument, NULL, OPT_CONTROL },
  { "pidfile", required_argument, NULL, OPT_PIDFILE },
  { "foreground", no_argument, NULL, OPT_FOREGROUND },
  { "snapshot-store", required_argument, NULL, OPT_SNAPSHOT_STORE },
  { "snapshot-every", required_argument, NULL, OPT_SNAPSHOT_EVERY },
  { "keep", required_argument, NULL, OPT_KEEP },
  { "keep-manual", no_argument, NULL, OPT_KEEP_MANUAL },
  { "snapshot-copy-rate", required_argument, NULL, OPT_SNAPSHOT_COPY_RATE },
  { "verbose", no_argument, NULL, 'v' },
  { "help", no_argument, NULL, OPT_HELP },
  { "version", no_argument, NULL, OPT_VERSION },
  { NULL, 0, NULL, 0 },
};

void
config_usage(FILE *out)
{
  fprintf(out,
"usage: duplex-secondary --volume PATH --meta PATH\n"
"                        --listen HOST:PORT|--peer HOST:PORT\n"
"                        --tls-cert PEM --tls-key PEM --tls-ca PEM\n"
"                        --peer-name NAME [--control SOCKET]\n"
"                        [--snapshot-store DIR] [--snapshot-every DURATION]\n"
"                        [--keep SPEC] [--keep-manual]\n"
"                        [--snapshot-copy-rate SIZE]\n"
"                        [--connect-interval DURATION]\n"
"                        [--pidfile PATH] [--foreground] [-v|--verbose]\n"
"\n"
"Receives replicated writes from duplex-primary over TLS 1.3 and applies\n"
"them, in order, to the replica volume.\n"
"\n"
"  --volume PATH       replica: block device or file (created sparse at the\n"
"                      primary's size if missing)\n"
"  --meta PATH         metadata file (created if missing)\n"
"  --listen HOST:PORT  where the primary connects (port 0: any free port,\n"
"                      logged and written to PIDFILE.port)\n"
"  --peer HOST:PORT    or dial the primary instead (duplex-primary\n"
"                      --listen), e.g. from behind NAT; a lost link is\n"
"                      dialled again after 100 ms, then at doubling\n"
"                      intervals up to --connect-interval (default 500ms)\n"
"                      while attempts fail\n"
"  --tls-cert PEM      this agent's certificate (chain)\n"
"  --tls-key PEM       its private key\n"
"  --tls-ca PEM        CA the primary's certificate must chain to\n"
"  --peer-name NAME    CN or SAN the primary's certificate must carry\n"
"  --control SOCKET    control socket for duplexctl\n"
"  --snapshot-store DIR\n"
"                      keep snapshots of the replica in this store (created\n"
"                      if missing; see duplex-store); enables `duplexctl\n"
"                      snapshot ...` here and on the primary\n"
"  --snapshot-every DURATION\n"
"                      take a snapshot this often (e.g. 10m, 1h)\n"
"  --keep SPEC         which scheduled and before-resync snapshots to keep:\n"
"                      last=N,hourly=N,daily=N,weekly=N,monthly=N,yearly=N\n"
"                      (restic's forget rules, in UTC; default: keep all)\n"
"  --keep-manual       apply --keep to manual snapshots too (default: kept\n"
"                      until deleted)\n"
"  --snapshot-copy-rate SIZE\n"
"                      at most SIZE bytes per second of background snapshot\n"
"                      copying from the replica (e.g. 50M; default: no\n"
"                      limit; copy-before-write is never delayed)\n"
"  --pidfile PATH      written once the agent is ready (listening or\n"
"                      about to dial)\n"
"  --foreground        stay in the foreground, log to stderr\n"
"  -v, --verbose       debug logging\n");
}

/* The flag as the user typed it, for messages. */
static const char *
config_flag_name(int c)
{
  const struct option *o;

  if (c == 'v')
    return "-v";
  for (o = config_options; o->name != NULL; o++)
    if (o->val == c)
      return o->name;
  return "?";
}

static int
config_required(const char *val, const char *flag, char *err, size_t errlen)
{
  if (val != NULL)
    return 0;
  snprintf(err, errlen, "--%s: missing; it is required (see --help)", flag);
  return -1;
}

int
config_parse(int argc, char **argv, struct config *cfg, FILE *out, char *err,
             size_t errlen)
{
  char e[256];
  bool interval_given = false;
  int c;

  memset(cfg, 0, sizeof *cfg);
  cfg->connect_interval_ms = 500;
  optind = 1;
  opterr = 0;
  /* '+': stop at the first non-option; ':' report missing arguments. */
  while ((c = getopt_long(argc, argv, "+:v", config_options, NULL)) != -1) {
    /* "--volume --foreground": a forgotten value, not a file name. */
    if (optarg != NULL && strncmp(optarg, "--", 2) == 0) {
      snprintf(err, errlen, "--%s: missing value (%s is an option; write "
               "./%s for a file of that name)", config_flag_name(c), optarg,
               optarg);
      return -1;
    }
    switch (c) {
    case OPT_VOLUME: cfg->volume = optarg; break;
    case OPT_META: cfg->meta = optarg; break;
    case OPT_LISTEN:
    case OPT_PEER:
      if (cfg->listen_arg != NULL) {
        snprintf(err, errlen, "--%s %s: --listen or --peer, once (the "
                 "secondary either waits for its primary or dials it)",
                 config_flag_name(c), optarg);
        return -1;
      }
      cfg->listen_arg = optarg;
      cfg->dial = c == OPT_PEER;
      break;
    case OPT_CONNECT_INTERVAL:
      if (util_parse_connect_interval(optarg, &cfg->connect_interval_ms, err,
                                      errlen) == -1)
        return -1;
      interval_given = true;
      break;
    case OPT_TLS_CERT: cfg->tls.cert = optarg; break;
    case OPT_TLS_KEY: cfg->tls.key = optarg; break;
    case OPT_TLS_CA: cfg->tls.ca = optarg; break;
    case OPT_PEER_NAME: cfg->tls.peer_name = optarg; break;
    case OPT_CONTROL: cfg->control = optarg; break;
    case OPT_PIDFILE: cfg->pidfile = optarg; break;
    case OPT_FOREGROUND: cfg->foreground = true; break;
    case OPT_SNAPSHOT_STORE: cfg->snapshot_store = optarg; break;
    case OPT_SNAPSHOT_EVERY:
      if (util_parse_duration_ms(optarg, &cfg->snapshot_every_ms, e,
                                 sizeof e) == -1) {
        snprintf(err, errlen, "--snapshot-every %s: %s", optarg, e);
        return -1;
      }
      if (cfg->snapshot_every_ms < 1000) {
        snprintf(err, errlen, "--snapshot-every %s: at least 1s", optarg);
        return -1;
      }
      break;
    case OPT_KEEP:
      if (retention_parse(optarg, &cfg->keep, e, sizeof e) == -1) {
        snprintf(err, errlen, "--keep %s: %s", optarg, e);
        return -1;
      }
      break;
    case OPT_KEEP_MANUAL: cfg->keep_manual = true; break;
    case OPT_SNAPSHOT_COPY_RATE:
      if (util_parse_size(optarg, &cfg->snapshot_copy_rate, e,
                          sizeof e) == -1 ||
          cfg->snapshot_copy_rate < 1024 * 1024) {
        snprintf(err, errlen, "--snapshot-copy-rate %s: %s", optarg,
                 cfg->snapshot_copy_rate ? "at least 1M per second" : e);
        return -1;
      }
      break;
    case 'v': cfg->verbose = true; break;
    case OPT_HELP:
      config_usage(out);
      return 1;
    case OPT_VERSION:
      fprintf(out, "duplex-secondary %s\n", DUPLEX_VERSION_TEXT);
      return 1;
    case ':':
      snprintf(err, errlen, "--%s: missing value (see --help)",
               config_flag_name(optopt));
      return -1;
    default:
      if (optopt != 0 && optopt < 256)
        snprintf(err, errlen, "-%c: unknown option (see --help)", optopt);
      else
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

  if (config_required(cfg->volume, "volume", err, errlen) == -1 ||
      config_required(cfg->meta, "meta", err, errlen) == -1 ||
      config_required(cfg->listen_arg, "listen (or --peer)", err,
                      errlen) == -1 ||
      config_required(cfg->tls.cert, "tls-cert", err, errlen) == -1 ||
      config_required(cfg->tls.key, "tls-key", err, errlen) == -1 ||
      config_required(cfg->tls.ca, "tls-ca", err, errlen) == -1 ||
      config_required(cfg->tls.peer_name, "peer-name", err, errlen) == -1)
    return -1;

  if (util_parse_endpoint(cfg->listen_arg, &cfg->listen, e, sizeof e) == -1) {
    snprintf(err, errlen, "--%s %s: %s", cfg->dial ? "peer" : "listen",
             cfg->listen_arg, e);
    return -1;
  }
  if (cfg->listen.is_unix) {
    snprintf(err, errlen, "--%s %s: expected HOST:PORT (replication runs "
             "over TCP)", cfg->dial ? "peer" : "listen", cfg->listen_arg);
    return -1;
  }
  if (cfg->dial && strcmp(cfg->listen.port, "0") == 0) {
    snprintf(err, errlen, "--peer %s: port 0 can only be listened on",
             cfg->listen_arg);
    return -1;
  }
  if (interval_given && !cfg->dial) {
    snprintf(err, errlen, "--connect-interval: only with --peer (a "
             "listening secondary waits for its primary to dial)");
    return -1;
  }
  if (cfg->tls.peer_name[0] == '\0') {
    snprintf(err, errlen, "--peer-name: must not be empty");
    return -1;
  }
  if (cfg->volume[0] == '\0' || cfg->meta[0] == '\0') {
    snprintf(err, errlen, "--%s: must not be empty",
             cfg->volume[0] == '\0' ? "volume" : "meta");
    return -1;
  }
  cfg->keep.manual = cfg->keep_manual;
  if (!cfg->snapshot_store &&
      (cfg->snapshot_every_ms || cfg->keep_manual || cfg->keep.last ||
       cfg->keep.hourly || cfg->keep.daily || cfg->keep.weekly ||
       cfg->keep.monthly || cfg->keep.yearly || cfg->snapshot_copy_rate)) {
    snprintf(err, errlen, "--%s: needs --snapshot-store DIR",
             cfg->snapshot_every_ms ? "snapshot-every"
             : cfg->keep_manual ? "keep-manual"
             : cfg->snapshot_copy_rate ? "snapshot-copy-rate" : "keep");
    return -1;
  }
  if (strcmp(cfg->volume, cfg->meta) == 0) {
    snprintf(err, errlen, "--meta %s: same file as --volume; give the "
             "metadata its own file", cfg->meta);
    return -1;
  }
  return 0;
}
