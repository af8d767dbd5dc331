/*
 * eoscore's XXH3 (64- and 128-bit), written for this project from the published
 * XXH3 algorithm description. Results are bit-identical to the reference
 * (python-xxhash's xxh3_64_intdigest / xxh3_128_intdigest), which the tests check.
 *
 * Header-only, portable C11: every multi-byte read is little-endian through memcpy,
 * so it is correct on any alignment and on x86-64 and aarch64 alike. The long-input
 * accumulate loop has an SSE2 or NEON body when the compiler offers one (both are
 * part of the baseline of those architectures) and a scalar body otherwise.
 */
#ifndef EOSCORE_XXH3_H
#define EOSCORE_XXH3_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__SSE2__) && !defined(EOS_XXH3_SCALAR)
#include <emmintrin.h>
#define EOS_XXH3_SSE2 1
#elif (defined(__ARM_NEON) || defined(__ARM_NEON__)) && defined(__aarch64__) && \
    !defined(EOS_XXH3_SCALAR)
#include <arm_neon.h>
#define EOS_XXH3_NEON 1
#endif

/* ---- constants (published facts of the algorithm) ---------------------- */

#define EOS_P32_1 UINT64_C(0x9E3779B1)
#define EOS_P32_2 UINT64_C(0x85EBCA77)
#define EOS_P32_3 UINT64_C(0xC2B2AE3D)
#define EOS_P64_1 UINT64_C(0x9E3779B185EBCA87)
#define EOS_P64_2 UINT64_C(0xC2B2AE3D27D4EB4F)
#define EOS_P64_3 UINT64_C(0x165667B19E3779F9)
#define EOS_P64_4 UINT64_C(0x85EBCA77C2B2AE63)
#define EOS_P64_5 UINT64_C(0x27D4EB2F165667C5)
#define EOS_MIX_1 UINT64_C(0x165667919E3779F9)
#define EOS_MIX_2 UINT64_C(0x9FB21C651E98DF25)

#define EOS_SECRET_LEN 192  /* bytes in the default secret */
#define EOS_STRIPE 64       /* bytes folded into the 8 accumulators per step */
#define EOS_SECRET_STEP 8   /* secret advance per stripe */
#define EOS_MID_START 3     /* secret offset of rounds 9.. for 129-240 bytes */
#define EOS_MID_LAST 17     /* secret offset (from 136) of the last 129-240 round */
#define EOS_LAST_STRIPE 7   /* secret offset (from the end) of the final stripe */
#define EOS_MERGE_START 11  /* secret offset of the accumulator merge */

/* The XXH3 default 192-byte secret (kSecret), as published. */
static const uint8_t eos_xxh3_secret[EOS_SECRET_LEN] = {
    0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
    0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
    0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
    0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
    0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
    0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
    0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
    0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
    0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
    0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
    0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
    0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
};

/* ---- primitive helpers -------------------------------------------------- */

/* Little-endian 32-bit load from any address. */
static inline uint32_t eos_rd32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return v;
}

/* Little-endian 64-bit load from any address. */
static inline uint64_t eos_rd64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, sizeof v);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/* Little-endian 64-bit store to any address. */
static inline void eos_wr64(uint8_t *p, uint64_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memcpy(p, &v, sizeof v);
}

/* Byte-reverse a 32-bit value. */
static inline uint32_t eos_bswap32(uint32_t x) {
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_bswap32(x);
#else
    return ((x << 24) & 0xff000000u) | ((x << 8) & 0x00ff0000u) | ((x >> 8) & 0x0000ff00u) |
           ((x >> 24) & 0x000000ffu);
#endif
}

/* Byte-reverse a 64-bit value. */
static inline uint64_t eos_bswap64(uint64_t x) {
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_bswap64(x);
#else
    return ((uint64_t)eos_bswap32((uint32_t)x) << 32) | eos_bswap32((uint32_t)(x >> 32));
#endif
}

/* Rotate left; r is in 1..63 at every call site. */
static inline uint64_t eos_rotl64(uint64_t x, unsigned r) { return (x << r) | (x >> (64 - r)); }

