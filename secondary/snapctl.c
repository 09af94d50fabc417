/* `duplexctl snapshot ...` on the secondary: create (answered once the
 * snapshot is taken, its copy going on in the background), list, delete.
 * Without --snapshot-store every one answers how to enable snapshots. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#include "control.h"
#include "format.h"
#include "snaplist.h"

#define SNAPCTL_USAGE "snapshot create [--name NAME] [--json] | snapshot " \
                      "list [--json] | snapshot delete ID | snapshot " \
                      "diff ID1 ID2 [--json] | snapshot " \
                      "export ID --nbd unix:PATH|HOST:PORT | snapshot " \
                      "unexport ID"

struct snapctl_create {
  struct control_pending *reply; /* NULL while the command runs */
  bool json;
  bool done;                    /* taken (or refused) before it returned */
  uint64_t id;
  char err[512];
};

static void
snapctl_answer(const struct snapctl_create *c, struct evbuffer *body)
{
  if (c->id == 0)
    evbuffer_add_printf(body, "snapshot not taken: %s\n", c->err);
  else if (c->json)
    evbuffer_add_printf(body, "{\"id\": %" PRIu64 "}\n", c->id);
  else
    evbuffer_add_printf(body, "snapshot %" PRIu64 " taken; its blocks are "
                        "copied to the store in the background (see "
                        "snapshot list)\n", c->id);
}

static void
snapctl_created(void *arg, uint64_t id, const char *err)
{
  struct snapctl_create *c = arg;
  struct evbuffer *body;

  c->id = err ? 0 : id;
  if (err)
    snprintf(c->err, sizeof c->err, "%s", err);
  if (!c->reply) {
    c->done = true;             /* snapctl_command answers */
    return;
  }
  body = evbuffer_new();
  if (body)
    snapctl_answer(c, body);
  control_finish(c->reply, c->id != 0, body);
  if (body)
    evbuffer_free(body);
  free(c);
}

/* The store thread computed a diff (never before snapctl_command
 * returned: it only runs when the loop passes the result back). */
static void
snapctl_diffed(void *arg, const char *text, const char *err)
{
  struct control_pending **reply = arg;
  struct evbuffer *body = evbuffer_new();

  if (body) {
    if (text)
      evbuffer_add(body, text, strlen(text));
    else
      evbuffer_add_printf(body, "snapshot diff: %s\n", err);
  }
  control_finish(*reply, text != NULL, body);
  if (body)
    evbuffer_free(body);
  free(reply);
}

static int
snapctl_list(struct secondary *s, bool json, struct evbuffer *out)
{
  struct snap_info *v;
  size_t n = snap_list(s->snap, &v);
  struct snaplist l;

  snaplist_begin(&l, out, SNAPLIST_AGENT, json);
  for (size_t i = 0; i < n; i++)
    snaplist_add(&l, &(struct snaplist_entry){
      .id = v[i].id, .name = v[i].name, .created_ns = v[i].created_ns,
      .epoch = v[i].epoch, .reason = v[i].reason,
      .size_bytes = v[i].size_bytes, .stored_bytes = v[i].stored_bytes,
      .complete = v[i].complete, .copied_blocks = v[i].copied_blocks,
      .total_blocks = v[i].total_blocks });
  snaplist_end(&l);
  free(v);
  return 0;
}

int
snapctl_command(struct secondary *s, int argc, char **argv,
                struct evbuffer *out)
{
  const char *name = "";
  bool json = false;
  char err[512];
  int i;

