/* CRC-32C: the standard check value, chaining, and hardware/software
 * agreement on unaligned buffers of every small length. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "crc32c.h"

/* Bitwise reference implementation. */
static uint32_t
crc32c_ref(const uint8_t *p, size_t len)
{
  uint32_t c = ~0u;

  while (len--) {
    c ^= *p++;
    for (int k = 0; k < 8; k++)
      c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
  }
  return ~c;
}

static void
test_check_value(void **state)
{
  (void)state;
  assert_int_equal(crc32c(0, "123456789", 9), 0xE3069283u);
  assert_int_equal(crc32c(0, "", 0), 0);
  /* RFC 3720 B.4: 32 bytes of zeroes. */
  static const uint8_t zeroes[32];
  assert_int_equal(crc32c(0, zeroes, 32), 0x8A9136AAu);
}

static void
test_chaining_and_lengths(void **state)
{
  uint8_t buf[300];

  (void)state;
  for (size_t i = 0; i < sizeof buf; i++)
    buf[i] = (uint8_t)(i * 31 + 7);
  for (size_t start = 0; start < 8; start++)
    for (size_t len = 0; len + start <= sizeof buf; len += 13)
      assert_int_equal(crc32c(0, buf + start, len),
                       crc32c_ref(buf + start, len));
  for (size_t split = 0; split <= sizeof buf; split += 17)
    assert_int_equal(crc32c(crc32c(0, buf, split), buf + split,
                            sizeof buf - split),
                     crc32c(0, buf, sizeof buf));
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_check_value),
    cmocka_unit_test(test_chaining_and_lengths),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
