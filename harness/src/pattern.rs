//! Deterministic test bytes: one generator, so both ends of a connection can check what they got
//! without storing it, and runs are repeatable.

use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};

/// A deterministic byte stream (xorshift).
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Pattern(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// `len` pattern bytes of `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Pattern::new(seed).fill(&mut v);
    v
}

/// Writes `len` pattern bytes; returns their SHA-256.
pub fn send_pattern(w: &mut impl Write, seed: u64, len: usize) -> io::Result<[u8; 32]> {
    let mut p = Pattern::new(seed);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        p.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        left -= n;
    }
    Ok(h.finalize().into())
}

/// Reads to EOF; returns (bytes, SHA-256).
pub fn read_hash(r: &mut impl Read) -> io::Result<(usize, [u8; 32])> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((total, h.finalize().into()));
        }
        total += n;
        h.update(&buf[..n]);
    }
}

/// SHA-256 of `len` pattern bytes, computed without a socket.
pub fn pattern_hash(seed: u64, len: usize) -> [u8; 32] {
    send_pattern(&mut io::sink(), seed, len).unwrap()
}

/// FNV-1a, 64 bit: a short digest for "same bytes" comparisons across servers.
pub fn fnv64(h: u64, data: &[u8]) -> u64 {
    let mut h = if h == 0 { 0xcbf2_9ce4_8422_2325 } else { h };
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