/* Rotate left; r is in 1..31 at every call site. */
static inline uint32_t eos_rotl32(uint32_t x, unsigned r) { return (x << r) | (x >> (32 - r)); }

/* Full 64x64 -> 128-bit product, returned as two halves. */
static inline void eos_mul128(uint64_t a, uint64_t b, uint64_t *lo, uint64_t *hi) {
#if defined(__SIZEOF_INT128__)
    __extension__ typedef unsigned __int128 eos_u128;
    eos_u128 p = (eos_u128)a * b;
    *lo = (uint64_t)p;
    *hi = (uint64_t)(p >> 64);
#else
    uint64_t a_lo = a & 0xffffffffu, a_hi = a >> 32;
    uint64_t b_lo = b & 0xffffffffu, b_hi = b >> 32;
    uint64_t ll = a_lo * b_lo, lh = a_lo * b_hi, hl = a_hi * b_lo, hh = a_hi * b_hi;
    uint64_t mid = (ll >> 32) + (lh & 0xffffffffu) + hl;
    *lo = (mid << 32) | (ll & 0xffffffffu);
    *hi = hh + (lh >> 32) + (mid >> 32);
#endif
}

/* 128-bit product folded to 64 bits (low half xor high half). */
static inline uint64_t eos_fold_mul(uint64_t a, uint64_t b) {
    uint64_t lo, hi;
    eos_mul128(a, b, &lo, &hi);
    return lo ^ hi;
}

/* XXH64's final mix, used by XXH3 for inputs of 0-3 bytes. */
static inline uint64_t eos_mix_xxh64(uint64_t h) {
    h ^= h >> 33;
    h *= EOS_P64_2;
    h ^= h >> 29;
    h *= EOS_P64_3;
    h ^= h >> 32;
    return h;
}

/* XXH3's short final mix. */
static inline uint64_t eos_mix_xxh3(uint64_t h) {
    h ^= h >> 37;
    h *= EOS_MIX_1;
    h ^= h >> 32;
    return h;
}

/* The stronger final mix used for 4-8 byte inputs (64-bit result). */
static inline uint64_t eos_mix_rrmxmx(uint64_t h, uint64_t len) {
    h ^= eos_rotl64(h, 49) ^ eos_rotl64(h, 24);
    h *= EOS_MIX_2;
    h ^= (h >> 35) + len;
    h *= EOS_MIX_2;
    h ^= h >> 28;
    return h;
}

/* Fold 16 input bytes against 16 secret bytes and the seed. */
static inline uint64_t eos_fold16(const uint8_t *in, const uint8_t *sec, uint64_t seed) {
    uint64_t a = eos_rd64(in) ^ (eos_rd64(sec) + seed);
    uint64_t b = eos_rd64(in + 8) ^ (eos_rd64(sec + 8) - seed);
    return eos_fold_mul(a, b);
}

/* ---- 64-bit, short inputs ---------------------------------------------- */

/* 64-bit hash of 0..16 bytes. */
static inline uint64_t eos_h64_upto16(const uint8_t *in, size_t len, const uint8_t *sec,
                                      uint64_t seed) {
    if (len > 8) {
        uint64_t k1 = (eos_rd64(sec + 24) ^ eos_rd64(sec + 32)) + seed;
        uint64_t k2 = (eos_rd64(sec + 40) ^ eos_rd64(sec + 48)) - seed;
        uint64_t lo = eos_rd64(in) ^ k1;
        uint64_t hi = eos_rd64(in + len - 8) ^ k2;
        uint64_t acc = (uint64_t)len + eos_bswap64(lo) + hi + eos_fold_mul(lo, hi);
        return eos_mix_xxh3(acc);
    }
    if (len >= 4) {
        uint64_t s = seed ^ ((uint64_t)eos_bswap32((uint32_t)seed) << 32);
        uint64_t first = eos_rd32(in), last = eos_rd32(in + len - 4);
        uint64_t key = (eos_rd64(sec + 8) ^ eos_rd64(sec + 16)) - s;
        return eos_mix_rrmxmx((last + (first << 32)) ^ key, (uint64_t)len);
    }
    if (len > 0) {
        uint32_t packed = ((uint32_t)in[0] << 16) | ((uint32_t)in[len >> 1] << 24) |
                          (uint32_t)in[len - 1] | ((uint32_t)len << 8);
        uint64_t key = (uint64_t)(eos_rd32(sec) ^ eos_rd32(sec + 4)) + seed;
        return eos_mix_xxh64((uint64_t)packed ^ key);
    }
    return eos_mix_xxh64(seed ^ eos_rd64(sec + 56) ^ eos_rd64(sec + 64));
}

