/* The snapshot list of duplex-store list and of the secondary's snapshot
 * list (snaplist.h): one formatter, so that both print the same JSON and
 * escape names alike. */
#include <inttypes.h>
#include <stdio.h>
#include <time.h>

#include "format.h"
#include "snaplist.h"
#include "util.h"

/* A JSON string.  Not common/json.c's escaping: the list has always
 * written every control character as \u00XX (\n included) and DEL as it
 * is, and its output stays byte for byte what scripts have seen. */
static void
snaplist_json_string(struct evbuffer *out, const char *s)
{
  const char *run = s;

  evbuffer_add(out, "\"", 1);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;

    if (ch != '"' && ch != '\\' && ch >= 0x20)
      continue;
    evbuffer_add(out, run, (size_t)(s - run));
    if (ch < 0x20)
      evbuffer_add_printf(out, "\\u%04x", ch);
    else
      evbuffer_add_printf(out, "\\%c", ch);
    run = s + 1;
  }
  evbuffer_add(out, run, (size_t)(s - run));
  evbuffer_add(out, "\"", 1);
}

/* One line of the table: the header or a snapshot (numbers as strings,
 * right-aligned like the header's labels). */
static void
snaplist_line(struct snaplist *l, const char *id, const char *created,
              const char *reason, const char *state, const char *size,
              const char *stored, const char *epoch, const char *name)
{
  if (l->view == SNAPLIST_AGENT)
    evbuffer_add_printf(l->out, "%-6s %-20s %-14s %-9s %14s %14s  %s\n", id,
                        created, reason, state, size, stored, name);
  else
    evbuffer_add_printf(l->out, "%-6s %-20s %-14s %12s %12s %8s  %s\n", id,
                        created, reason, size, stored, epoch, name);
}

void
snaplist_rfc3339(uint64_t ns, char *out, size_t outlen)
{
  util_rfc3339(ns, out, outlen);
}

void
snaplist_begin(struct snaplist *l, struct evbuffer *out,
               enum snaplist_view view, bool json)
{
  l->out = out;
  l->view = view;
  l->json = json;
  l->n = 0;
  if (json)
    evbuffer_add(out, "[", 1);
  else
    snaplist_line(l, "ID", "CREATED", "REASON", "STATE", "SIZE", "STORED",
                  "EPOCH", "NAME");
}

static void
snaplist_json(struct snaplist *l, const struct snaplist_entry *e,
              const char *when)
{
  evbuffer_add_printf(l->out, "%s\n  {\"id\": %" PRIu64 ", \"name\": ",
                      l->n ? "," : "", e->id);
  snaplist_json_string(l->out, e->name);
  evbuffer_add_printf(l->out, ", \"created\": \"%s\", \"state\": \"%s\", "
                      "\"size_bytes\": %" PRIu64 ", \"stored_bytes\": %"
                      PRIu64 ", \"epoch\": %" PRIu64 ", \"reason\": \"%s\"",
                      when, e->complete ? "complete" : "copying",
                      e->size_bytes, e->stored_bytes, e->epoch,
                      format_reason_name(e->reason));
  if (l->view == SNAPLIST_STORE)
    evbuffer_add_printf(l->out, ", \"parent\": %" PRIu64 ", \"full\": %s",
                        e->parent, e->parent ? "false" : "true");
  else if (!e->complete)
    evbuffer_add_printf(l->out, ", \"copied_blocks\": %" PRIu64
                        ", \"total_blocks\": %" PRIu64, e->copied_blocks,
                        e->total_blocks);
  evbuffer_add(l->out, "}", 1);
}

void
snaplist_add(struct snaplist *l, const struct snaplist_entry *e)
{
  char when[32], id[24], size[32], stored[32], epoch[24];

  snaplist_rfc3339(e->created_ns, when, sizeof when);
  if (l->json) {
    snaplist_json(l, e, when);
  } else {
    snprintf(id, sizeof id, "%" PRIu64, e->id);
    snprintf(epoch, sizeof epoch, "%" PRIu64, e->epoch);
    if (l->view == SNAPLIST_STORE) {
      util_format_bytes(e->size_bytes, size, sizeof size);
      util_format_bytes(e->stored_bytes, stored, sizeof stored);
    } else {
      snprintf(size, sizeof size, "%" PRIu64, e->size_bytes);
      snprintf(stored, sizeof stored, "%" PRIu64, e->stored_bytes);
    }
    snaplist_line(l, id, when, format_reason_name(e->reason),
                  e->complete ? "complete" : "copying", size, stored, epoch,
                  e->name);
  }
  l->n++;
}

void
snaplist_end(struct snaplist *l)
{
  if (l->json)
    evbuffer_add_printf(l->out, "%s]\n", l->n ? "\n" : "");
}
