/* `duplexctl snapshot create [--name NAME] [--json]` on the primary: a
 * SNAPSHOT marker goes into the replication stream behind every write
 * answered so far, and the reply (the secondary's snapshot id) comes once
 * the secondary has taken it.  The snapshot lives on the secondary; list,
 * delete and export are commands of the secondary. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#include "control.h"

struct snapctl_op {
  struct repl_op op;            /* first: the ring holds &op */
  struct control_pending *reply;
  bool json;
};

static void
snapctl_acked(struct repl_op *op, bool ok)
{
  struct snapctl_op *s = (struct snapctl_op *)op;
  struct evbuffer *body = evbuffer_new();
  bool taken = ok && op->snapshot_done && op->snapshot_done->id != 0;

  if (body) {
    if (!ok)
      evbuffer_add_printf(body, "snapshot not taken: the link to the "
                          "secondary dropped before it answered\n");
    else if (!taken)
      evbuffer_add_printf(body, "snapshot not taken: the secondary says: "
                          "%s\n", op->snapshot_done && op->snapshot_done->error
                          ? op->snapshot_done->error : "no reason given");
    else if (s->json)
      evbuffer_add_printf(body, "{\"id\": %" PRIu64 "}\n",
                          op->snapshot_done->id);
    else
      evbuffer_add_printf(body, "snapshot %" PRIu64 " taken on the "
                          "secondary (its blocks are copied there in the "
                          "background)\n", op->snapshot_done->id);
  }
  control_finish(s->reply, taken, body);
  if (body)
    evbuffer_free(body);
  free(s);
}

int
snapctl_command(struct primary *p, int argc, char **argv,
                struct evbuffer *out)
{
  const char *name = "";
  const char *freeze = NULL;
  struct snapctl_op *s;
  bool json = false;

  if (argc < 2 || strcmp(argv[1], "create") != 0) {
    evbuffer_add_printf(out, "usage: snapshot create [--name NAME] [--json]"
                        " [--freeze MOUNTPOINT] (snapshots live on the "
                        "secondary: list, delete and export them with "
                        "duplexctl on its control socket)\n");
    return -1;
  }
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "--json") == 0) {
      json = true;
    } else if (strcmp(argv[i], "--freeze") == 0 && i + 1 < argc) {
      freeze = argv[++i];
    } else if (strcmp(argv[i], "--name") == 0 && i + 1 < argc) {
      name = argv[++i];
      if (strlen(name) > 255) {
        evbuffer_add_printf(out, "snapshot create: a name is at most 255 "
                            "bytes\n");
        return -1;
      }
    } else {
      evbuffer_add_printf(out, "snapshot create: unexpected %s; usage: "
                          "snapshot create [--name NAME] [--json] "
                          "[--freeze MOUNTPOINT]\n", argv[i]);
      return -1;
    }
  }
  if (p->tail)
    return tail_snapshot_command(p, freeze, name, json, out);
  if (freeze) {
    evbuffer_add_printf(out, "snapshot create --freeze: only with --capture "
                        "tail (through NBD every answered write is in the "
                        "stream in order: a snapshot is crash-consistent "
                        "without a freeze)\n");
    return -1;
  }
  if (!repl_connected(p->repl)) {
    evbuffer_add_printf(out, "snapshot not taken: the secondary is not "
                        "connected (link %s)\n",
                        repl_link_state(p->repl));
    return -1;
  }
  if (restore_running(p)) {
    evbuffer_add_printf(out, "snapshot not taken: a restore is in "
                        "progress and the replica is half restored; try "
                        "again once status says in-sync\n");
    return -1;
  }
  if (p->ahead || resync_active(p->resync)) {
    evbuffer_add_printf(out, "snapshot not taken: the replica is being "
                        "resynced and does not hold a point in time yet; "
                        "try again once status says in-sync\n");
    return -1;
  }
  s = calloc(1, sizeof *s);
  if (!s)
    abort();
  s->json = json;
  s->op.acked = snapctl_acked;
  /* Deferred first: the answer may come while the marker is sent. */
  s->reply = control_defer(p->control);
  if (repl_send_snapshot(p->repl, &s->op, name, 0) == -1)
    snapctl_acked(&s->op, false);
  return CONTROL_LATER;
}
