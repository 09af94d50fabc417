/* The snapshot list formatter (store/snaplist.c): JSON escaping of names,
 * empty lists, complete and copying snapshots in the secondary's list, the
 * store's parent/full and units, and the time format. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "format.h"
#include "snaplist.h"

#define T0 1714564800000000000ull   /* 2024-05-01T12:00:00Z */

static char *
drain(struct evbuffer *b)
{
  size_t n = evbuffer_get_length(b);
  char *s = malloc(n + 1);

  assert_non_null(s);
  evbuffer_remove(b, s, n);
  s[n] = '\0';
  return s;
}

/* The whole list of n entries in one view and form. */
static char *
format(enum snaplist_view view, bool json, const struct snaplist_entry *v,
       size_t n)
{
  struct evbuffer *b = evbuffer_new();
  struct snaplist l;
  char *s;

  assert_non_null(b);
  snaplist_begin(&l, b, view, json);
  for (size_t i = 0; i < n; i++)
    snaplist_add(&l, &v[i]);
  snaplist_end(&l);
  s = drain(b);
  evbuffer_free(b);
  return s;
}

static void
check(enum snaplist_view view, bool json, const struct snaplist_entry *v,
      size_t n, const char *want)
{
  char *s = format(view, json, v, n);

  assert_string_equal(s, want);
  free(s);
}

static void
test_empty(void **state)
{
  (void)state;
  check(SNAPLIST_STORE, true, NULL, 0, "[]\n");
  check(SNAPLIST_AGENT, true, NULL, 0, "[]\n");
  check(SNAPLIST_STORE, false, NULL, 0,
        "ID     CREATED              REASON                 SIZE       "
        "STORED    EPOCH  NAME\n");
  check(SNAPLIST_AGENT, false, NULL, 0,
        "ID     CREATED              REASON         STATE               "
        "SIZE         STORED  NAME\n");
}

/* Quote and backslash escaped, every control character as \u00XX (\n and
 * \t included), DEL and bytes of UTF-8 (or not) as they are. */
static void
test_escaping(void **state)
{
  static const struct {
    const char *name, *json;
  } cases[] = {
    { "", "\"\"" },
    { "plain name", "\"plain name\"" },
    { "q\"b\\s", "\"q\\\"b\\\\s\"" },
    { "\x01\x1f\x20", "\"\\u0001\\u001f \"" },
    { "a\nb\tc\rd", "\"a\\u000ab\\u0009c\\u000dd\"" },
    { "del\x7f", "\"del\x7f\"" },
    { "caf\xc3\xa9 \xe2\x82\xac \xff", "\"caf\xc3\xa9 \xe2\x82\xac \xff\"" },
    { "\x1b[31mred\\\"", "\"\\u001b[31mred\\\\\\\"\"" },
  };

  (void)state;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    struct snaplist_entry e = { .id = 7, .name = cases[i].name,
                                .created_ns = T0, .reason = SNAP_MANUAL,
                                .complete = true };
    char want[512], *s;

    snprintf(want, sizeof want, "[\n  {\"id\": 7, \"name\": %s, \"created\": "
             "\"2024-05-01T12:00:00Z\", \"state\": \"complete\", "
             "\"size_bytes\": 0, \"stored_bytes\": 0, \"epoch\": 0, "
             "\"reason\": \"manual\"}\n]\n", cases[i].json);
    s = format(SNAPLIST_AGENT, true, &e, 1);
    if (strcmp(s, want) != 0)
      fail_msg("name %zu: got %s, want %s", i, s, want);
    free(s);
  }
}

/* The secondary's list: copying ones have their progress in JSON and
 * "copying" in the table; complete ones neither. */
