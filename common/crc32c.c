/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), zlib-style
 * chaining: crc32c(crc32c(0, a), b) == crc32c(0, a||b).  Uses the SSE4.2
 * crc32 instruction when the CPU has it, a byte table otherwise. */
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include "crc32c.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

static uint32_t crc32c_table[256];
static pthread_once_t crc32c_once = PTHREAD_ONCE_INIT;
static bool crc32c_hw;

static void
crc32c_init(void)
{
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++)
      c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
    crc32c_table[i] = c;
  }
#if defined(__x86_64__)
  crc32c_hw = __builtin_cpu_supports("sse4.2");
#endif
}

static uint32_t
crc32c_sw(uint32_t c, const unsigned char *p, size_t len)
{
  while (len--)
    c = crc32c_table[(c ^ *p++) & 0xff] ^ (c >> 8);
  return c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t
crc32c_sse42(uint32_t c, const unsigned char *p, size_t len)
{
  uint64_t c64 = c;

  for (; len >= 8; len -= 8, p += 8) {
    uint64_t w;
    memcpy(&w, p, 8); /* unaligned-safe; x86 is little-endian */
    c64 = _mm_crc32_u64(c64, w);
  }
  c = (uint32_t)c64;
  while (len--)
    c = _mm_crc32_u8(c, *p++);
  return c;
}
#endif

uint32_t
crc32c(uint32_t crc, const void *buf, size_t len)
{
  uint32_t c = ~crc;

  pthread_once(&crc32c_once, crc32c_init);
#if defined(__x86_64__)
  if (crc32c_hw)
    return ~crc32c_sse42(c, buf, len);
#endif
  return ~crc32c_sw(c, buf, len);
}