/* 64-bit hash of 17..128 bytes: pairs of 16-byte folds from both ends. */
static inline uint64_t eos_h64_17to128(const uint8_t *in, size_t len, const uint8_t *sec,
                                       uint64_t seed) {
    uint64_t acc = (uint64_t)len * EOS_P64_1;
    size_t pairs = (len - 1) / 32; /* 0..3 extra pairs beyond the outermost */
    for (size_t i = pairs + 1; i-- > 0;) {
        acc += eos_fold16(in + 16 * i, sec + 32 * i, seed);
        acc += eos_fold16(in + len - 16 * (i + 1), sec + 32 * i + 16, seed);
    }
    return eos_mix_xxh3(acc);
}

/* 64-bit hash of 129..240 bytes: 16-byte folds in order, mixed after the eighth. */
static inline uint64_t eos_h64_129to240(const uint8_t *in, size_t len, const uint8_t *sec,
                                        uint64_t seed) {
    uint64_t acc = (uint64_t)len * EOS_P64_1;
    size_t rounds = len / 16;
    for (size_t i = 0; i < 8; i++) acc += eos_fold16(in + 16 * i, sec + 16 * i, seed);
    acc = eos_mix_xxh3(acc);
    for (size_t i = 8; i < rounds; i++)
        acc += eos_fold16(in + 16 * i, sec + 16 * (i - 8) + EOS_MID_START, seed);
    acc += eos_fold16(in + len - 16, sec + 136 - EOS_MID_LAST, seed);
    return eos_mix_xxh3(acc);
}

/* ---- long inputs (> 240 bytes): 8 accumulators over 64-byte stripes ---- */

/* Fold one 64-byte stripe into the 8 accumulators. */
static inline void eos_stripe(uint64_t acc[8], const uint8_t *in, const uint8_t *sec) {
#if defined(EOS_XXH3_SSE2)
    for (int i = 0; i < 4; i++) {
        __m128i a = _mm_loadu_si128((const __m128i *)(const void *)(acc + 2 * i));
        __m128i d = _mm_loadu_si128((const __m128i *)(const void *)(in + 16 * i));
        __m128i k = _mm_loadu_si128((const __m128i *)(const void *)(sec + 16 * i));
        __m128i dk = _mm_xor_si128(d, k);
        __m128i prod = _mm_mul_epu32(dk, _mm_shuffle_epi32(dk, _MM_SHUFFLE(0, 3, 0, 1)));
        __m128i swapped = _mm_shuffle_epi32(d, _MM_SHUFFLE(1, 0, 3, 2));
        _mm_storeu_si128((__m128i *)(void *)(acc + 2 * i),
                         _mm_add_epi64(a, _mm_add_epi64(prod, swapped)));
    }
#elif defined(EOS_XXH3_NEON)
    for (int i = 0; i < 4; i++) {
        uint64x2_t d = vreinterpretq_u64_u8(vld1q_u8(in + 16 * i));
        uint64x2_t k = vreinterpretq_u64_u8(vld1q_u8(sec + 16 * i));
        uint64x2_t dk = veorq_u64(d, k);
        uint32x2_t dk_lo = vmovn_u64(dk);
        uint32x2_t dk_hi = vshrn_n_u64(dk, 32);
        uint64x2_t prod = vmull_u32(dk_lo, dk_hi);
        uint64x2_t swapped = vextq_u64(d, d, 1);
        uint64x2_t a = vld1q_u64(acc + 2 * i);
        vst1q_u64(acc + 2 * i, vaddq_u64(a, vaddq_u64(prod, swapped)));
    }
#else
    for (int i = 0; i < 8; i++) {
        uint64_t d = eos_rd64(in + 8 * i);
        uint64_t dk = d ^ eos_rd64(sec + 8 * i);
        acc[i ^ 1] += d;
        acc[i] += (dk & 0xffffffffu) * (dk >> 32);
    }
#endif
}

