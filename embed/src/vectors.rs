//! Vectors for the semantic cache: int8 quantization of unit f32 vectors and
//! the integer dot product that compares them.
//!
//! A prompt's embedding is stored as one signed byte per dimension and one
//! scale (`scale = max|x| / 127`, `x ≈ scale · q`): a quarter of the f32's
//! memory, and a dot product the CPU computes 16 lanes at a time. The
//! cosine of two unit vectors is then `dot(qa, qb) · sa · sb`, within about
//! 0.01 of the f32 cosine for the 256 dimensions the cache uses (each
//! component is off by at most half a step, and the errors mostly cancel).
//!
//! [`dot_i8`] is exact: the AVX2 kernel widens to i16 and multiplies into
//! i32 pairs (`vpmaddwd`), so it agrees to the bit with the portable loop on
//! every input, -128 included. (`vpmaddubsw`, twice as wide, saturates at
//! -128·-128·2 and would not.) Sums wrap on overflow, identically in both
//! paths; with |q| ≤ 127 that needs over 130,000 dimensions.

use std::sync::OnceLock;

/// The largest code magnitude. Symmetric (never -128), so a negated vector
/// quantizes to the negated codes.
pub const CODE_MAX: f32 = 127.0;

/// A vector quantized to one signed byte per dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    pub data: Box<[i8]>,
    /// What one code step is worth: `x ≈ scale · q`. 0 for a zero (or
    /// non-finite) vector, whose every cosine is then 0.
    pub scale: f32,
}

impl Quantized {
    pub fn new(v: &[f32]) -> Quantized {
        let mut data = vec![0i8; v.len()].into_boxed_slice();
        let scale = quantize_into(v, &mut data);
        Quantized { data, scale }
    }

    /// The cosine of the two vectors this and `other` quantize (unit
    /// vectors: their dot product), approximately.
    pub fn cosine(&self, other: &Quantized) -> f32 {
        dot_i8(&self.data, &other.data) as f32 * self.scale * other.scale
    }
}

/// Writes the codes of `v` into `out` and returns the scale. Positions of
/// `out` beyond `v` are zeroed (padding that adds nothing to a dot product);
/// components beyond `out` are dropped. A vector with no finite nonzero
/// magnitude (all zeros, or an infinity) quantizes to zeros with scale 0; a
/// NaN component becomes 0.
pub fn quantize_into(v: &[f32], out: &mut [i8]) -> f32 {
    // `f32::max` skips NaN, so a NaN component cannot poison the maximum.
    let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        out.fill(0);
        return 0.0;
    }
    let inv = CODE_MAX / max;
    let n = v.len().min(out.len());
    for (o, &x) in out[..n].iter_mut().zip(v) {
        let y = x * inv;
        // Round half away from zero; `as` truncates and saturates (NaN to
        // 0), so no code leaves [-127, 127].
        *o = (y + 0.5f32.copysign(y)).clamp(-CODE_MAX, CODE_MAX) as i8;
    }
    out[n..].fill(0);
    max / CODE_MAX
}

/// The dot product of `a` and `b` over the shorter of the two, exact (with
/// wrapping i32 sums). Uses AVX2 where the CPU has it (detected once).
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    (kernels().dot)(a, b)
}

/// `out[i] = dot_i8(q, row i of rows)`, where `rows` holds rows of
/// `q.len()` codes back to back; as many as both `rows` and `out` hold. One
/// call per block of rows: the brute-force scan pays the dispatch once and
/// the kernel stays inlined in its loop.
#[inline]
pub fn dot_rows(q: &[i8], rows: &[i8], out: &mut [i32]) {
    (kernels().rows)(q, rows, out)
}

/// `out[i] = dot_i8(q, rows[i])`, as many as both hold: a graph search's
/// one call per node expanded, over neighbours scattered in memory. The
/// AVX2 kernel fetches a few rows ahead of the one it multiplies, so their
/// cache misses overlap; and when `q` holds no -128 (never, for codes from
/// [`quantize_into`]) it multiplies 32 codes per step (`vpmaddubsw` on
/// |row| and q signed by row: at most 2·128·127, no saturation), exact all
/// the same.
#[inline]
pub fn dot_gather(q: &[i8], rows: &[&[i8]], out: &mut [i32]) {
    (kernels().gather)(q, rows, out)
}

