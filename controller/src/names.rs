//! Object names from the seeded RNG, in the alphabet the API server uses for `generateName`.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::Rng;

const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `<prefix>-<5 random characters>`, e.g. `default-k2x9q`.
pub fn generate(prefix: &str, rng: &mut ChaCha8Rng) -> String {
    let suffix: String = (0..5)
        .map(|_| ALPHABET[(rng.next_u32() as usize) % ALPHABET.len()] as char)
        .collect();
    format!("{prefix}-{suffix}")
}

/// A 32-character hex token (EC2 client tokens make CreateFleet idempotent).
pub fn token(rng: &mut ChaCha8Rng) -> String {
    format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64())
}

/// FNV-1a of a text: a stable content hash (the same on every machine and run), for names and drift.
pub fn fnv1a(text: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    #[test]
    fn same_seed_same_names() {
        let mut a = ChaCha8Rng::seed_from_u64(7);
        let mut b = ChaCha8Rng::seed_from_u64(7);
        let na = generate("default", &mut a);
        assert_eq!(na, generate("default", &mut b));
        assert_eq!(na.len(), "default-".len() + 5);
    }
}