/* Scramble the accumulators at the end of each block. */
static inline void eos_scramble(uint64_t acc[8], const uint8_t *sec) {
    for (int i = 0; i < 8; i++) {
        uint64_t a = acc[i];
        a ^= a >> 47;
        a ^= eos_rd64(sec + 8 * i);
        acc[i] = a * EOS_P32_1;
    }
}

/* Run all stripes and block scrambles of a > 240 byte input. */
static inline void eos_long_accumulate(uint64_t acc[8], const uint8_t *in, size_t len,
                                       const uint8_t *sec) {
    const size_t stripes_per_block = (EOS_SECRET_LEN - EOS_STRIPE) / EOS_SECRET_STEP;
    const size_t block_len = EOS_STRIPE * stripes_per_block;
    const size_t blocks = (len - 1) / block_len;
    const uint8_t *scramble_key = sec + EOS_SECRET_LEN - EOS_STRIPE;

    acc[0] = EOS_P32_3;
    acc[1] = EOS_P64_1;
    acc[2] = EOS_P64_2;
    acc[3] = EOS_P64_3;
    acc[4] = EOS_P64_4;
    acc[5] = EOS_P32_2;
    acc[6] = EOS_P64_5;
    acc[7] = EOS_P32_1;

    for (size_t b = 0; b < blocks; b++) {
        const uint8_t *blk = in + b * block_len;
        for (size_t s = 0; s < stripes_per_block; s++)
            eos_stripe(acc, blk + s * EOS_STRIPE, sec + s * EOS_SECRET_STEP);
        eos_scramble(acc, scramble_key);
    }
    /* Last, partial block: whole stripes, then the final 64 bytes (which may overlap). */
    const uint8_t *tail = in + blocks * block_len;
    size_t tail_stripes = ((len - 1) - blocks * block_len) / EOS_STRIPE;
    for (size_t s = 0; s < tail_stripes; s++)
        eos_stripe(acc, tail + s * EOS_STRIPE, sec + s * EOS_SECRET_STEP);
    eos_stripe(acc, in + len - EOS_STRIPE, sec + EOS_SECRET_LEN - EOS_STRIPE - EOS_LAST_STRIPE);
}

/* Merge the 8 accumulators into one 64-bit value. */
static inline uint64_t eos_merge(const uint64_t acc[8], const uint8_t *sec, uint64_t start) {
    uint64_t r = start;
    for (int i = 0; i < 4; i++)
        r += eos_fold_mul(acc[2 * i] ^ eos_rd64(sec + 16 * i),
                          acc[2 * i + 1] ^ eos_rd64(sec + 16 * i + 8));
    return eos_mix_xxh3(r);
}

/* Build the seeded secret: even 8-byte words + seed, odd words - seed. */
static inline void eos_derive_secret(uint8_t out[EOS_SECRET_LEN], uint64_t seed) {
    for (int i = 0; i < EOS_SECRET_LEN / 16; i++) {
        eos_wr64(out + 16 * i, eos_rd64(eos_xxh3_secret + 16 * i) + seed);
        eos_wr64(out + 16 * i + 8, eos_rd64(eos_xxh3_secret + 16 * i + 8) - seed);
    }
}

/* ---- public API ---------------------------------------------------------- */