static void
test_agent_copying(void **state)
{
  static const struct snaplist_entry v[] = {
    { .id = 1, .name = "before", .created_ns = T0, .epoch = 201,
      .reason = SNAP_BEFORE_RESYNC, .size_bytes = 67108864,
      .stored_bytes = 838303, .complete = true, .copied_blocks = 99,
      .total_blocks = 99, .parent = 5 },
    { .id = 12, .name = "copy me", .created_ns = T0 + 61999999999ull,
      .epoch = 319, .reason = SNAP_SCHEDULE, .size_bytes = 67108864,
      .complete = false, .copied_blocks = 64, .total_blocks = 12288 },
  };

  (void)state;
  check(SNAPLIST_AGENT, true, v, 2,
        "[\n"
        "  {\"id\": 1, \"name\": \"before\", \"created\": "
        "\"2024-05-01T12:00:00Z\", \"state\": \"complete\", \"size_bytes\": "
        "67108864, \"stored_bytes\": 838303, \"epoch\": 201, \"reason\": "
        "\"before-resync\"},\n"
        "  {\"id\": 12, \"name\": \"copy me\", \"created\": "
        "\"2024-05-01T12:01:01Z\", \"state\": \"copying\", \"size_bytes\": "
        "67108864, \"stored_bytes\": 0, \"epoch\": 319, \"reason\": "
        "\"schedule\", \"copied_blocks\": 64, \"total_blocks\": 12288}\n"
        "]\n");
  check(SNAPLIST_AGENT, false, v, 2,
        "ID     CREATED              REASON         STATE               "
        "SIZE         STORED  NAME\n"
        "1      2024-05-01T12:00:00Z before-resync  complete        67108864"
        "         838303  before\n"
        "12     2024-05-01T12:01:01Z schedule       copying         67108864"
        "              0  copy me\n");
}

/* The store's list: parent and full in JSON, never copying progress;
 * sizes in units and the epoch in the table. */
static void
test_store(void **state)
{
  static const struct snaplist_entry v[] = {
    { .id = 1, .name = "full", .created_ns = 0, .epoch = 0,
      .reason = SNAP_MANUAL, .size_bytes = 1048576, .stored_bytes = 472,
      .complete = true, .parent = 0 },
    { .id = 2, .name = "", .created_ns = T0, .epoch = 18446744073709551615ull,
      .reason = 9, .size_bytes = 67108864, .stored_bytes = 838303,
      .complete = true, .parent = 1 },
  };

  (void)state;
  check(SNAPLIST_STORE, true, v, 2,
        "[\n"
        "  {\"id\": 1, \"name\": \"full\", \"created\": "
        "\"1970-01-01T00:00:00Z\", \"state\": \"complete\", \"size_bytes\": "
        "1048576, \"stored_bytes\": 472, \"epoch\": 0, \"reason\": "
        "\"manual\", \"parent\": 0, \"full\": true},\n"
        "  {\"id\": 2, \"name\": \"\", \"created\": \"2024-05-01T12:00:00Z\", "
        "\"state\": \"complete\", \"size_bytes\": 67108864, \"stored_bytes\": "
        "838303, \"epoch\": 18446744073709551615, \"reason\": \"unknown\", "
        "\"parent\": 1, \"full\": false}\n"
        "]\n");
  check(SNAPLIST_STORE, false, v, 2,
        "ID     CREATED              REASON                 SIZE       "
        "STORED    EPOCH  NAME\n"
        "1      1970-01-01T00:00:00Z manual                1 MiB        "
        "472 B        0  full\n"
        "2      2024-05-01T12:00:00Z unknown              64 MiB    818.7 "
        "KiB 18446744073709551615  \n");
}

static void
test_rfc3339(void **state)
{
  char when[32];

  (void)state;
  snaplist_rfc3339(0, when, sizeof when);
  assert_string_equal(when, "1970-01-01T00:00:00Z");
  snaplist_rfc3339(T0 + 999999999ull, when, sizeof when);
  assert_string_equal(when, "2024-05-01T12:00:00Z");
  snaplist_rfc3339(UINT64_MAX, when, sizeof when);   /* the last one */
  assert_string_equal(when, "2554-07-21T23:34:33Z");
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_empty),
    cmocka_unit_test(test_escaping),
    cmocka_unit_test(test_agent_copying),
    cmocka_unit_test(test_store),
    cmocka_unit_test(test_rfc3339),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
