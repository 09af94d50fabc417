/* Size and endpoint parsing, zero detection, uuids, sockets, pidfiles. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "util.h"

static void
test_parse_size(void **state)
{
  static const struct {
    const char *s;
    uint64_t v;
  } good[] = {
    { "0", 0 },
    { "4096", 4096 },
    { "4096B", 4096 },
    { "64K", 64ull << 10 },
    { "64k", 64ull << 10 },
    { "64KiB", 64ull << 10 },
    { "64KB", 64ull << 10 },
    { "64M", 64ull << 20 },
    { "1G", 1ull << 30 },
    { "1GiB", 1ull << 30 },
    { "2T", 2ull << 40 },
    { "16777215T", 16777215ull << 40 },
    { "18446744073709551615", UINT64_MAX },
  };
  static const char *const bad[] = {
    "", "-1", " 1", "+1", "1 ", "1X", "1.5G", "G", "1KiBB", "1Ki", "0x10",
    "18446744073709551616", "16777216T", "99999999999999999999999",
  };
  char err[256];
  uint64_t v;

  (void)state;
  for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
    if (util_parse_size(good[i].s, &v, err, sizeof err) != 0)
      fail_msg("\"%s\" refused: %s", good[i].s, err);
    assert_true(v == good[i].v);
  }
  for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
    err[0] = '\0';
    if (util_parse_size(bad[i], &v, err, sizeof err) != -1)
      fail_msg("\"%s\" accepted", bad[i]);
    assert_non_null(strstr(err, "invalid size"));
  }
  util_parse_size("1Q", &v, err, sizeof err);
  assert_non_null(strstr(err, "\"1Q\""));
  util_parse_size("16777216T", &v, err, sizeof err);
  assert_non_null(strstr(err, "too large"));
}

static void
test_parse_duration(void **state)
{
  static const struct {
    const char *s;
    uint64_t ms;
  } good[] = {
    { "0", 0 },         { "10", 10000 },      { "500ms", 500 },
    { "2s", 2000 },     { "1.5s", 1500 },     { "0.25", 250 },
    { "10m", 600000 },  { "10min", 600000 },  { "1h", 3600000 },
    { "7d", 604800000 }, { "2w", 1209600000 }, { "1.0001s", 1000 },
  };
  static const char *const bad[] = {
    "", "-1", " 1", "1 ", "s", "1x", "1.s", ".5", "1S", "1sec", "1e3",
    "99999999999999999999", "9999999999999999w",
  };
  char err[256];
  uint64_t v;

  (void)state;
  for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
    if (util_parse_duration_ms(good[i].s, &v, err, sizeof err) != 0)
      fail_msg("\"%s\" refused: %s", good[i].s, err);
    if (v != good[i].ms)
      fail_msg("\"%s\" = %llu ms, want %llu", good[i].s,
               (unsigned long long)v, (unsigned long long)good[i].ms);
  }
  for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
    err[0] = '\0';
    if (util_parse_duration_ms(bad[i], &v, err, sizeof err) != -1)
      fail_msg("\"%s\" accepted", bad[i]);
    assert_non_null(strstr(err, "invalid duration"));
  }
}

static void
test_parse_endpoint(void **state)
{
  struct endpoint ep;
  char err[256], longpath[200];

  (void)state;
  assert_int_equal(util_parse_endpoint("unix:/run/x.sock", &ep, err,
                                       sizeof err), 0);
  assert_true(ep.is_unix);
  assert_string_equal(ep.path, "/run/x.sock");

  assert_int_equal(util_parse_endpoint("127.0.0.1:10809", &ep, err,
                                       sizeof err), 0);
  assert_false(ep.is_unix);
  assert_string_equal(ep.host, "127.0.0.1");
  assert_string_equal(ep.port, "10809");

  assert_int_equal(util_parse_endpoint("[::1]:0", &ep, err, sizeof err), 0);
  assert_string_equal(ep.host, "::1");
  assert_string_equal(ep.port, "0");

  assert_int_equal(util_parse_endpoint("backup.example.com:65535", &ep, err,
                                       sizeof err), 0);
  assert_string_equal(ep.host, "backup.example.com");

  assert_int_equal(util_parse_endpoint(":7000", &ep, err, sizeof err), 0);
  assert_string_equal(ep.host, "");

  static const char *const bad[] = {
    "unix:", "localhost", "localhost:", "localhost:65536", "localhost:-1",
    "localhost:http", "localhost:1x", "::1:80", "[::1]80", "[::1", "h:123456",
  };
  for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
    err[0] = '\0';
    if (util_parse_endpoint(bad[i], &ep, err, sizeof err) != -1)
      fail_msg("\"%s\" accepted", bad[i]);
    assert_non_null(strstr(err, bad[i]));
  }
  memset(longpath, 'a', sizeof longpath - 1);
  memcpy(longpath, "unix:", 5);
  longpath[sizeof longpath - 1] = '\0';
  assert_int_equal(util_parse_endpoint(longpath, &ep, err, sizeof err), -1);
  assert_non_null(strstr(err, "longer than"));
}

static void
test_is_zero(void **state)
{
  size_t sizes[] = { 0, 1, 15, 16, 17, 31, 32, 33, 4096, 1 << 20 };
  unsigned char *buf = calloc(1, 1 << 20);

  (void)state;
  for (size_t i = 0; i < ARRAY_SIZE(sizes); i++) {
    size_t n = sizes[i];
    assert_true(util_is_zero(buf, n));
    for (size_t pos = 0; pos < n; pos += (n / 7) + 1) {
      buf[pos] = 1;
      assert_false(util_is_zero(buf, n));
      buf[pos] = 0;
    }
    if (n) {
      buf[n - 1] = 0x80;
      assert_false(util_is_zero(buf, n));
      buf[n - 1] = 0;
    }
  }
  /* A byte past len does not count. */
  buf[100] = 1;
  assert_true(util_is_zero(buf, 100));
  free(buf);
}

