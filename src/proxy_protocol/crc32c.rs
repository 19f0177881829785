//! CRC-32C (Castagnoli, RFC 4960 appendix B), for the v2 `PP2_TYPE_CRC32C` TLV: a receiver that
//! supports it must verify it. A table built at compile time; headers are small, so no SIMD.

const POLY: u32 = 0x82F6_3B78; // 0x1EDC6F41 bit-reversed

const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// A running checksum, fed in pieces so that the checksum field can be read as zeros without a copy.
pub(super) struct Crc32c(u32);

impl Crc32c {
    pub(super) fn new() -> Self {
        Crc32c(!0)
    }

    pub(super) fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = TABLE[((self.0 ^ u32::from(b)) & 0xFF) as usize] ^ (self.0 >> 8);
        }
    }

    pub(super) fn finish(self) -> u32 {
        !self.0
    }
}

#[cfg(test)]
mod tests {
    use super::Crc32c;

    fn crc(bytes: &[u8]) -> u32 {
        let mut c = Crc32c::new();
        c.update(bytes);
        c.finish()
    }

    #[test]
    fn check_values() {
        // The standard check value of CRC-32C, and RFC 3720 (iSCSI) B.4's 32 bytes of zeros.
        assert_eq!(crc(b"123456789"), 0xE306_9283);
        assert_eq!(crc(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc(&[0xFFu8; 32]), 0x62A8_AB43);
    }

    #[test]
    fn pieces_equal_whole() {
        let data: Vec<u8> = (0..=255u8).collect();
        let mut c = Crc32c::new();
        c.update(&data[..100]);
        c.update(&data[100..]);
        assert_eq!(c.finish(), crc(&data));
    }
}