  if (!snap_enabled(s->snap)) {
    evbuffer_add_printf(out, "snapshots are not enabled: start "
                        "duplex-secondary with --snapshot-store DIR\n");
    return -1;
  }
  if (argc < 2) {
    evbuffer_add_printf(out, "usage: " SNAPCTL_USAGE "\n");
    return -1;
  }
  if (strcmp(argv[1], "diff") == 0) {
    char *e1 = NULL, *e2 = NULL;
    uint64_t a = argc >= 4 ? strtoull(argv[2], &e1, 10) : 0;
    uint64_t b = argc >= 4 ? strtoull(argv[3], &e2, 10) : 0;
    struct control_pending **reply;
    json = argc == 5 && strcmp(argv[4], "--json") == 0;
    if (!a || !b || *e1 || *e2 || (argc != 4 && !json)) {
      evbuffer_add_printf(out, "usage: snapshot diff ID1 ID2 [--json]\n");
      return -1;
    }
    reply = calloc(1, sizeof *reply);
    if (!reply)
      abort();
    if (snap_diff(s->snap, a, b, json, snapctl_diffed, reply, err,
                  sizeof err) == -1) {
      free(reply);
      evbuffer_add_printf(out, "%s\n", err);
      return -1;
    }
    *reply = control_defer(s->control);
    return CONTROL_LATER;
  }
  if (strcmp(argv[1], "export") == 0 || strcmp(argv[1], "unexport") == 0) {
    bool exp = argv[1][0] == 'e';
    char *end = NULL, where[300];
    uint64_t id = argc >= 3 ? strtoull(argv[2], &end, 10) : 0;
    if (id == 0 || *end || (exp ? argc != 5 || strcmp(argv[3], "--nbd") != 0
                                : argc != 3)) {
      evbuffer_add_printf(out, "usage: snapshot export ID --nbd "
                          "unix:PATH|HOST:PORT, snapshot unexport ID\n");
      return -1;
    }
    if (exp ? snap_export(s->snap, id, argv[4], where, sizeof where, err,
                          sizeof err)
            : snap_unexport(s->snap, id, err, sizeof err)) {
      evbuffer_add_printf(out, "%s\n", err);
      return -1;
    }
    if (exp)
      evbuffer_add_printf(out, "snapshot %" PRIu64 " exported read-only on "
                          "%s\n", id, where);
    else
      evbuffer_add_printf(out, "snapshot %" PRIu64 " unexported\n", id);
    return 0;
  }
  for (i = 2; i < argc; i++) {
    if (strcmp(argv[i], "--json") == 0) {
      json = true;
    } else if (strcmp(argv[i], "--name") == 0 && i + 1 < argc &&
               strcmp(argv[1], "create") == 0) {
      name = argv[++i];
    } else if (strcmp(argv[1], "delete") == 0 && i == 2) {
      continue;
    } else {
      evbuffer_add_printf(out, "snapshot %s: unexpected %s; usage: "
                          SNAPCTL_USAGE "\n", argv[1], argv[i]);
      return -1;
    }
  }
  if (strcmp(argv[1], "list") == 0)
    return snapctl_list(s, json, out);
  if (strcmp(argv[1], "create") == 0) {
    struct snapctl_create *c = calloc(1, sizeof *c);
    if (!c)
      abort();
    c->json = json;
    if (snap_request(s->snap, SNAP_MANUAL, name, 0, snapctl_created, c, err,
                     sizeof err) == -1) {
      free(c);
      evbuffer_add_printf(out, "snapshot not taken: %s\n", err);
      return -1;
    }
    if (c->done) {              /* nothing was in flight: taken at once */
      int rc = c->id ? 0 : -1;
      snapctl_answer(c, out);
      free(c);
      return rc;
    }
    /* Answered when the snapshot is taken (the next apply barrier). */
    c->reply = control_defer(s->control);
    return CONTROL_LATER;
  }
  if (strcmp(argv[1], "delete") == 0) {
    char *end;
    uint64_t id = argc == 3 ? strtoull(argv[2], &end, 10) : 0;
    if (argc != 3 || *end || id == 0) {
      evbuffer_add_printf(out, "usage: snapshot delete ID (see snapshot "
                          "list)\n");
      return -1;
    }
    if (snap_delete(s->snap, id, err, sizeof err) == -1) {
      evbuffer_add_printf(out, "%s\n", err);
      return -1;
    }
    evbuffer_add_printf(out, "snapshot %" PRIu64 " is being deleted (the "
                        "store frees what no other snapshot needs)\n", id);
    return 0;
  }
  evbuffer_add_printf(out, "unknown snapshot command %s; usage: "
                      SNAPCTL_USAGE "\n", argv[1]);
  return -1;
}