static void
test_uuid(void **state)
{
  uint8_t a[16], b[16];
  char s[37];

  (void)state;
  util_uuid_generate(a);
  util_uuid_generate(b);
  assert_memory_not_equal(a, b, 16);
  assert_int_equal(a[6] >> 4, 4);
  assert_int_equal(a[8] >> 6, 2);
  util_uuid_format(a, s);
  assert_int_equal(strlen(s), 36);
  assert_true(s[8] == '-' && s[13] == '-' && s[18] == '-' && s[23] == '-');
  assert_int_equal(s[14], '4');

  static const uint8_t fixed[16] = { 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc,
                                     0xde, 0xf0, 0, 1, 2, 3, 4, 5, 6, 0xff };
  util_uuid_format(fixed, s);
  assert_string_equal(s, "12345678-9abc-def0-0001-0203040506ff");
}

static void
test_format_bytes(void **state)
{
  char s[32];

  (void)state;
  util_format_bytes(0, s, sizeof s);
  assert_string_equal(s, "0 B");
  util_format_bytes(1023, s, sizeof s);
  assert_string_equal(s, "1023 B");
  util_format_bytes(1024, s, sizeof s);
  assert_string_equal(s, "1 KiB");
  util_format_bytes(3ull << 29, s, sizeof s);
  assert_string_equal(s, "1.5 GiB");
  util_format_bytes(64ull << 20, s, sizeof s);
  assert_string_equal(s, "64 MiB");
  util_format_bytes(UINT64_MAX, s, sizeof s);
  assert_string_equal(s, "16.0 EiB");
}

static void
test_alloc_aligned(void **state)
{
  void *p = util_alloc_aligned(0), *q = util_alloc_aligned(12345);

  (void)state;
  assert_int_equal((uintptr_t)p % 4096, 0);
  assert_int_equal((uintptr_t)q % 4096, 0);
  memset(p, 1, 4096); /* len 0 still gives a usable block */
  free(p);
  free(q);
}

static void
test_time(void **state)
{
  uint64_t a = util_now_ns(), b = util_now_ns();

  (void)state;
  assert_true(b >= a);
  assert_true(util_now_ms() >= a / 1000000);
}

