//! A fast hasher for the scheduler's small keys (state ids, state names, context keys).
//!
//! The standard library's SipHash resists hash flooding, which costs time on every lookup; the
//! keys hashed here come from the program itself (state names, ids), so the Fx algorithm
//! (a rotate, a xor and a multiply per word, as in rustc) is enough and several times faster.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// The Fx hasher.
#[derive(Debug, Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, mut bytes: &[u8]) {
        while let Some((chunk, rest)) = bytes.split_first_chunk::<8>() {
            self.add(u64::from_le_bytes(*chunk));
            bytes = rest;
        }
        if let Some((chunk, rest)) = bytes.split_first_chunk::<4>() {
            self.add(u64::from(u32::from_le_bytes(*chunk)));
            bytes = rest;
        }
        for &byte in bytes {
            self.add(u64::from(byte));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // The multiply leaves the low bits depending on the low bits of the input alone, and
        // hash tables index buckets by the low bits: keys that differ only in their last bytes
        // ("key10000", "key10001", ...) would share a handful of buckets. Folding the high half onto the low one and
        // mixing once more spreads them (two shifts, a xor and a multiply per hash).
        let folded = (self.hash ^ (self.hash >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        folded ^ (folded >> 29)
    }
}

/// Builds [`FxHasher`]s.
pub type FxBuildHasher = BuildHasherDefault<FxHasher>;
/// A `HashMap` with the Fx hasher.
pub type FxHashMap<K, V> = HashMap<K, V, FxBuildHasher>;
/// A `HashSet` with the Fx hasher.
pub type FxHashSet<T> = HashSet<T, FxBuildHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn distinguishes_similar_keys() {
        let build = FxBuildHasher::default();
        let hashes: FxHashSet<u64> = ["s1", "s2", "s10", "s100", "s1000", "state_a", "state_b"]
            .iter()
            .map(|k| build.hash_one(k))
            .collect();
        assert_eq!(hashes.len(), 7);
    }

    #[test]
    fn keys_differing_in_their_last_bytes_spread_over_buckets() {
        let build = FxBuildHasher::default();
        let buckets: FxHashSet<u64> = (10_000..100_000)
            .map(|i| build.hash_one(format!("key{i}")) & 0xffff)
            .collect();
        // 90 000 keys into 65 536 buckets: a random hash fills about 48 900 of them.
        assert!(buckets.len() > 45_000, "{} buckets used", buckets.len());
    }
}
