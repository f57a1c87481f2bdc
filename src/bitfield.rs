//! A fixed-length set of chunk indexes: which chunks a store, peer or plan covers.
//!
//! Bit `i` is bit `7 - (i % 8)` of byte `i / 8` (most significant bit first, as in
//! BitTorrent), so the byte form is the same on the wire, on disk and in the tracker's JSON.
//! [`Live`] is a download's growing set, shared with the peer server that serves it.

mod live;

pub use live::{Live, LiveHave};

/// A set of chunk indexes in `0..len`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitfield {
    len: u32,
    bytes: Vec<u8>,
}

impl Bitfield {
    /// An empty set of `len` chunks.
    pub fn new(len: u32) -> Self {
        Bitfield {
            len,
            bytes: vec![0; Self::byte_len(len)],
        }
    }

    /// The set of all `len` chunks.
    pub fn full(len: u32) -> Self {
        let mut bits = Self::new(len);
        for i in 0..len {
            bits.set(i);
        }
        bits
    }

    /// How many bytes hold `len` bits.
    pub fn byte_len(len: u32) -> usize {
        (len as usize).div_ceil(8)
    }

    /// Rebuilds a set from its byte form; fails when the length is wrong or padding bits are set.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() != Self::byte_len(len) {
            return Err(format!(
                "bitfield of {len} chunks needs {} bytes, got {}",
                Self::byte_len(len),
                bytes.len()
            ));
        }
        let bits = Bitfield {
            len,
            bytes: bytes.to_vec(),
        };
        let spare = (bits.bytes.len() * 8) as u32 - len;
        if spare > 0
            && bits
                .bytes
                .last()
                .is_some_and(|b| b & ((1u8 << spare) - 1) != 0)
        {
            return Err("bitfield has bits set past its length".into());
        }
        Ok(bits)
    }

    /// Rebuilds a set from lowercase or uppercase hex.
    pub fn from_hex(len: u32, text: &str) -> Result<Self, String> {
        let bytes = hex::decode(text).map_err(|e| format!("bitfield is not hex: {e}"))?;
        Self::from_bytes(len, &bytes)
    }

    /// The byte form.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The hex form used in the tracker's JSON.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.bytes)
    }

    /// The number of chunks the set ranges over.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True when the set ranges over no chunks at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether chunk `i` is in the set (false when out of range).
    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.bytes[(i / 8) as usize] & (0x80 >> (i % 8)) != 0
    }

    /// Adds chunk `i`; out-of-range indexes are ignored.
    pub fn set(&mut self, i: u32) {
        if i < self.len {
            self.bytes[(i / 8) as usize] |= 0x80 >> (i % 8);
        }
    }

    /// Removes chunk `i`; out-of-range indexes are ignored.
    pub fn unset(&mut self, i: u32) {
        if i < self.len {
            self.bytes[(i / 8) as usize] &= !(0x80 >> (i % 8));
        }
    }

    /// Adds every chunk of `other` (which must range over as many chunks).
    pub fn union_with(&mut self, other: &Bitfield) {
        debug_assert_eq!(self.len, other.len);
        for (a, b) in self.bytes.iter_mut().zip(&other.bytes) {
            *a |= b;
        }
    }

    /// Removes every chunk of `other` (which must range over as many chunks).
    pub fn remove_all(&mut self, other: &Bitfield) {
        debug_assert_eq!(self.len, other.len);
        for (a, b) in self.bytes.iter_mut().zip(&other.bytes) {
            *a &= !b;
        }
    }

    /// How many chunks are in the set.
    pub fn count(&self) -> u32 {
        self.bytes.iter().map(|b| b.count_ones()).sum()
    }

    /// True when every chunk is in the set.
    pub fn is_full(&self) -> bool {
        self.count() == self.len
    }

    /// The chunk indexes in the set, in increasing order.
    pub fn ones(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_most_significant_first() {
        let mut b = Bitfield::new(10);
        b.set(0);
        b.set(9);
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert!(b.get(0) && b.get(9) && !b.get(1) && !b.get(10));
        assert_eq!(b.count(), 2);
        assert_eq!(b.ones().collect::<Vec<_>>(), vec![0, 9]);
    }

    #[test]
    fn set_operations_work_bytewise() {
        let mut a = Bitfield::new(12);
        let mut b = Bitfield::new(12);
        a.set(1);
        a.set(9);
        b.set(9);
        b.set(11);
        let mut union = a.clone();
        union.union_with(&b);
        assert_eq!(union.ones().collect::<Vec<_>>(), vec![1, 9, 11]);
        union.remove_all(&a);
        assert_eq!(union.ones().collect::<Vec<_>>(), vec![11]);
        union.unset(11);
        assert_eq!(union.count(), 0);
    }

    #[test]
    fn byte_form_round_trips_and_rejects_padding() {
        let full = Bitfield::full(10);
        assert!(full.is_full());
        assert_eq!(Bitfield::from_hex(10, &full.to_hex()), Ok(full));
        assert!(Bitfield::from_bytes(10, &[0xff, 0xff]).is_err());
        assert!(Bitfield::from_bytes(10, &[0xff]).is_err());
        assert!(Bitfield::from_bytes(0, &[]).unwrap().is_full());
    }

    mod properties {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn byte_and_hex_forms_round_trip(bits in vec(any::<bool>(), 0..300)) {
                let mut field = Bitfield::new(bits.len() as u32);
                for (i, &on) in bits.iter().enumerate() {
                    if on {
                        field.set(i as u32);
                    }
                }
                let ones: Vec<u32> = (0..bits.len() as u32).filter(|&i| bits[i as usize]).collect();
                prop_assert_eq!(field.ones().collect::<Vec<_>>(), ones.clone());
                prop_assert_eq!(field.count() as usize, ones.len());
                prop_assert_eq!(field.is_full(), ones.len() == bits.len());
                prop_assert_eq!(Bitfield::from_bytes(field.len(), field.as_bytes()), Ok(field.clone()));
                prop_assert_eq!(Bitfield::from_hex(field.len(), &field.to_hex()), Ok(field.clone()));
            }

            #[test]
            fn arbitrary_bytes_are_accepted_only_with_the_right_length_and_no_padding(
                len in 0u32..100,
                bytes in vec(any::<u8>(), 0..16),
            ) {
                let spare = (8 - len % 8) % 8;
                let padding_clear = bytes.last().is_none_or(|b| b & ((1u16 << spare) - 1) as u8 == 0);
                let fits = bytes.len() == Bitfield::byte_len(len) && padding_clear;
                match Bitfield::from_bytes(len, &bytes) {
                    Ok(field) => {
                        prop_assert!(fits);
                        prop_assert!(field.ones().all(|i| i < len));
                    }
                    Err(_) => prop_assert!(!fits),
                }
            }

            #[test]
            fn arbitrary_text_as_hex_never_panics(len in 0u32..100, text in ".{0,40}") {
                let _ = Bitfield::from_hex(len, &text);
            }
        }
    }
}
