//! SipHash-2-4 (Aumasson and Bernstein, 2012), the keyed MAC of the probe
//! exchange when the pair shares a key (`auth_key_file`): 128-bit key,
//! 64-bit tag. It is what the Linux kernel uses for its own short keyed
//! hashes, and small enough for the XDP program: a fixed-size message is a
//! fixed, fully unrolled sequence of additions, rotations and xors, which
//! the verifier accepts without loops.
//!
//! The message here is always a whole number of 8-byte words, read
//! little-endian as the reference implementation does; [`siphash24`] takes
//! any byte length (the known-answer tests use the paper's vectors).

/// A 128-bit key as two little-endian words (`k0` = bytes 0..8).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Key {
    pub k0: u64,
    pub k1: u64,
}

impl Key {
    pub const fn from_bytes(b: [u8; 16]) -> Self {
        Self {
            k0: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            k1: u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        }
    }

    /// The all-zero key means "no key".
    pub const fn is_set(&self) -> bool {
        self.k0 != 0 || self.k1 != 0
    }
}

struct State {
    v0: u64,
    v1: u64,
    v2: u64,
    v3: u64,
}

impl State {
    #[inline(always)]
    fn new(key: &Key) -> Self {
        Self {
            v0: key.k0 ^ 0x736f_6d65_7073_6575,
            v1: key.k1 ^ 0x646f_7261_6e64_6f6d,
            v2: key.k0 ^ 0x6c79_6765_6e65_7261,
            v3: key.k1 ^ 0x7465_6462_7974_6573,
        }
    }

    #[inline(always)]
    fn round(&mut self) {
        self.v0 = self.v0.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(13);
        self.v1 ^= self.v0;
        self.v0 = self.v0.rotate_left(32);
        self.v2 = self.v2.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(16);
        self.v3 ^= self.v2;
        self.v0 = self.v0.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(21);
        self.v3 ^= self.v0;
        self.v2 = self.v2.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(17);
        self.v1 ^= self.v2;
        self.v2 = self.v2.rotate_left(32);
    }

    /// Two compression rounds over one message word.
    #[inline(always)]
    fn absorb(&mut self, m: u64) {
        self.v3 ^= m;
        self.round();
        self.round();
        self.v0 ^= m;
    }

    /// Four finalization rounds.
    #[inline(always)]
    fn finish(mut self) -> u64 {
        self.v2 ^= 0xff;
        self.round();
        self.round();
        self.round();
        self.round();
        self.v0 ^ self.v1 ^ self.v2 ^ self.v3
    }
}

/// SipHash-2-4 fed one whole little-endian word at a time: a message of
/// `8 * words` bytes, without holding it.
pub struct Sip24(State);

impl Sip24 {
    #[inline(always)]
    pub fn new(key: &Key) -> Self {
        Self(State::new(key))
    }

    #[inline(always)]
    pub fn write(&mut self, word: u64) {
        self.0.absorb(word);
    }

    /// The tag, after `words` calls to [`Sip24::write`].
    #[inline(always)]
    pub fn finish(mut self, words: usize) -> u64 {
        self.0.absorb(((8 * words) as u64 & 0xff) << 56);
        self.0.finish()
    }
}

/// SipHash-2-4 of `N` whole little-endian words (a message of `8 * N`
/// bytes): the form the XDP program computes.
#[inline(always)]
pub fn siphash24_words<const N: usize>(key: &Key, words: &[u64; N]) -> u64 {
    let mut s = State::new(key);
    let mut k = 0;
    while k < N {
        s.absorb(words[k]);
        k += 1;
    }
    // The last block: no bytes left, the length in the top byte.
    s.absorb(((8 * N) as u64 & 0xff) << 56);
    s.finish()
}

/// SipHash-2-4 of any byte string (the reference definition).
pub fn siphash24(key: &Key, msg: &[u8]) -> u64 {
    let mut s = State::new(key);
    let mut chunks = msg.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        s.absorb(u64::from_le_bytes(w));
    }
    let rest = chunks.remainder();
    let mut last = [0u8; 8];
    last[..rest.len()].copy_from_slice(rest);
    last[7] = msg.len() as u8;
    s.absorb(u64::from_le_bytes(last));
    s.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key of the paper's test vectors: bytes 00 01 .. 0f.
    fn paper_key() -> Key {
        let mut b = [0u8; 16];
        for (k, x) in b.iter_mut().enumerate() {
            *x = k as u8;
        }
        Key::from_bytes(b)
    }

    /// The paper's Appendix A: message 00 01 .. 0e (15 bytes).
    #[test]
    fn the_paper_s_example() {
        let msg: [u8; 15] = core::array::from_fn(|k| k as u8);
        assert_eq!(siphash24(&paper_key(), &msg), 0xa129_ca61_49be_45e5);
    }

    /// The first vectors of the reference implementation's `vectors.h`
    /// (messages 00, 00 01, ..., of length 0 to 8, and 16), as the
    /// little-endian bytes of the tag.
    #[test]
    fn the_reference_vectors() {
        let expected: [(usize, [u8; 8]); 8] = [
            (0, [0x31, 0x0e, 0x0e, 0xdd, 0x47, 0xdb, 0x6f, 0x72]),
            (1, [0xfd, 0x67, 0xdc, 0x93, 0xc5, 0x39, 0xf8, 0x74]),
            (7, [0x37, 0xd1, 0x01, 0x8b, 0xf5, 0x00, 0x02, 0xab]),
            (8, [0x62, 0x24, 0x93, 0x9a, 0x79, 0xf5, 0xf5, 0x93]),
            (15, [0xe5, 0x45, 0xbe, 0x49, 0x61, 0xca, 0x29, 0xa1]),
            (16, [0xdb, 0x9b, 0xc2, 0x57, 0x7f, 0xcc, 0x2a, 0x3f]),
            (48, [0x51, 0xa9, 0xcb, 0x9e, 0xcb, 0xa3, 0x12, 0xe6]),
            (56, [0xbd, 0x83, 0x8d, 0x3a, 0xaf, 0xbf, 0x8d, 0xb7]),
        ];
        for (len, tag) in expected {
            let msg: [u8; 64] = core::array::from_fn(|k| k as u8);
            assert_eq!(
                siphash24(&paper_key(), &msg[..len]).to_le_bytes(),
                tag,
                "message of {len} bytes"
            );
        }
    }

    /// The word form on the reference vector of 48 bytes (six words).
    #[test]
    fn whole_words_match_the_reference() {
        let words: [u64; 6] = core::array::from_fn(|k| {
            u64::from_le_bytes(core::array::from_fn(|j| (8 * k + j) as u8))
        });
        assert_eq!(
            siphash24_words(&paper_key(), &words).to_le_bytes(),
            [0x51, 0xa9, 0xcb, 0x9e, 0xcb, 0xa3, 0x12, 0xe6]
        );
    }

    #[test]
    fn whole_words_agree_with_the_byte_form() {
        let msg: [u8; 48] = core::array::from_fn(|k| (k * 7) as u8);
        let words: [u64; 6] = core::array::from_fn(|k| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&msg[8 * k..8 * k + 8]);
            u64::from_le_bytes(w)
        });
        let key = Key {
            k0: 0x0123_4567_89ab_cdef,
            k1: 0xfedc_ba98_7654_3210,
        };
        assert_eq!(siphash24_words(&key, &words), siphash24(&key, &msg));
    }
}