/// The portable dot product (what the AVX2 kernel must equal).
pub fn dot_i8_portable(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).fold(0i32, |s, (&x, &y)| {
        s.wrapping_add(i32::from(x) * i32::from(y))
    })
}

fn dot_gather_portable(q: &[i8], rows: &[&[i8]], out: &mut [i32]) {
    for (o, row) in out.iter_mut().zip(rows) {
        *o = dot_i8_portable(q, row);
    }
}

fn dot_rows_portable(q: &[i8], rows: &[i8], out: &mut [i32]) {
    if q.is_empty() {
        out.fill(0);
        return;
    }
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(q.len())) {
        *o = dot_i8_portable(q, row);
    }
}

/// Whether [`dot_i8`] runs the AVX2 kernel on this CPU.
pub fn simd_active() -> bool {
    kernels().simd
}

struct Kernels {
    dot: fn(&[i8], &[i8]) -> i32,
    rows: fn(&[i8], &[i8], &mut [i32]),
    gather: fn(&[i8], &[&[i8]], &mut [i32]),
    simd: bool,
}

/// The kernels for this CPU, chosen on first use.
fn kernels() -> &'static Kernels {
    static KERNELS: OnceLock<Kernels> = OnceLock::new();
    KERNELS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Kernels {
                dot: avx2::dot_checked,
                rows: avx2::rows_checked,
                gather: avx2::gather_checked,
                simd: true,
            };
        }
        Kernels {
            dot: dot_i8_portable,
            rows: dot_rows_portable,
            gather: dot_gather_portable,
            simd: false,
        }
    })
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Only ever stored in [`super::Kernels`] after AVX2 was detected.
    pub(super) fn dot_checked(a: &[i8], b: &[i8]) -> i32 {
        // SAFETY: `kernels()` hands this function out only when the CPU
        // reports AVX2.
        unsafe { dot(a, b) }
    }

    /// Only ever stored in [`super::Kernels`] after AVX2 was detected.
    pub(super) fn rows_checked(q: &[i8], rows: &[i8], out: &mut [i32]) {
        // SAFETY: as for `dot_checked`.
        unsafe { dot_rows(q, rows, out) }
    }

    /// Only ever stored in [`super::Kernels`] after AVX2 was detected.
    pub(super) fn gather_checked(q: &[i8], rows: &[&[i8]], out: &mut [i32]) {
        // SAFETY: as for `dot_checked`.
        unsafe { gather(q, rows, out) }
    }

    /// 16 codes sign-extended to 16 i16 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn widen(s: &[i8; 16]) -> __m256i {
        // SAFETY: `s` is 16 readable bytes; the load is unaligned.
        _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(s.as_ptr().cast()) })
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn dot(a: &[i8], b: &[i8]) -> i32 {
        let n = a.len().min(b.len());
        let (a16, ta) = a[..n].as_chunks::<16>();
        let (b16, tb) = b[..n].as_chunks::<16>();
        let b16 = &b16[..a16.len()];
        // Two accumulators: consecutive adds do not wait on each other.
        let mut acc0 = _mm256_setzero_si256();
        let mut acc1 = _mm256_setzero_si256();
        let mut i = 0;
        while i + 1 < a16.len() {
            acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(widen(&a16[i]), widen(&b16[i])));
            acc1 = _mm256_add_epi32(
                acc1,
                _mm256_madd_epi16(widen(&a16[i + 1]), widen(&b16[i + 1])),
            );
            i += 2;
        }
        if i < a16.len() {
            acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(widen(&a16[i]), widen(&b16[i])));
        }
        hsum(_mm256_add_epi32(acc0, acc1)).wrapping_add(super::dot_i8_portable(ta, tb))
    }

    #[target_feature(enable = "avx2")]
    fn dot_rows(q: &[i8], rows: &[i8], out: &mut [i32]) {
        if q.is_empty() {
            out.fill(0);
            return;
        }
        let signed = !q.contains(&i8::MIN);
        for (o, row) in out.iter_mut().zip(rows.chunks_exact(q.len())) {
            *o = if signed {
                dot_signed(q, row)
            } else {
                dot(q, row)
            };
        }
    }

    /// Rows fetched ahead of the one being multiplied: four rows of 256
    /// codes are 16 cache lines in flight, what one core's fill buffers
    /// hold.
    const GATHER_AHEAD_ROWS: usize = 4;

    #[target_feature(enable = "avx2")]
    fn gather(q: &[i8], rows: &[&[i8]], out: &mut [i32]) {
        let signed = !q.contains(&i8::MIN);
        for row in rows.iter().take(GATHER_AHEAD_ROWS) {
            prefetch(row);
        }
        for (j, (o, row)) in out.iter_mut().zip(rows).enumerate() {
            if let Some(ahead) = rows.get(j + GATHER_AHEAD_ROWS) {
                prefetch(ahead);
            }
            *o = if signed {
                dot_signed(q, row)
            } else {
                dot(q, row)
            };
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn prefetch(row: &[i8]) {
        for line in row.chunks(64) {
            // A hint that never faults (and the address is a live slice's).
            _mm_prefetch::<_MM_HINT_T0>(line.as_ptr());
        }
    }

    /// The dot product when `q` holds no -128: |row| (unsigned, 128 at
    /// most) times q signed by row (|·| ≤ 127), 32 lanes per step; a pair
    /// sums to at most 32,512, under i16's saturation.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn dot_signed(q: &[i8], row: &[i8]) -> i32 {
        let n = q.len().min(row.len());
        let (q32, qt) = q[..n].as_chunks::<32>();
        let (r32, rt) = row[..n].as_chunks::<32>();
        let r32 = &r32[..q32.len()];
        let ones = _mm256_set1_epi16(1);
        let step = |acc: __m256i, q: &[i8; 32], r: &[i8; 32]| {
            // SAFETY: 32 readable bytes each; unaligned loads.
            let (q, r) = unsafe {
                (
                    _mm256_loadu_si256(q.as_ptr().cast()),
                    _mm256_loadu_si256(r.as_ptr().cast()),
                )
            };
            let p = _mm256_maddubs_epi16(_mm256_abs_epi8(r), _mm256_sign_epi8(q, r));
            _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones))
        };
        let mut acc0 = _mm256_setzero_si256();
        let mut acc1 = _mm256_setzero_si256();
        let mut i = 0;
        while i + 1 < q32.len() {
            acc0 = step(acc0, &q32[i], &r32[i]);
            acc1 = step(acc1, &q32[i + 1], &r32[i + 1]);
            i += 2;
        }
        if i < q32.len() {
            acc0 = step(acc0, &q32[i], &r32[i]);
        }
        hsum(_mm256_add_epi32(acc0, acc1)).wrapping_add(super::dot_i8_portable(qt, rt))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn hsum(acc: __m256i) -> i32 {
        let s = _mm_add_epi32(
            _mm256_castsi256_si128(acc),
            _mm256_extracti128_si256::<1>(acc),
        );
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: deterministic test data without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn byte(&mut self) -> i8 {
            (self.next() >> 56) as u8 as i8
        }
        /// Roughly gaussian: the sum of four uniforms, centred.
        fn normal(&mut self) -> f32 {
            (0..4)
                .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32)
                .sum::<f32>()
                - 2.0
        }
        fn unit(&mut self, dims: usize) -> Vec<f32> {
            let mut v: Vec<f32> = (0..dims).map(|_| self.normal()).collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= n);
            v
        }
    }

    #[test]
    fn the_simd_kernel_equals_the_portable_loop_on_every_length_and_extreme() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for len in (0..=130).chain([255, 256, 257, 1000, 4096]) {
            let a: Vec<i8> = (0..len).map(|_| rng.byte()).collect();
            let b: Vec<i8> = (0..len).map(|_| rng.byte()).collect();
            assert_eq!(dot_i8(&a, &b), dot_i8_portable(&a, &b), "len {len}");
            // Unequal lengths: the shorter one decides.
            let short = &b[..len / 2];
            assert_eq!(dot_i8(&a, short), dot_i8_portable(&a, short));
        }
        for len in [1, 16, 31, 32, 33, 256, 300] {
            for (x, y) in [(-128, -128), (-128, 127), (127, 127), (-127, -128)] {
                let (a, b) = (vec![x; len], vec![y; len]);
                let want = len as i32 * i32::from(x) * i32::from(y);
                assert_eq!(dot_i8(&a, &b), want, "{x}·{y} × {len}");
                assert_eq!(dot_i8_portable(&a, &b), want);
            }
        }
        // The block kernel: each row as the single kernel computes it.
        let q: Vec<i8> = (0..100).map(|_| rng.byte()).collect();
        let rows: Vec<i8> = (0..100 * 7 + 3).map(|_| rng.byte()).collect();
        let mut out = [0i32; 9];
        dot_rows(&q, &rows, &mut out);
        for (i, o) in out.iter().enumerate().take(7) {
            assert_eq!(*o, dot_i8_portable(&q, &rows[i * 100..(i + 1) * 100]));
        }
        assert_eq!(out[7..], [0, 0], "rows beyond the input are not written");
        // The gather kernel, with and without -128 in q (two paths) and in
        // the rows, on lengths around the 32-code step.
        for len in [0, 1, 15, 31, 32, 33, 64, 95, 256, 257] {
            let rows: Vec<Vec<i8>> = (0..11)
                .map(|_| (0..len).map(|_| rng.byte()).collect())
                .collect();
            let mut rows_ref: Vec<&[i8]> = rows.iter().map(Vec::as_slice).collect();
            let extreme = vec![i8::MIN; len];
            rows_ref.push(&extreme);
            let mut q: Vec<i8> = (0..len).map(|_| rng.byte().max(-127)).collect();
            for with_min in [false, true] {
                if with_min && len > 0 {
                    q[len / 2] = i8::MIN;
                }
                let mut out = vec![0i32; rows_ref.len()];
                dot_gather(&q, &rows_ref, &mut out);
                for (o, r) in out.iter().zip(&rows_ref) {
                    assert_eq!(*o, dot_i8_portable(&q, r), "len {len}");
                }
                let flat: Vec<i8> = rows_ref.concat();
                let mut out2 = vec![0i32; rows_ref.len()];
                dot_rows(&q, &flat, &mut out2);
                if len > 0 {
                    assert_eq!(out, out2);
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        assert_eq!(simd_active(), std::arch::is_x86_feature_detected!("avx2"));
    }

    #[test]
    fn the_quantized_cosine_is_within_a_hundredth_of_the_exact_one() {
        let mut rng = Rng(42);
        let mut worst = 0.0f32;
        for i in 0..2_000 {
            let a = rng.unit(256);
            // Half unrelated pairs, half near neighbours (where a threshold
            // decides): b = a plus a little noise.
            let b = if i % 2 == 0 {
                rng.unit(256)
            } else {
                let n = rng.unit(256);
                let mut b: Vec<f32> = a.iter().zip(&n).map(|(x, y)| x + 0.3 * y).collect();
                let norm = b.iter().map(|x| x * x).sum::<f32>().sqrt();
                b.iter_mut().for_each(|x| *x /= norm);
                b
            };
            let exact: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let approx = Quantized::new(&a).cosine(&Quantized::new(&b));
            worst = worst.max((exact - approx).abs());
        }
        assert!(worst < 0.01, "worst error {worst}");
    }

    #[test]
    fn quantization_keeps_the_scale_and_survives_hostile_input() {
        let q = Quantized::new(&[0.5, -0.25, 0.0, -0.5]);
        assert_eq!(&*q.data, &[127, -64, 0, -127]);
        assert!((q.scale - 0.5 / 127.0).abs() < 1e-9);
        let self_cos = q.cosine(&q);
        assert!((self_cos - 0.5625).abs() < 0.01, "{self_cos}");
        for v in [
            vec![0.0; 8],
            vec![f32::INFINITY, 1.0],
            vec![f32::NAN; 3],
            vec![],
        ] {
            let q = Quantized::new(&v);
            assert!(q.data.iter().all(|&c| c == 0) && q.scale == 0.0, "{v:?}");
        }
        // A NaN among finite components becomes 0, the rest quantize.
        let q = Quantized::new(&[f32::NAN, 1.0, -1.0]);
        assert_eq!(&*q.data, &[0, 127, -127]);
        // Padding beyond the vector is zeroed.
        let mut out = [5i8; 6];
        quantize_into(&[1.0, -1.0], &mut out);
        assert_eq!(out, [127, -127, 0, 0, 0, 0]);
    }
}
