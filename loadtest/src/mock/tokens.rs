//! Deterministic "tokenisation" and text generation.
//!
//! The mock counts a token per whitespace-separated word, so a test can
//! compute every usage number by hand (see the README for the formulas).
//! Generated text is a sequence of words drawn from [`VOCABULARY`] by a
//! SplitMix64 generator seeded with the FNV-1a hash of the request's last
//! message text: the same request always yields the same words.

/// The fixed vocabulary generated text is drawn from: plain lowercase English
/// words, no punctuation, so word count and token count coincide.
pub const VOCABULARY: &[&str] = &[
    "river", "stone", "light", "paper", "garden", "window", "silver", "market", "forest", "candle",
    "bridge", "winter", "harbor", "orange", "pencil", "meadow", "ladder", "castle", "rabbit",
    "pocket", "valley", "button", "planet", "basket", "cotton", "engine", "feather", "island",
    "jacket", "kettle", "lemon", "mirror", "needle", "ocean", "pepper", "quiet", "ribbon",
    "saddle", "tunnel", "velvet", "wagon", "yellow", "anchor", "blanket", "copper", "desert",
    "echo", "fabric", "glacier", "hollow", "ink", "jungle", "lantern", "marble", "nickel", "olive",
    "puzzle", "quartz", "rocket", "shadow", "timber", "umbrella", "violet", "whistle",
];

/// FNV-1a 64-bit offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The FNV-1a 64-bit hash of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// One step of the SplitMix64 generator: advances `state`, returns the output.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The number of whitespace-separated words in `s` (Unicode whitespace, as
/// Rust's `split_whitespace` and Python's `str.split()` see it).
pub fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// An iterator over the `count` generated words for a given seed text.
#[derive(Clone)]
pub struct Words {
    state: u64,
    remaining: usize,
}

impl Words {
    /// The words generated for `seed_text` (the request's last message text).
    pub fn new(seed_text: &str, count: usize) -> Self {
        Words {
            state: fnv1a(seed_text.as_bytes()),
            remaining: count,
        }
    }
}

impl Iterator for Words {
    type Item = &'static str;

    fn next(&mut self) -> Option<&'static str> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let pick = splitmix64(&mut self.state) % VOCABULARY.len() as u64;
        // `pick` < VOCABULARY.len(), so the cast and the index are in range.
        VOCABULARY.get(pick as usize).copied()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

/// The generated text: the words of [`Words`] joined by single spaces.
pub fn generate_text(seed_text: &str, count: usize) -> String {
    let mut text = String::with_capacity(count * 8);
    for (i, word) in Words::new(seed_text, count).enumerate() {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(word);
    }
    text
}

/// A deterministic, L2-normalised embedding vector of `dimensions` values
/// derived from `seed` (the FNV-1a hash of the input).
pub fn embedding_vector(seed: u64, dimensions: usize) -> Vec<f32> {
    let mut state = seed;
    let raw: Vec<f64> = (0..dimensions)
        .map(|_| {
            // 53 random bits mapped to [-1, 1).
            let unit = (splitmix64(&mut state) >> 11) as f64 / (1u64 << 53) as f64;
            unit * 2.0 - 1.0
        })
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm == 0.0 {
        // Practically unreachable; keep the vector unit-length anyway.
        let mut unit = vec![0.0f32; dimensions];
        if let Some(first) = unit.first_mut() {
            *first = 1.0;
        }
        return unit;
    }
    raw.iter().map(|x| (x / norm) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn words_counts_unicode_whitespace() {
        assert_eq!(words(""), 0);
        assert_eq!(words("  hello \t world\n"), 2);
        assert_eq!(words("a\u{3000}b"), 2);
    }

    #[test]
    fn generated_text_is_deterministic_and_sized() {
        let a = generate_text("Hello there", 16);
        assert_eq!(a, generate_text("Hello there", 16));
        assert_eq!(words(&a), 16);
        assert_ne!(a, generate_text("Hello there!", 16));
        assert_eq!(generate_text("x", 0), "");
        assert!(a.bytes().all(|b| b == b' ' || b.is_ascii_lowercase()));
    }

    #[test]
    fn embedding_is_unit_length() {
        for dims in [1usize, 2, 16, 1536] {
            let v = embedding_vector(fnv1a(b"hi"), dims);
            assert_eq!(v.len(), dims);
            let norm: f64 = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
            assert!((norm - 1.0).abs() < 1e-5, "dims {dims}: {norm}");
        }
    }
}
