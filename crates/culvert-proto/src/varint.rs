//! QUIC variable-length integers (RFC 9000 §16): 1, 2, 4 or 8 bytes, length in the top two bits.
//!
//! Used for stream ids, flow ids, credit and error codes, so small values cost one byte.

use bytes::{Buf, BufMut};

/// Largest value a varint can carry: 2^62 - 1.
pub const MAX: u64 = (1 << 62) - 1;

/// Number of bytes `v` takes when encoded (`None` when it exceeds [`MAX`]).
pub fn encoded_len(v: u64) -> Option<usize> {
    match v {
        0..=63 => Some(1),
        64..=16_383 => Some(2),
        16_384..=1_073_741_823 => Some(4),
        1_073_741_824..=MAX => Some(8),
        _ => None,
    }
}

/// Appends `v` in its shortest encoding. The caller has checked `v <= MAX`.
pub fn put(buf: &mut impl BufMut, v: u64) {
    debug_assert!(v <= MAX);
    match encoded_len(v) {
        Some(1) => buf.put_u8(v as u8),
        Some(2) => buf.put_u16(0x4000 | v as u16),
        Some(4) => buf.put_u32(0x8000_0000 | v as u32),
        _ => buf.put_u64(0xc000_0000_0000_0000 | (v & MAX)),
    }
}

/// Reads one varint, or `None` when `buf` ends first (nothing is consumed then).
pub fn get(buf: &mut impl Buf) -> Option<u64> {
    let first = *buf.chunk().first()?;
    let len = 1usize << (first >> 6);
    if buf.remaining() < len {
        return None;
    }
    let v = match len {
        1 => u64::from(buf.get_u8()),
        2 => u64::from(buf.get_u16() & 0x3fff),
        4 => u64::from(buf.get_u32() & 0x3fff_ffff),
        _ => buf.get_u64() & MAX,
    };
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(v in 0..=MAX) {
            let mut b = Vec::new();
            put(&mut b, v);
            prop_assert_eq!(b.len(), encoded_len(v).unwrap());
            let mut s = &b[..];
            prop_assert_eq!(get(&mut s), Some(v));
            prop_assert!(s.is_empty());
        }

        #[test]
        fn truncated_reads_nothing(v in 64..=MAX) {
            let mut b = Vec::new();
            put(&mut b, v);
            let mut s = &b[..b.len() - 1];
            prop_assert_eq!(get(&mut s), None);
        }
    }

    #[test]
    fn rfc_examples() {
        let mut s: &[u8] = &[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c];
        assert_eq!(get(&mut s), Some(151_288_809_941_952_652));
        let mut s: &[u8] = &[0x9d, 0x7f, 0x3e, 0x7d];
        assert_eq!(get(&mut s), Some(494_878_333));
        let mut s: &[u8] = &[0x7b, 0xbd];
        assert_eq!(get(&mut s), Some(15_293));
        assert_eq!(encoded_len(MAX + 1), None);
    }
}
