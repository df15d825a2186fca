// Reading GGUF weight blocks through a 32-bit view (the including shader declares `uint w[]`): no 8- or
// 16-bit storage is needed, and blocks of 18 or 34 bytes need no alignment. Shared by the mat-vec and the
// embedding gather, so both dequantize a weight alike.
uint wbyte(uint b) { return (w[b >> 2] >> ((b & 3u) * 8u)) & 0xFFu; }
// A half at an even byte offset (every GGUF block keeps its halves 2-byte aligned).
float whalf(uint b) { return unpackHalf2x16((w[b >> 2] >> ((b & 2u) * 8u)) & 0xFFFFu).x; }
int wint8(uint b) { return int(wbyte(b) ^ 0x80u) - 128; }

#if defined(WTYPE_Q8_0) || defined(WTYPE_Q4_0) || defined(WTYPE_Q4_K) || defined(WTYPE_Q6_K)
#define QUANTIZED 1
// The 32 weights of unit u (32 consecutive values) of the row starting at byte `row`.
void dequant32(uint row, uint u, out float v[32]) {
#if defined(WTYPE_Q8_0)
    // d (half), 32 x int8: x = d * q
    const uint bo = row + u * 34u;
    const float d = whalf(bo);
    for (uint i = 0; i < 32u; i++) v[i] = d * float(wint8(bo + 2u + i));
#elif defined(WTYPE_Q4_0)
    // d (half), 16 bytes: byte j holds value j (low nibble) and j+16 (high): x = d * (q - 8)
    const uint bo = row + u * 18u;
    const float d = whalf(bo);
    for (uint j = 0; j < 16u; j++) {
        const uint q = wbyte(bo + 2u + j);
        v[j] = d * (float(q & 15u) - 8.0);
        v[j + 16u] = d * (float(q >> 4) - 8.0);
    }
#elif defined(WTYPE_Q4_K)
    // 256 values in 144 bytes: d, dmin (halves), 12 bytes of 6-bit scales and mins, 128 bytes of nibbles.
    // Sub-block j (32 values) of a super-block: chunk j/2's 32 bytes, low nibbles for even j, high for odd.
    const uint bo = row + (u >> 3) * 144u, j = u & 7u;
    const float d = whalf(bo), dmin = whalf(bo + 2u);
    const uint s = bo + 4u;
    uint sc, m;
    if (j < 4u) {
        sc = wbyte(s + j) & 63u;
        m = wbyte(s + j + 4u) & 63u;
    } else {
        sc = (wbyte(s + j + 4u) & 15u) | ((wbyte(s + j - 4u) >> 6) << 4);
        m = (wbyte(s + j + 4u) >> 4) | ((wbyte(s + j) >> 6) << 4);
    }
    const float ds = d * float(sc), dm = dmin * float(m);
    const uint qs = bo + 16u + (j >> 1) * 32u, shift = (j & 1u) * 4u;
    for (uint l = 0; l < 32u; l++) v[l] = ds * float((wbyte(qs + l) >> shift) & 15u) - dm;
#elif defined(WTYPE_Q6_K)
    // 256 values in 210 bytes: ql[128] (low 4 bits), qh[64] (high 2 bits), 16 int8 scales, d (half).
    // Half n = j/4 (128 values) uses ql[64n..], qh[32n..], scales[8n..]; quarter q = j%4 within it.
    const uint bo = row + (u >> 3) * 210u, j = u & 7u, n = j >> 2, q = j & 3u;
    const float d = whalf(bo + 208u);
    const uint ql = bo + 64u * n + 32u * (q & 1u), qh = bo + 128u + 32u * n, sc = bo + 192u + 8u * n + 2u * q;
    const uint lshift = (q >> 1) * 4u, hshift = 2u * q;
    for (uint l = 0; l < 32u; l++) {
        const uint val = ((wbyte(ql + l) >> lshift) & 15u) | (((wbyte(qh + l) >> hshift) & 3u) << 4);
        v[l] = d * float(wint8(sc + (l >> 4))) * (float(val) - 32.0);
    }
#endif
}
#endif