/* XXH3-64 of len bytes at data with seed; equals xxhash.xxh3_64_intdigest(data, seed). */
static inline uint64_t eos_xxh3_64(const void *data, size_t len, uint64_t seed) {
    const uint8_t *in = (const uint8_t *)data;
    const uint8_t *sec = eos_xxh3_secret;
    if (len <= 16) return eos_h64_upto16(in, len, sec, seed);
    if (len <= 128) return eos_h64_17to128(in, len, sec, seed);
    if (len <= 240) return eos_h64_129to240(in, len, sec, seed);

    uint8_t custom[EOS_SECRET_LEN];
    uint64_t acc[8];
    if (seed != 0) {
        eos_derive_secret(custom, seed);
        sec = custom;
    }
    eos_long_accumulate(acc, in, len, sec);
    return eos_merge(acc, sec + EOS_MERGE_START, (uint64_t)len * EOS_P64_1);
}

/* XXH3-64 of the 8 little-endian bytes of key; equals eos_xxh3_64(&key_le, 8, seed). */
static inline uint64_t eos_xxh3_64_u64(uint64_t key, uint64_t seed) {
    /* The 4-8 byte path with len 8: first word = low half, last word = high half. */
    uint64_t s = seed ^ ((uint64_t)eos_bswap32((uint32_t)seed) << 32);
    uint64_t k = (eos_rd64(eos_xxh3_secret + 8) ^ eos_rd64(eos_xxh3_secret + 16)) - s;
    return eos_mix_rrmxmx(eos_rotl64(key, 32) ^ k, 8);
}

/* ---- 128-bit ------------------------------------------------------------- */

/* Two 16-byte folds crossing two input halves (the 128-bit 32-byte step). */
static inline void eos_fold32(uint64_t *lo, uint64_t *hi, const uint8_t *a, const uint8_t *b,
                              const uint8_t *sec, uint64_t seed) {
    *lo += eos_fold16(a, sec, seed);
    *lo ^= eos_rd64(b) + eos_rd64(b + 8);
    *hi += eos_fold16(b, sec + 16, seed);
    *hi ^= eos_rd64(a) + eos_rd64(a + 8);
}

/* Final step shared by the 17-128 and 129-240 byte 128-bit paths. */
static inline void eos_h128_finish(uint64_t lo, uint64_t hi, size_t len, uint64_t seed,
                                   uint64_t *out_lo, uint64_t *out_hi) {
    uint64_t r_lo = lo + hi;
    uint64_t r_hi = lo * EOS_P64_1 + hi * EOS_P64_4 + ((uint64_t)len - seed) * EOS_P64_2;
    *out_lo = eos_mix_xxh3(r_lo);
    *out_hi = (uint64_t)0 - eos_mix_xxh3(r_hi);
}

/* 128-bit hash of 0..16 bytes. */
static inline void eos_h128_upto16(const uint8_t *in, size_t len, const uint8_t *sec,
                                   uint64_t seed, uint64_t *out_lo, uint64_t *out_hi) {
    if (len > 8) {
        uint64_t k_lo = (eos_rd64(sec + 32) ^ eos_rd64(sec + 40)) - seed;
        uint64_t k_hi = (eos_rd64(sec + 48) ^ eos_rd64(sec + 56)) + seed;
        uint64_t first = eos_rd64(in);
        uint64_t last = eos_rd64(in + len - 8);
        uint64_t m_lo, m_hi;
        eos_mul128(first ^ last ^ k_lo, EOS_P64_1, &m_lo, &m_hi);
        m_lo += (uint64_t)(len - 1) << 54;
        last ^= k_hi;
        m_hi += last + (uint64_t)(uint32_t)last * (EOS_P32_2 - 1);
        m_lo ^= eos_bswap64(m_hi);
        uint64_t h_lo, h_hi;
        eos_mul128(m_lo, EOS_P64_2, &h_lo, &h_hi);
        h_hi += m_hi * EOS_P64_2;
        *out_lo = eos_mix_xxh3(h_lo);
        *out_hi = eos_mix_xxh3(h_hi);
        return;
    }
    if (len >= 4) {
        uint64_t s = seed ^ ((uint64_t)eos_bswap32((uint32_t)seed) << 32);
        uint64_t first = eos_rd32(in), last = eos_rd32(in + len - 4);
        uint64_t key = (eos_rd64(sec + 16) ^ eos_rd64(sec + 24)) + s;
        uint64_t m_lo, m_hi;
        eos_mul128((first + (last << 32)) ^ key, EOS_P64_1 + ((uint64_t)len << 2), &m_lo, &m_hi);
        m_hi += m_lo << 1;
        m_lo ^= m_hi >> 3;
        m_lo ^= m_lo >> 35;
        m_lo *= EOS_MIX_2;
        m_lo ^= m_lo >> 28;
        *out_lo = m_lo;
        *out_hi = eos_mix_xxh3(m_hi);
        return;
    }
    if (len > 0) {
        uint32_t packed = ((uint32_t)in[0] << 16) | ((uint32_t)in[len >> 1] << 24) |
                          (uint32_t)in[len - 1] | ((uint32_t)len << 8);
        uint32_t packed_hi = eos_rotl32(eos_bswap32(packed), 13);
        uint64_t k_lo = (uint64_t)(eos_rd32(sec) ^ eos_rd32(sec + 4)) + seed;
        uint64_t k_hi = (uint64_t)(eos_rd32(sec + 8) ^ eos_rd32(sec + 12)) - seed;
        *out_lo = eos_mix_xxh64((uint64_t)packed ^ k_lo);
        *out_hi = eos_mix_xxh64((uint64_t)packed_hi ^ k_hi);
        return;
    }
    *out_lo = eos_mix_xxh64(seed ^ eos_rd64(sec + 64) ^ eos_rd64(sec + 72));
    *out_hi = eos_mix_xxh64(seed ^ eos_rd64(sec + 80) ^ eos_rd64(sec + 88));
}

