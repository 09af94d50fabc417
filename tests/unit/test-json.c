/* JSON writer: nesting, separators, escaping, numbers. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "json.h"

static char *
drain(struct evbuffer *b)
{
  size_t n = evbuffer_get_length(b);
  char *s = malloc(n + 1);

  evbuffer_remove(b, s, n);
  s[n] = '\0';
  return s;
}

static void
test_object(void **state)
{
  struct evbuffer *b = evbuffer_new();
  struct json j;
  char *s;

  (void)state;
  json_begin(&j, b);
  json_str(&j, "role", "primary");
  json_u64(&j, "size_bytes", UINT64_MAX);
  json_i64(&j, "delta", -5);
  json_double(&j, "pct", 99.5);
  json_double(&j, "nan", NAN);
  json_double(&j, "inf", INFINITY);
  json_bool(&j, "ok", true);
  json_null(&j, "none");
  json_str(&j, "nostr", NULL);
  json_obj_begin(&j, "inner");
  json_u64(&j, "a", 1);
  json_obj_begin(&j, "deeper");
  json_obj_end(&j);
  json_bool(&j, "b", false);
  json_obj_end(&j);
  json_u64(&j, "last", 0);
  json_end(&j);
  s = drain(b);
  assert_string_equal(s,
      "{\"role\":\"primary\",\"size_bytes\":18446744073709551615,"
      "\"delta\":-5,\"pct\":99.500,\"nan\":null,\"inf\":null,\"ok\":true,"
      "\"none\":null,\"nostr\":null,\"inner\":{\"a\":1,\"deeper\":{},"
      "\"b\":false},\"last\":0}\n");
  free(s);
  evbuffer_free(b);
}

static void
test_escaping(void **state)
{
  struct evbuffer *b = evbuffer_new();
  struct json j;
  char *s;

  (void)state;
  json_begin(&j, b);
  json_str(&j, "k\"ey", "a\"b\\c\nd\te\x01\x1f\x7f/é");
  json_end(&j);
  s = drain(b);
  assert_string_equal(s, "{\"k\\\"ey\":\"a\\\"b\\\\c\\nd\\te\\u0001\\u001f"
                         "\\u007f/é\"}\n");
  free(s);

  json_begin(&j, b);
  json_end(&j);
  s = drain(b);
  assert_string_equal(s, "{}\n");
  free(s);
  evbuffer_free(b);
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_object),
    cmocka_unit_test(test_escaping),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
