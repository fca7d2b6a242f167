/* The key id of a str layer key (shmpool/substrate/ids.py): BLAKE2b with an 8-byte digest,
 * no MAC key, personalisation "shmpool.key" (zero-padded to 16 bytes), read as a little-endian
 * uint64, bit 62 set and bit 63 clear. The same value hashlib.blake2b(utf8, digest_size=8,
 * person=b"shmpool.key") gives (tests/test_key_hash.py checks both on every length class), but
 * without a hashlib object, a bytes digest and an int.from_bytes per lookup: ~0.1 us instead of
 * ~0.6, which is most of what a lookup by a key not seen lately cost.
 *
 * BLAKE2b as RFC 7693 specifies it (its reference code, appendix C, reduced to the one-shot
 * case): 128-byte blocks, 12 rounds, the last block flagged and zero-padded. */
#ifndef SHMPOOL_KEY_HASH_H
#define SHMPOOL_KEY_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static const uint64_t shm_b2b_iv[8] = {
    0x6A09E667F3BCC908ULL, 0xBB67AE8584CAA73BULL, 0x3C6EF372FE94F82BULL, 0xA54FF53A5F1D36F1ULL,
    0x510E527FADE682D1ULL, 0x9B05688C2B3E6C1FULL, 0x1F83D9ABFB41BD6BULL, 0x5BE0CD19137E2179ULL};

static const uint8_t shm_b2b_sigma[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3}};

static inline uint64_t shm_b2b_load64(const uint8_t *p) {
    uint64_t w = 0;
    for (int i = 7; i >= 0; i--)  /* little-endian whatever the CPU's order */
        w = (w << 8) | p[i];
    return w;
}

static inline uint64_t shm_b2b_rotr(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

#define SHM_B2B_G(a, b, c, d, x, y)                 \
    do {                                            \
        v[a] = v[a] + v[b] + (x);                   \
        v[d] = shm_b2b_rotr(v[d] ^ v[a], 32);       \
        v[c] = v[c] + v[d];                         \
        v[b] = shm_b2b_rotr(v[b] ^ v[c], 24);       \
        v[a] = v[a] + v[b] + (y);                   \
        v[d] = shm_b2b_rotr(v[d] ^ v[a], 16);       \
        v[c] = v[c] + v[d];                         \
        v[b] = shm_b2b_rotr(v[b] ^ v[c], 63);       \
    } while (0)

static void shm_b2b_compress(uint64_t h[8], const uint8_t block[128], uint64_t counted, int last) {
    uint64_t v[16], m[16];
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = shm_b2b_iv[i];
    }
    v[12] ^= counted;  /* the byte counter's low word; keys never reach 2^64 bytes */
    if (last)
        v[14] = ~v[14];
    for (int i = 0; i < 16; i++)
        m[i] = shm_b2b_load64(block + 8 * i);
    for (int r = 0; r < 12; r++) {
        const uint8_t *s = shm_b2b_sigma[r];
        SHM_B2B_G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        SHM_B2B_G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        SHM_B2B_G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        SHM_B2B_G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        SHM_B2B_G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        SHM_B2B_G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        SHM_B2B_G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        SHM_B2B_G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++)
        h[i] ^= v[i] ^ v[i + 8];
}

#define SHM_KEY_BIT (1ULL << 62)

/* The key id of the UTF-8 bytes data[0 .. n). */
static uint64_t shm_key_hash(const char *data, size_t n) {
    static const uint8_t person[16] = "shmpool.key";  /* 11 bytes, zero-padded as hashlib pads */
    const uint8_t *p = (const uint8_t *)data;
    uint64_t h[8];
    uint8_t last[128];
    for (int i = 0; i < 8; i++)
        h[i] = shm_b2b_iv[i];
    h[0] ^= 0x01010000ULL ^ 8;  /* fanout 1, depth 1, no MAC key, an 8-byte digest */
    h[6] ^= shm_b2b_load64(person);
    h[7] ^= shm_b2b_load64(person + 8);
    uint64_t counted = 0;
    while (n > 128) {  /* every full block but the last: the last is flagged, even when full */
        counted += 128;
        shm_b2b_compress(h, p, counted, 0);
        p += 128;
        n -= 128;
    }
    memset(last, 0, sizeof last);
    memcpy(last, p, n);
    shm_b2b_compress(h, last, counted + n, 1);
    return (h[0] & (SHM_KEY_BIT - 1)) | SHM_KEY_BIT;  /* digest bytes 0-7, little-endian = h[0] */
}

#endif