/* XXH3-128 of len bytes at data with seed, as two halves; equals
   xxhash.xxh3_128_intdigest(data, seed) == (*hi << 64) | *lo. */
static inline void eos_xxh3_128(const void *data, size_t len, uint64_t seed, uint64_t *lo,
                                uint64_t *hi) {
    const uint8_t *in = (const uint8_t *)data;
    const uint8_t *sec = eos_xxh3_secret;
    if (len <= 16) {
        eos_h128_upto16(in, len, sec, seed, lo, hi);
        return;
    }
    if (len <= 128) {
        uint64_t a_lo = (uint64_t)len * EOS_P64_1, a_hi = 0;
        size_t pairs = (len - 1) / 32;
        for (size_t i = pairs + 1; i-- > 0;)
            eos_fold32(&a_lo, &a_hi, in + 16 * i, in + len - 16 * (i + 1), sec + 32 * i, seed);
        eos_h128_finish(a_lo, a_hi, len, seed, lo, hi);
        return;
    }
    if (len <= 240) {
        uint64_t a_lo = (uint64_t)len * EOS_P64_1, a_hi = 0;
        size_t rounds = len / 32;
        for (size_t i = 0; i < 4; i++)
            eos_fold32(&a_lo, &a_hi, in + 32 * i, in + 32 * i + 16, sec + 32 * i, seed);
        a_lo = eos_mix_xxh3(a_lo);
        a_hi = eos_mix_xxh3(a_hi);
        for (size_t i = 4; i < rounds; i++)
            eos_fold32(&a_lo, &a_hi, in + 32 * i, in + 32 * i + 16,
                       sec + EOS_MID_START + 32 * (i - 4), seed);
        eos_fold32(&a_lo, &a_hi, in + len - 16, in + len - 32, sec + 136 - EOS_MID_LAST - 16,
                   (uint64_t)0 - seed);
        eos_h128_finish(a_lo, a_hi, len, seed, lo, hi);
        return;
    }

    uint8_t custom[EOS_SECRET_LEN];
    uint64_t acc[8];
    if (seed != 0) {
        eos_derive_secret(custom, seed);
        sec = custom;
    }
    eos_long_accumulate(acc, in, len, sec);
    *lo = eos_merge(acc, sec + EOS_MERGE_START, (uint64_t)len * EOS_P64_1);
    *hi = eos_merge(acc, sec + EOS_SECRET_LEN - EOS_STRIPE - EOS_MERGE_START,
                    ~((uint64_t)len * EOS_P64_2));
}

#endif /* EOSCORE_XXH3_H */