static void
test_pidfile(void **state)
{
  char dir[] = "/tmp/duplex-test-XXXXXX", path[128], buf[32];
  FILE *f;

  (void)state;
  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/agent.pid", dir);
  assert_int_equal(util_write_pidfile(path), 0);
  f = fopen(path, "r");
  assert_non_null(f);
  assert_non_null(fgets(buf, sizeof buf, f));
  fclose(f);
  assert_int_equal(atol(buf), (long)getpid());
  unlink(path);

  snprintf(path, sizeof path, "%s/missing/agent.pid", dir);
  assert_int_equal(util_write_pidfile(path), -1);
  assert_int_equal(errno, ENOENT);
  rmdir(dir);
}

static void
test_tcp_listen_connect(void **state)
{
  struct endpoint ep;
  char err[256];
  int lfd, cfd, afd, port;

  (void)state;
  assert_int_equal(util_parse_endpoint("127.0.0.1:0", &ep, err, sizeof err),
                   0);
  lfd = util_listen(&ep, err, sizeof err);
  assert_true(lfd >= 0);
  port = util_local_port(lfd);
  assert_true(port > 0);
  snprintf(ep.port, sizeof ep.port, "%d", port);
  cfd = util_connect_start(&ep, err, sizeof err);
  assert_true(cfd >= 0);
  for (int i = 0; i < 1000; i++) {
    afd = accept(lfd, NULL, NULL);
    if (afd >= 0 || errno != EAGAIN)
      break;
    usleep(1000);
  }
  assert_true(afd >= 0);
  close(afd);
  close(cfd);

  /* The port is taken now: a second listener says so. */
  snprintf(ep.port, sizeof ep.port, "%d", port);
  assert_int_equal(util_listen(&ep, err, sizeof err), -1);
  assert_non_null(strstr(err, "cannot listen on 127.0.0.1:"));
  close(lfd);
  assert_int_equal(util_local_port(-1), -1);
}

static void
test_unix_listen(void **state)
{
  char dir[] = "/tmp/duplex-test-XXXXXX", spec[160], err[256];
  struct endpoint ep;
  struct stat st;
  int lfd, lfd2, cfd;

  (void)state;
  assert_non_null(mkdtemp(dir));
  snprintf(spec, sizeof spec, "unix:%s/ctl.sock", dir);
  assert_int_equal(util_parse_endpoint(spec, &ep, err, sizeof err), 0);
  lfd = util_listen(&ep, err, sizeof err);
  assert_true(lfd >= 0);
  cfd = util_connect_start(&ep, err, sizeof err);
  assert_true(cfd >= 0);
  close(cfd);

  /* Live socket: not stolen. */
  assert_int_equal(util_listen(&ep, err, sizeof err), -1);
  assert_non_null(strstr(err, "another process"));

  /* Stale socket (listener gone): replaced. */
  close(lfd);
  assert_int_equal(lstat(ep.path, &st), 0);
  lfd2 = util_listen(&ep, err, sizeof err);
  assert_true(lfd2 >= 0);
  close(lfd2);
  unlink(ep.path);

  /* A regular file in the way is not removed. */
  close(creat(ep.path, 0600));
  assert_int_equal(util_listen(&ep, err, sizeof err), -1);
  assert_non_null(strstr(err, "not a socket"));
  unlink(ep.path);

  assert_int_equal(util_connect_start(&ep, err, sizeof err), -1);
  assert_non_null(strstr(err, "cannot connect"));
  rmdir(dir);
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_parse_size),
    cmocka_unit_test(test_parse_duration),
    cmocka_unit_test(test_parse_endpoint),
    cmocka_unit_test(test_is_zero),
    cmocka_unit_test(test_uuid),
    cmocka_unit_test(test_format_bytes),
    cmocka_unit_test(test_alloc_aligned),
    cmocka_unit_test(test_time),
    cmocka_unit_test(test_pidfile),
    cmocka_unit_test(test_tcp_listen_connect),
    cmocka_unit_test(test_unix_listen),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
