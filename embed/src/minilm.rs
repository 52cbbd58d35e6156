//! all-MiniLM-L6-v2: a sentence's embedding, computed the way
//! sentence-transformers computes it.
//!
//! The model is BERT (6 layers, hidden size 384, 12 heads of 32, feed-forward
//! 1536, vocabulary 30,522) with mean pooling and L2 normalisation. The input
//! is `[CLS]`, the text's first 254 WordPiece ids, `[SEP]` (256 at most,
//! sentence-transformers' `max_seq_length`). One sequence at a time, so there
//! is no padding and attention sees every token:
//!
//! ```text
//! h = LayerNorm(word[id] + position[t] + token_type[0])
//! 6 × { a = LayerNorm(h + Attention(h) · Wo + bo)
//!       h = LayerNorm(a + GELU(a · Wi + bi) · Wf + bf) }
//! embedding = normalize(mean over tokens of h)
//! ```
//!
//! Shapes are read from `config.json` and checked against every tensor of
//! `model.safetensors` (F32, parsed here: an 8-byte little-endian header
//! length, a JSON table of dtype, shape and byte offsets, the data).
//!
//! Speed: a short prompt's cost is the dense layers, 1.8 M multiply-adds per
//! token per layer against 7 MB of weights per layer. At load each weight
//! matrix is packed into panels of [`PANEL_OUTPUTS`] output columns, each
//! panel one contiguous run over the inputs, so the kernel streams a panel
//! once per tile of [`TILE_ROWS`] tokens with every accumulator in a
//! register (the shape of a BLAS micro-kernel). On x86-64 with AVX2 and FMA
//! (detected at run time) the kernel uses them; elsewhere a portable one
//! that the compiler vectorises with SSE2. Both compute the same sums in the
//! same order except for FMA's single rounding: they agree to ~1e-6.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{EmbedError, Vocab};

/// Most tokens of one input, `[CLS]` and `[SEP]` included: the model's
/// `max_seq_length` in sentence-transformers (longer text is cut, as there).
pub const SEQUENCE_TOKENS_MAX: usize = 256;

/// Most tokens of the text itself: the sequence less `[CLS]` and `[SEP]`.
pub const TEXT_TOKENS_MAX: usize = SEQUENCE_TOKENS_MAX - 2;

/// Output columns of one packed weight panel: two AVX registers of eight.
pub const PANEL_OUTPUTS: usize = 16;

/// Token rows one kernel call computes: 6 rows × 2 registers of
/// accumulators, plus 2 of weights and 1 of input, fill 15 of 16 registers.
pub const TILE_ROWS: usize = 6;

/// Largest `config.json` read.
const CONFIG_BYTES_MAX: u64 = 1 << 20;

/// Largest safetensors header read (all-MiniLM-L6-v2's is 11 KB).
const HEADER_BYTES_MAX: u64 = 16 << 20;

/// Largest `model.safetensors` accepted (all-MiniLM-L6-v2's is 91 MB).
const MODEL_BYTES_MAX: u64 = 1 << 30;

/// Bounds on `config.json`'s sizes: far above MiniLM's, low enough that a
/// wrong file fails on its numbers, not on an allocation.
const HIDDEN_MAX: usize = 4096;
const INTERMEDIATE_MAX: usize = 16384;
const LAYERS_MAX: usize = 64;
const VOCAB_MAX: usize = 1 << 20;
const TYPE_VOCAB_MAX: usize = 16;

/// Smallest norm a pooled vector is divided by (torch's `F.normalize`).
const NORM_EPS: f32 = 1e-12;

/// The fields of `config.json` the forward pass needs (the rest ignored).
#[derive(Debug, Deserialize)]
struct ConfigFile {
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    vocab_size: usize,
    type_vocab_size: usize,
    layer_norm_eps: f64,
    hidden_act: String,
    #[serde(default)]
    position_embedding_type: Option<String>,
}

/// Which matrix kernel runs the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust the compiler vectorises for the baseline target.
    Portable,
    /// AVX2 with fused multiply-add (x86-64, detected at run time).
    Avx2Fma,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Kernel {
        if Kernel::Avx2Fma.available() {
            Kernel::Avx2Fma
        } else {
            Kernel::Portable
        }
    }

    /// Whether this CPU runs the kernel.
    pub fn available(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2Fma => false,
        }
    }
}

/// A linear layer, `y = x · Wᵀ + b`, its weight packed for the kernel:
/// panel `p` holds outputs `16p..16p+16` for every input, input-major
/// (`packed[(p · inputs + i) · 16 + l] = W[16p + l][i]`).
#[derive(Debug)]
struct Dense {
    inputs: usize,
    outputs: usize,
    packed: Vec<f32>,
    bias: Vec<f32>,
}

impl Dense {
    /// Packs `weight` (`outputs × inputs`, row-major as PyTorch stores a
    /// `Linear`); `outputs` is a multiple of [`PANEL_OUTPUTS`] (checked at
    /// load from the config).
    fn pack(weight: &[f32], bias: Vec<f32>, outputs: usize, inputs: usize) -> Dense {
        debug_assert_eq!(weight.len(), outputs * inputs);
        debug_assert_eq!(outputs % PANEL_OUTPUTS, 0);
        let mut packed = vec![0.0; outputs * inputs];
        for (p, panel) in packed.chunks_exact_mut(inputs * PANEL_OUTPUTS).enumerate() {
            for (i, column) in panel.chunks_exact_mut(PANEL_OUTPUTS).enumerate() {
                for (l, w) in column.iter_mut().enumerate() {
                    *w = weight[(p * PANEL_OUTPUTS + l) * inputs + i];
                }
            }
        }
        Dense {
            inputs,
            outputs,
            packed,
            bias,
        }
    }

    /// `y = x · Wᵀ + b` for `rows` rows of `x` (`rows × inputs`) into `y`
    /// (`rows × outputs`).
    fn forward(&self, kernel: Kernel, x: &[f32], rows: usize, y: &mut [f32]) {
        assert!(x.len() >= rows * self.inputs && y.len() >= rows * self.outputs);
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => {
                // SAFETY: a MiniLm only holds Avx2Fma once `available()` said
                // this CPU has both features.
                unsafe { avx2::matmul(self, x, rows, y) }
            }
            _ => portable_matmul(self, x, rows, y),
        }
    }
}

/// The portable kernel: the same panels and tiles as the AVX2 one, with
/// arrays of 16 accumulators per row the compiler keeps in vector registers.
fn portable_matmul(d: &Dense, x: &[f32], rows: usize, y: &mut [f32]) {
    let panels = d.packed.chunks_exact(d.inputs * PANEL_OUTPUTS);
    for (p, panel) in panels.enumerate() {
        let mut row = 0;
        while row < rows {
            let tile = (rows - row).min(TILE_ROWS);
            match tile {
                6 => portable_tile::<6>(d, x, row, panel, p, y),
                5 => portable_tile::<5>(d, x, row, panel, p, y),
                4 => portable_tile::<4>(d, x, row, panel, p, y),
                3 => portable_tile::<3>(d, x, row, panel, p, y),
                2 => portable_tile::<2>(d, x, row, panel, p, y),
                _ => portable_tile::<1>(d, x, row, panel, p, y),
            }
            row += tile;
        }
    }
}

/// Rows `row..row + R` of `y`, columns of panel `p`.
#[inline(always)]
fn portable_tile<const R: usize>(
    d: &Dense,
    x: &[f32],
    row: usize,
    panel: &[f32],
    p: usize,
    y: &mut [f32],
) {
    let col = p * PANEL_OUTPUTS;
    let mut bias = [0.0f32; PANEL_OUTPUTS];
    bias.copy_from_slice(&d.bias[col..col + PANEL_OUTPUTS]);
    let mut acc = [bias; R];
    let xs: [&[f32]; R] = std::array::from_fn(|r| &x[(row + r) * d.inputs..][..d.inputs]);
    let (weights, _) = panel.as_chunks::<PANEL_OUTPUTS>();
    for (i, w) in weights.iter().enumerate() {
        for r in 0..R {
            let a = xs[r][i];
            for l in 0..PANEL_OUTPUTS {
                acc[r][l] += a * w[l];
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        y[(row + r) * d.outputs + col..][..PANEL_OUTPUTS].copy_from_slice(acc);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Dense, PANEL_OUTPUTS, TILE_ROWS};

    /// [`super::portable_matmul`] with AVX2 and FMA.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `x` holds `rows × d.inputs` floats and `y`
    /// `rows × d.outputs` (asserted by the caller).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn matmul(d: &Dense, x: &[f32], rows: usize, y: &mut [f32]) {
        let panels = d.packed.chunks_exact(d.inputs * PANEL_OUTPUTS);
        for (p, panel) in panels.enumerate() {
            let mut row = 0;
            while row < rows {
                let tile = (rows - row).min(TILE_ROWS);
                // SAFETY: rows row..row + tile exist in x and y, panel p
                // holds inputs × 16 weights and bias 16 from p × 16.
                unsafe {
                    match tile {
                        6 => tile_rows::<6>(d, x, row, panel, p, y),
                        5 => tile_rows::<5>(d, x, row, panel, p, y),
                        4 => tile_rows::<4>(d, x, row, panel, p, y),
                        3 => tile_rows::<3>(d, x, row, panel, p, y),
                        2 => tile_rows::<2>(d, x, row, panel, p, y),
                        _ => tile_rows::<1>(d, x, row, panel, p, y),
                    }
                }
                row += tile;
            }
        }
    }

    /// Rows `row..row + R` of `y`, columns of panel `p`: 2 × R accumulator
    /// registers, one pass over the panel.
    ///
    /// # Safety
    /// As [`matmul`], and `row + R ≤ rows`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile_rows<const R: usize>(
        d: &Dense,
        x: &[f32],
        row: usize,
        panel: &[f32],
        p: usize,
        y: &mut [f32],
    ) {
        let col = p * PANEL_OUTPUTS;
        let inputs = d.inputs;
        debug_assert!(panel.len() == inputs * PANEL_OUTPUTS);
        debug_assert!(x.len() >= (row + R) * inputs);
        debug_assert!(y.len() >= (row + R - 1) * d.outputs + col + PANEL_OUTPUTS);
        unsafe {
            let bias = d.bias.as_ptr().add(col);
            let mut lo = [_mm256_loadu_ps(bias); R];
            let mut hi = [_mm256_loadu_ps(bias.add(8)); R];
            let xp = x.as_ptr().add(row * inputs);
            let wp = panel.as_ptr();
            for i in 0..inputs {
                let w_lo = _mm256_loadu_ps(wp.add(i * PANEL_OUTPUTS));
                let w_hi = _mm256_loadu_ps(wp.add(i * PANEL_OUTPUTS + 8));
                for r in 0..R {
                    let a = _mm256_set1_ps(*xp.add(r * inputs + i));
                    lo[r] = _mm256_fmadd_ps(a, w_lo, lo[r]);
                    hi[r] = _mm256_fmadd_ps(a, w_hi, hi[r]);
                }
            }
            for r in 0..R {
                let yp = y.as_mut_ptr().add((row + r) * d.outputs + col);
                _mm256_storeu_ps(yp, lo[r]);
                _mm256_storeu_ps(yp.add(8), hi[r]);
            }
        }
    }

    const _: () = assert!(PANEL_OUTPUTS == 16 && TILE_ROWS == 6);
}

/// LayerNorm's learned scale and shift.
#[derive(Debug)]
struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

/// One transformer layer.
#[derive(Debug)]
struct Layer {
    /// Query, key and value in one matrix: outputs `[q | k | v]`.
    qkv: Dense,
    attention_out: Dense,
    attention_norm: LayerNorm,
    intermediate: Dense,
    output: Dense,
    output_norm: LayerNorm,
}

/// all-MiniLM-L6-v2 (or any BERT with the same layout and mean pooling),
/// loaded and packed. Immutable: share it between threads; each thread
/// embeds with its own [`Scratch`].
#[derive(Debug)]
pub struct MiniLm {
    hidden: usize,
    heads: usize,
    vocab_size: usize,
    layer_norm_eps: f32,
    /// `vocab_size × hidden`.
    word: Vec<f32>,
    /// The first [`SEQUENCE_TOKENS_MAX`] positions plus token type 0, added
    /// once at load: `SEQUENCE_TOKENS_MAX × hidden`.
    position: Vec<f32>,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    kernel: Kernel,
}

/// The buffers of one forward pass, kept between calls so a warm embedding
/// allocates nothing. Each grows to the longest input seen (at most
/// [`SEQUENCE_TOKENS_MAX`] tokens: about 2.5 MB for MiniLM).
#[derive(Debug, Default)]
pub struct Scratch {
    ids: Vec<u32>,
    hidden: Vec<f32>,
    qkv: Vec<f32>,
    context: Vec<f32>,
    sum: Vec<f32>,
    intermediate: Vec<f32>,
    scores: Vec<f32>,
}

impl Scratch {
    /// Empty buffers; the first embedding sizes them.
    pub fn new() -> Scratch {
        Scratch::default()
    }
}

impl MiniLm {
    /// Loads `config.json` and `model.safetensors` from `dir` and packs the
    /// weights (about 100 ms and 90 MB for MiniLM). Picks the fastest
    /// [`Kernel`] this CPU runs.
    pub fn load(dir: &Path) -> Result<MiniLm, EmbedError> {
        let config = read_config(&dir.join("config.json"))?;
        let mut tensors = Tensors::open(&dir.join("model.safetensors"))?;
        let h = config.hidden_size;
        let inter = config.intermediate_size;

        let word = tensors.read("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
        let positions = tensors.read(
            "embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, h],
        )?;
        let types = tensors.read(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, h],
        )?;
        let mut position = positions[..SEQUENCE_TOKENS_MAX * h].to_vec();
        for row in position.chunks_exact_mut(h) {
            for (p, t) in row.iter_mut().zip(&types[..h]) {
                *p += t;
            }
        }
        let embedding_norm = tensors.layer_norm("embeddings.LayerNorm", h)?;

        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let name = |rest: &str| format!("encoder.layer.{l}.{rest}");
            let mut qkv_weight = Vec::with_capacity(3 * h * h);
            let mut qkv_bias = Vec::with_capacity(3 * h);
            for part in ["query", "key", "value"] {
                qkv_weight.extend(
                    tensors.read(&name(&format!("attention.self.{part}.weight")), &[h, h])?,
                );
                qkv_bias.extend(tensors.read(&name(&format!("attention.self.{part}.bias")), &[h])?);
            }
            layers.push(Layer {
                qkv: Dense::pack(&qkv_weight, qkv_bias, 3 * h, h),
                attention_out: tensors.dense(&name("attention.output.dense"), h, h)?,
                attention_norm: tensors.layer_norm(&name("attention.output.LayerNorm"), h)?,
                intermediate: tensors.dense(&name("intermediate.dense"), inter, h)?,
                output: tensors.dense(&name("output.dense"), h, inter)?,
                output_norm: tensors.layer_norm(&name("output.LayerNorm"), h)?,
            });
        }
        Ok(MiniLm {
            hidden: h,
            heads: config.num_attention_heads,
            vocab_size: config.vocab_size,
            // 1e-12 in MiniLM's config; f32 keeps it (its smallest normal is 1e-38).
            layer_norm_eps: config.layer_norm_eps as f32,
            word,
            position,
            embedding_norm,
            layers,
            kernel: Kernel::detect(),
        })
    }

    /// Length of an embedding (384 for MiniLM).
    pub fn dims(&self) -> usize {
        self.hidden
    }

    /// The kernel in use.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Uses `kernel` from now on, if this CPU runs it; returns whether it
    /// does (otherwise nothing changes). For tests and benchmarks: `load`
    /// already chose the fastest.
    pub fn set_kernel(&mut self, kernel: Kernel) -> bool {
        let ok = kernel.available();
        if ok {
            self.kernel = kernel;
        }
        ok
    }

    /// The embedding of `text`: [`dims`](Self::dims) floats of unit length.
    /// Allocates its buffers; a caller embedding many texts keeps a
    /// [`Scratch`] and calls [`embed_into`](Self::embed_into).
    pub fn embed(&self, vocab: &Vocab, text: &str) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.hidden);
        self.embed_into(vocab, text, &mut Scratch::new(), &mut out);
        out
    }

    /// The embedding of `text` into `out` (cleared first), with `scratch`'s
    /// buffers. Text past [`TEXT_TOKENS_MAX`] tokens is ignored. `vocab`
    /// should be the model's own; an id it has and the model lacks reads as
    /// `[UNK]` (or id 0), never out of bounds.
    pub fn embed_into(&self, vocab: &Vocab, text: &str, scratch: &mut Scratch, out: &mut Vec<f32>) {
        let mut ids = std::mem::take(&mut scratch.ids);
        ids.clear();
        ids.push(vocab.cls());
        vocab.tokenize(text, TEXT_TOKENS_MAX, &mut ids);
        ids.push(vocab.sep());
        let unk = if (vocab.unk() as usize) < self.vocab_size {
            vocab.unk()
        } else {
            0
        };
        for id in ids.iter_mut() {
            if *id as usize >= self.vocab_size {
                *id = unk;
            }
        }
        self.embed_ids(&ids, scratch, out);
        scratch.ids = ids;
    }

    /// The embedding of a whole sequence of ids (`[CLS]` … `[SEP]`), each
    /// below the vocabulary size, at most [`SEQUENCE_TOKENS_MAX`] of them.
    fn embed_ids(&self, ids: &[u32], scratch: &mut Scratch, out: &mut Vec<f32>) {
        let ids = &ids[..ids.len().min(SEQUENCE_TOKENS_MAX)];
        out.clear();
        out.resize(self.hidden, 0.0);
        if ids.is_empty() {
            return;
        }
        match self.kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => {
                // SAFETY: kernel is Avx2Fma only when the CPU has AVX2 and FMA.
                unsafe { self.encode_avx2(ids, scratch, out) }
            }
            _ => self.encode(ids, scratch, out),
        }
    }

    /// [`encode`](Self::encode) compiled for AVX2 and FMA: the element-wise
    /// work (norms, GELU, softmax, attention) is vectorised 8 wide.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn encode_avx2(&self, ids: &[u32], scratch: &mut Scratch, out: &mut [f32]) {
        self.encode(ids, scratch, out)
    }

    /// The forward pass, mean pooling and normalisation. `ids` is not
    /// empty, at most [`SEQUENCE_TOKENS_MAX`] long, each below `vocab_size`;
    /// `out` has `hidden` floats.
    #[inline(always)]
    fn encode(&self, ids: &[u32], scratch: &mut Scratch, out: &mut [f32]) {
        let n = ids.len();
        let h = self.hidden;
        let kernel = self.kernel;
        let eps = self.layer_norm_eps;
        let inter = self.layers.first().map_or(0, |l| l.intermediate.outputs);
        let Scratch {
            hidden,
            qkv,
            context,
            sum,
            intermediate,
            scores,
            ..
        } = scratch;
        for (buffer, width) in [
            (&mut *hidden, h),
            (&mut *qkv, 3 * h),
            (&mut *context, h),
            (&mut *sum, h),
            (&mut *intermediate, inter),
            (&mut *scores, 1),
        ] {
            buffer.clear();
            buffer.resize(n * width, 0.0);
        }

        for (t, (&id, row)) in ids.iter().zip(hidden.chunks_exact_mut(h)).enumerate() {
            let word = &self.word[id as usize * h..][..h];
            let position = &self.position[t * h..][..h];
            for ((x, w), p) in row.iter_mut().zip(word).zip(position) {
                *x = w + p;
            }
            layer_norm(row, &self.embedding_norm, eps);
        }

        for layer in &self.layers {
            layer.qkv.forward(kernel, hidden, n, qkv);
            attention(qkv, n, h, self.heads, scores, context);
            layer.attention_out.forward(kernel, context, n, sum);
            add_norm(sum, hidden, &layer.attention_norm, eps);
            layer.intermediate.forward(kernel, hidden, n, intermediate);
            gelu(intermediate);
            layer.output.forward(kernel, intermediate, n, sum);
            add_norm(sum, hidden, &layer.output_norm, eps);
        }

        out.fill(0.0);
        for row in hidden.chunks_exact(h) {
            for (o, x) in out.iter_mut().zip(row) {
                *o += x;
            }
        }
        let inv_n = 1.0 / n as f32;
        for o in out.iter_mut() {
            *o *= inv_n;
        }
        let scale = 1.0 / dot(out, out).sqrt().max(NORM_EPS);
        for o in out.iter_mut() {
            *o *= scale;
        }
    }
}

/// `h = LayerNorm(sum + h)`, row by row (the residual connection).
#[inline(always)]
fn add_norm(sum: &mut [f32], h: &mut [f32], norm: &LayerNorm, eps: f32) {
    let width = norm.weight.len();
    for (s, x) in sum.chunks_exact_mut(width).zip(h.chunks_exact_mut(width)) {
        for (x, s) in x.iter_mut().zip(s.iter()) {
            *x += s;
        }
        layer_norm(x, norm, eps);
    }
}

/// LayerNorm of one row in place: mean and (biased) variance over the row.
#[inline(always)]
fn layer_norm(row: &mut [f32], norm: &LayerNorm, eps: f32) {
    let n = row.len() as f32;
    let mean = sum(row) / n;
    let mut lanes = [0.0f32; 8];
    let (chunks, rest) = row.as_chunks::<8>();
    for chunk in chunks {
        for l in 0..8 {
            let d = chunk[l] - mean;
            lanes[l] += d * d;
        }
    }
    let mut var = lanes.iter().sum::<f32>();
    for x in rest {
        var += (x - mean) * (x - mean);
    }
    let inv = 1.0 / (var / n + eps).sqrt();
    for ((x, w), b) in row.iter_mut().zip(&norm.weight).zip(&norm.bias) {
        *x = (*x - mean) * inv * w + b;
    }
}

/// Sum of a slice in 8 lanes (vectorisable, and more accurate than one
/// running sum).
#[inline(always)]
fn sum(v: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (chunks, rest) = v.as_chunks::<8>();
    for chunk in chunks {
        for l in 0..8 {
            lanes[l] += chunk[l];
        }
    }
    lanes.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// Dot product in 8 lanes.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a8, a_rest) = a.as_chunks::<8>();
    let (b8, b_rest) = b.as_chunks::<8>();
    for (x, y) in a8.iter().zip(b8) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

/// Multi-head self-attention over all `n` tokens: `qkv` is `n × 3h`
/// (`[q | k | v]` per row), the result `context` `n × h`, `scores` `n`.
#[inline(always)]
fn attention(
    qkv: &[f32],
    n: usize,
    h: usize,
    heads: usize,
    scores: &mut [f32],
    context: &mut [f32],
) {
    let d = h / heads;
    let stride = 3 * h;
    let scale = 1.0 / (d as f32).sqrt();
    for head in 0..heads {
        let at = head * d;
        for i in 0..n {
            let q = &qkv[i * stride + at..][..d];
            let mut max = f32::NEG_INFINITY;
            for (j, s) in scores.iter_mut().enumerate() {
                let k = &qkv[j * stride + h + at..][..d];
                *s = dot(q, k) * scale;
                max = max.max(*s);
            }
            for s in scores.iter_mut() {
                *s = exp(*s - max);
            }
            let inv = 1.0 / sum(scores);
            let c = &mut context[i * h + at..][..d];
            c.fill(0.0);
            for (j, s) in scores.iter().enumerate() {
                let p = s * inv;
                let v = &qkv[j * stride + 2 * h + at..][..d];
                for (c, v) in c.iter_mut().zip(v) {
                    *c += p * v;
                }
            }
        }
    }
}

/// GELU, the exact (erf) form BERT uses: `x/2 · (1 + erf(x/√2))`.
#[inline(always)]
fn gelu(v: &mut [f32]) {
    for x in v.iter_mut() {
        let y = f64::from(*x);
        *x = (0.5 * y * (1.0 + erf(y * std::f64::consts::FRAC_1_SQRT_2))) as f32;
    }
}

/// erf, as a rational function of x (Eigen's and XLA's float erf),
/// evaluated in f64: absolute error under 7e-8 everywhere (1 - erf(4) is
/// 1.5e-8, so |x| > 4 is ±1). Branch-free so it vectorises; the standard
/// library has no erf and libm's is a call per element.
#[inline(always)]
fn erf(x: f64) -> f64 {
    const ALPHA: [f64; 7] = [
        -2.726_142_258_013_06e-10,
        2.770_681_424_959_02e-8,
        -2.101_024_020_825_08e-6,
        -5.692_506_394_623_46e-5,
        -7.349_906_303_268_55e-4,
        -2.954_599_808_540_25e-3,
        -1.609_603_332_624_15e-2,
    ];
    const BETA: [f64; 5] = [
        -1.456_607_184_649_96e-5,
        -2.133_740_552_789_05e-4,
        -1.682_826_974_382_03e-3,
        -7.373_329_167_204_68e-3,
        -1.426_473_905_141_89e-2,
    ];
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = ALPHA[0];
    for a in &ALPHA[1..] {
        p = p * x2 + a;
    }
    let mut q = BETA[0];
    for b in &BETA[1..] {
        q = q * x2 + b;
    }
    x * p / q
}

/// e^x for x ≤ 0 (softmax's shifted scores), Cephes' expf: x = n·ln2 + r,
/// a degree-6 polynomial in r, 2^n from the exponent bits. Relative error
/// about 2e-7; below -87 it returns about 1e-38 rather than less (a
/// softmax term that small is nothing next to its largest, which is 1).
/// Branch-free so it vectorises; `f32::exp` is a call per element.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 · 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r2 + r + 1.0;
    // n is in -126..=127: a normal float's exponent.
    let bits = ((n as i32 + 127) as u32) << 23;
    e * f32::from_bits(bits)
}

/// `config.json`, read and checked against what the forward pass supports.
fn read_config(path: &Path) -> Result<ConfigFile, EmbedError> {
    let text = read_bounded(path, CONFIG_BYTES_MAX)?;
    let config: ConfigFile = serde_json::from_slice(&text).map_err(|source| EmbedError::Json {
        path: path.to_owned(),
        source,
    })?;
    let bad = |what: String| Err(EmbedError::Format(format!("{}: {what}", path.display())));
    let h = config.hidden_size;
    if h == 0 || h > HIDDEN_MAX || !h.is_multiple_of(PANEL_OUTPUTS) {
        return bad(format!(
            "hidden_size {h}: need a multiple of {PANEL_OUTPUTS} up to {HIDDEN_MAX}"
        ));
    }
    let i = config.intermediate_size;
    if i == 0 || i > INTERMEDIATE_MAX || !i.is_multiple_of(PANEL_OUTPUTS) {
        return bad(format!(
            "intermediate_size {i}: need a multiple of {PANEL_OUTPUTS} up to {INTERMEDIATE_MAX}"
        ));
    }
    let heads = config.num_attention_heads;
    if heads == 0 || !h.is_multiple_of(heads) {
        return bad(format!(
            "num_attention_heads {heads} does not divide hidden_size {h}"
        ));
    }
    if config.num_hidden_layers > LAYERS_MAX {
        return bad(format!("num_hidden_layers above {LAYERS_MAX}"));
    }
    if config.vocab_size == 0 || config.vocab_size > VOCAB_MAX {
        return bad(format!("vocab_size 0 or above {VOCAB_MAX}"));
    }
    if config.type_vocab_size == 0 || config.type_vocab_size > TYPE_VOCAB_MAX {
        return bad(format!("type_vocab_size 0 or above {TYPE_VOCAB_MAX}"));
    }
    if config.max_position_embeddings < SEQUENCE_TOKENS_MAX
        || config.max_position_embeddings > VOCAB_MAX
    {
        return bad(format!(
            "max_position_embeddings {}: need {SEQUENCE_TOKENS_MAX} or more",
            config.max_position_embeddings
        ));
    }
    if !(config.layer_norm_eps > 0.0 && config.layer_norm_eps < 1.0) {
        return bad(format!("layer_norm_eps {}", config.layer_norm_eps));
    }
    if config.hidden_act != "gelu" {
        return bad(format!(
            "hidden_act {:?}: only \"gelu\" (erf)",
            config.hidden_act
        ));
    }
    if let Some(kind) = config.position_embedding_type.as_deref() {
        if kind != "absolute" {
            return bad(format!(
                "position_embedding_type {kind:?}: only \"absolute\""
            ));
        }
    }
    Ok(config)
}

/// A whole file, refused above `bytes_max`.
fn read_bounded(path: &Path, bytes_max: u64) -> Result<Vec<u8>, EmbedError> {
    let io = |source| EmbedError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let mut text = Vec::new();
    file.take(bytes_max + 1)
        .read_to_end(&mut text)
        .map_err(io)?;
    if text.len() as u64 > bytes_max {
        return Err(EmbedError::Format(format!(
            "{}: larger than {bytes_max} bytes",
            path.display()
        )));
    }
    Ok(text)
}

/// One entry of a safetensors header.
#[derive(Debug, Deserialize)]
struct TensorInfo {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// An open `model.safetensors`: its header parsed, tensors read on demand.
struct Tensors {
    path: PathBuf,
    file: File,
    /// Where the data section starts (after the length and the header).
    data_start: u64,
    file_bytes: u64,
    infos: HashMap<String, TensorInfo>,
    /// Reused for each tensor's bytes.
    buffer: Vec<u8>,
}

impl Tensors {
    fn open(path: &Path) -> Result<Tensors, EmbedError> {
        let io = |source| EmbedError::Io {
            path: path.to_owned(),
            source,
        };
        let format = |what: &str| EmbedError::Format(format!("{}: {what}", path.display()));
        let mut file = File::open(path).map_err(io)?;
        let file_bytes = file.metadata().map_err(io)?.len();
        if file_bytes > MODEL_BYTES_MAX {
            return Err(format(&format!("larger than {MODEL_BYTES_MAX} bytes")));
        }
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(io)?;
        let header_bytes = u64::from_le_bytes(len);
        if header_bytes > HEADER_BYTES_MAX || 8 + header_bytes > file_bytes {
            return Err(format(&format!(
                "header length {header_bytes} out of bounds"
            )));
        }
        // Below HEADER_BYTES_MAX: fits in usize.
        let mut header = vec![0u8; header_bytes as usize];
        file.read_exact(&mut header).map_err(io)?;
        let json = |source| EmbedError::Json {
            path: path.to_owned(),
            source,
        };
        let entries: HashMap<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(json)?;
        let mut infos = HashMap::with_capacity(entries.len());
        for (name, value) in entries {
            if name == "__metadata__" {
                continue;
            }
            let info: TensorInfo = serde_json::from_value(value).map_err(json)?;
            infos.insert(name, info);
        }
        Ok(Tensors {
            path: path.to_owned(),
            file,
            data_start: 8 + header_bytes,
            file_bytes,
            infos,
            buffer: Vec::new(),
        })
    }

    /// The F32 tensor `name` (or `bert.name`, as a plain `BertModel` saved
    /// inside another names it), which must have `shape`.
    fn read(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EmbedError> {
        let prefixed = format!("bert.{name}");
        let info = self
            .infos
            .get(name)
            .or_else(|| self.infos.get(&prefixed))
            .ok_or_else(|| EmbedError::MissingTensor(name.to_owned()))?;
        if info.shape != shape {
            return Err(EmbedError::Shape {
                name: name.to_owned(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        let format = |what: String| {
            EmbedError::Format(format!("{}: tensor {name:?}: {what}", self.path.display()))
        };
        if info.dtype != "F32" {
            return Err(format(format!("dtype {}, only F32 is read", info.dtype)));
        }
        let floats: usize = shape.iter().product();
        let [start, end] = info.data_offsets;
        let bytes = (floats as u64) * 4;
        if end < start || end - start != bytes || self.data_start + end > self.file_bytes {
            return Err(format(format!(
                "data offsets {start}..{end} do not hold {floats} floats"
            )));
        }
        let io = |source| EmbedError::Io {
            path: self.path.clone(),
            source,
        };
        self.file
            .seek(SeekFrom::Start(self.data_start + start))
            .map_err(io)?;
        // At most MODEL_BYTES_MAX: fits in usize.
        self.buffer.resize(bytes as usize, 0);
        self.file.read_exact(&mut self.buffer).map_err(io)?;
        let values = self
            .buffer
            .as_chunks::<4>()
            .0
            .iter()
            .map(|b| f32::from_le_bytes(*b))
            .collect();
        Ok(values)
    }

    /// The linear layer `name` (`name.weight`: `outputs × inputs`,
    /// `name.bias`), packed.
    fn dense(&mut self, name: &str, outputs: usize, inputs: usize) -> Result<Dense, EmbedError> {
        let weight = self.read(&format!("{name}.weight"), &[outputs, inputs])?;
        let bias = self.read(&format!("{name}.bias"), &[outputs])?;
        Ok(Dense::pack(&weight, bias, outputs, inputs))
    }

    fn layer_norm(&mut self, name: &str, width: usize) -> Result<LayerNorm, EmbedError> {
        Ok(LayerNorm {
            weight: self.read(&format!("{name}.weight"), &[width])?,
            bias: self.read(&format!("{name}.bias"), &[width])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata;

    /// A deterministic stream of floats in [-1, 1) (xorshift).
    struct Noise(u64);

    impl Noise {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }

        fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
            (0..n).map(|_| self.next() * scale).collect()
        }
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn erf_is_within_1e7_of_libm() {
        extern "C" {
            // glibc's double erf (libm is linked with std on Linux).
            fn erf(x: f64) -> f64;
        }
        let mut worst = 0.0f64;
        for i in -80_000..=80_000 {
            let x = f64::from(i) * 1e-4;
            // SAFETY: a pure C function of one double.
            let want = unsafe { erf(x) };
            worst = worst.max((super::erf(x) - want).abs());
        }
        assert!(worst < 1e-7, "erf max error {worst}");
    }

    #[test]
    fn exp_is_within_3e7_relative() {
        let mut worst = 0.0f64;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let want = f64::from(x).exp();
            let got = f64::from(super::exp(x));
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "exp max relative error {worst}");
        assert!(super::exp(-1e30) >= 0.0 && super::exp(-1e30) < 1e-37);
    }

    /// The portable and AVX2 kernels against a plain f64 product, on shapes
    /// that leave every tile size as a remainder.
    #[test]
    fn kernels_agree_with_plain_product() {
        let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
        for (inputs, outputs) in [(384, 1152), (384, 1536), (1536, 384), (24, 32)] {
            let weight = noise.vec(outputs * inputs, 0.1);
            let bias = noise.vec(outputs, 0.1);
            let dense = Dense::pack(&weight, bias.clone(), outputs, inputs);
            for rows in [1, 2, 3, 4, 5, 6, 7, 13, 64] {
                let x = noise.vec(rows * inputs, 1.0);
                let mut want = vec![0.0f32; rows * outputs];
                for r in 0..rows {
                    for o in 0..outputs {
                        let mut s = f64::from(bias[o]);
                        for i in 0..inputs {
                            s += f64::from(x[r * inputs + i]) * f64::from(weight[o * inputs + i]);
                        }
                        want[r * outputs + o] = s as f32;
                    }
                }
                let mut y = vec![0.0f32; rows * outputs];
                dense.forward(Kernel::Portable, &x, rows, &mut y);
                assert!(
                    max_abs_diff(&y, &want) < 1e-4,
                    "portable {inputs}x{outputs} rows {rows}"
                );
                if Kernel::Avx2Fma.available() {
                    let mut z = vec![0.0f32; rows * outputs];
                    dense.forward(Kernel::Avx2Fma, &x, rows, &mut z);
                    assert!(
                        max_abs_diff(&z, &want) < 1e-4,
                        "avx2 {inputs}x{outputs} rows {rows}"
                    );
                    assert!(max_abs_diff(&z, &y) < 1e-4);
                } else {
                    eprintln!("this CPU has no AVX2+FMA: only the portable kernel was tested");
                }
            }
        }
    }

    /// A tiny BERT written as a safetensors file: every tensor the loader
    /// reads, random, and the config to go with it.
    struct TinyModel {
        config: serde_json::Value,
        tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    }

    impl TinyModel {
        const HIDDEN: usize = 32;
        const HEADS: usize = 4;
        const INTER: usize = 64;
        const LAYERS: usize = 2;
        const VOCAB: usize = 50;

        fn new() -> TinyModel {
            let (h, i) = (Self::HIDDEN, Self::INTER);
            let mut noise = Noise(7);
            let mut tensors = Vec::new();
            let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
                let n = shape.iter().product();
                let values = noise
                    .vec(n, scale)
                    .into_iter()
                    .map(|v| v + offset)
                    .collect();
                tensors.push((name, shape, values));
            };
            add(
                "embeddings.word_embeddings.weight".into(),
                vec![Self::VOCAB, h],
                1.0,
                0.0,
            );
            add(
                "embeddings.position_embeddings.weight".into(),
                vec![512, h],
                0.5,
                0.0,
            );
            add(
                "embeddings.token_type_embeddings.weight".into(),
                vec![2, h],
                0.5,
                0.0,
            );
            let norm = |add: &mut dyn FnMut(String, Vec<usize>, f32, f32), name: &str| {
                add(format!("{name}.weight"), vec![h], 0.2, 1.0);
                add(format!("{name}.bias"), vec![h], 0.2, 0.0);
            };
            norm(&mut add, "embeddings.LayerNorm");
            for l in 0..Self::LAYERS {
                let p = format!("encoder.layer.{l}");
                for part in ["query", "key", "value"] {
                    add(
                        format!("{p}.attention.self.{part}.weight"),
                        vec![h, h],
                        0.3,
                        0.0,
                    );
                    add(format!("{p}.attention.self.{part}.bias"), vec![h], 0.1, 0.0);
                }
                add(
                    format!("{p}.attention.output.dense.weight"),
                    vec![h, h],
                    0.3,
                    0.0,
                );
                add(
                    format!("{p}.attention.output.dense.bias"),
                    vec![h],
                    0.1,
                    0.0,
                );
                norm(&mut add, &format!("{p}.attention.output.LayerNorm"));
                add(
                    format!("{p}.intermediate.dense.weight"),
                    vec![i, h],
                    0.3,
                    0.0,
                );
                add(format!("{p}.intermediate.dense.bias"), vec![i], 0.1, 0.0);
                add(format!("{p}.output.dense.weight"), vec![h, i], 0.3, 0.0);
                add(format!("{p}.output.dense.bias"), vec![h], 0.1, 0.0);
                norm(&mut add, &format!("{p}.output.LayerNorm"));
            }
            let config = serde_json::json!({
                "hidden_size": h, "num_hidden_layers": Self::LAYERS,
                "num_attention_heads": Self::HEADS, "intermediate_size": i,
                "max_position_embeddings": 512, "vocab_size": Self::VOCAB,
                "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
                "position_embedding_type": "absolute", "model_type": "bert"
            });
            TinyModel { config, tensors }
        }

        fn tensor(&self, name: &str) -> &[f32] {
            &self.tensors.iter().find(|t| t.0 == name).unwrap().2
        }

        /// Writes config.json and model.safetensors into a fresh directory;
        /// `dtype` is what the header claims for every tensor.
        fn write(&self, name: &str, dtype: &str) -> PathBuf {
            let dir =
                std::env::temp_dir().join(format!("bursar-minilm-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("config.json"), self.config.to_string()).unwrap();
            let mut header = serde_json::Map::new();
            header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
            let mut data = Vec::new();
            for (name, shape, values) in &self.tensors {
                let start = data.len();
                data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
                header.insert(
                    name.clone(),
                    serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
                );
            }
            let header = serde_json::Value::Object(header).to_string();
            let mut file = (header.len() as u64).to_le_bytes().to_vec();
            file.extend(header.as_bytes());
            file.extend(data);
            std::fs::write(dir.join("model.safetensors"), file).unwrap();
            dir
        }

        /// The embedding of `ids` computed the plain way, in f64, straight
        /// from the unpacked tensors.
        fn reference(&self, ids: &[u32]) -> Vec<f32> {
            let (h, heads) = (Self::HIDDEN, Self::HEADS);
            let t = |name: &str| -> Vec<f64> {
                self.tensor(name).iter().map(|&v| f64::from(v)).collect()
            };
            let norm = |x: &mut [f64], name: &str| {
                let (w, b) = (t(&format!("{name}.weight")), t(&format!("{name}.bias")));
                for row in x.chunks_mut(h) {
                    let mean = row.iter().sum::<f64>() / h as f64;
                    let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / h as f64;
                    for (k, v) in row.iter_mut().enumerate() {
                        *v = (*v - mean) / (var + 1e-12).sqrt() * w[k] + b[k];
                    }
                }
            };
            let linear = |x: &[f64], name: &str, outputs: usize, inputs: usize| -> Vec<f64> {
                let (w, b) = (t(&format!("{name}.weight")), t(&format!("{name}.bias")));
                let rows = x.len() / inputs;
                let mut y = vec![0.0; rows * outputs];
                for r in 0..rows {
                    for o in 0..outputs {
                        y[r * outputs + o] = b[o]
                            + (0..inputs)
                                .map(|i| x[r * inputs + i] * w[o * inputs + i])
                                .sum::<f64>();
                    }
                }
                y
            };
            let n = ids.len();
            let (word, pos, typ) = (
                t("embeddings.word_embeddings.weight"),
                t("embeddings.position_embeddings.weight"),
                t("embeddings.token_type_embeddings.weight"),
            );
            let mut x = vec![0.0; n * h];
            for (r, &id) in ids.iter().enumerate() {
                for k in 0..h {
                    x[r * h + k] = word[id as usize * h + k] + pos[r * h + k] + typ[k];
                }
            }
            norm(&mut x, "embeddings.LayerNorm");
            let d = h / heads;
            for l in 0..Self::LAYERS {
                let p = format!("encoder.layer.{l}");
                let q = linear(&x, &format!("{p}.attention.self.query"), h, h);
                let k = linear(&x, &format!("{p}.attention.self.key"), h, h);
                let v = linear(&x, &format!("{p}.attention.self.value"), h, h);
                let mut ctx = vec![0.0; n * h];
                for hd in 0..heads {
                    for i in 0..n {
                        let s: Vec<f64> = (0..n)
                            .map(|j| {
                                (0..d)
                                    .map(|e| q[i * h + hd * d + e] * k[j * h + hd * d + e])
                                    .sum::<f64>()
                                    / (d as f64).sqrt()
                            })
                            .collect();
                        let m = s.iter().cloned().fold(f64::MIN, f64::max);
                        let z: f64 = s.iter().map(|s| (s - m).exp()).sum();
                        for j in 0..n {
                            let pj = (s[j] - m).exp() / z;
                            for e in 0..d {
                                ctx[i * h + hd * d + e] += pj * v[j * h + hd * d + e];
                            }
                        }
                    }
                }
                let mut a = linear(&ctx, &format!("{p}.attention.output.dense"), h, h);
                a.iter_mut().zip(&x).for_each(|(a, x)| *a += x);
                norm(&mut a, &format!("{p}.attention.output.LayerNorm"));
                let mut m = linear(&a, &format!("{p}.intermediate.dense"), Self::INTER, h);
                for v in m.iter_mut() {
                    extern "C" {
                        fn erf(x: f64) -> f64;
                    }
                    // SAFETY: a pure C function of one double.
                    *v = 0.5 * *v * (1.0 + unsafe { erf(*v / 2f64.sqrt()) });
                }
                let mut o = linear(&m, &format!("{p}.output.dense"), h, Self::INTER);
                o.iter_mut().zip(&a).for_each(|(o, a)| *o += a);
                norm(&mut o, &format!("{p}.output.LayerNorm"));
                x = o;
            }
            let mut mean = vec![0.0; h];
            for row in x.chunks(h) {
                mean.iter_mut()
                    .zip(row)
                    .for_each(|(m, v)| *m += v / n as f64);
            }
            let len = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
            mean.iter().map(|v| (v / len) as f32).collect()
        }
    }

    /// The packed, tiled, vectorised forward pass computes what the plain
    /// definition does, with both kernels, at every length that matters to
    /// the tiling (and at the sequence bound).
    #[test]
    fn forward_pass_matches_plain_definition() {
        let tiny = TinyModel::new();
        let dir = tiny.write("forward", "F32");
        let mut model = MiniLm::load(&dir).unwrap();
        assert_eq!(model.dims(), TinyModel::HIDDEN);
        let mut scratch = Scratch::new();
        let mut out = Vec::new();
        for kernel in [Kernel::Portable, Kernel::Avx2Fma] {
            if !model.set_kernel(kernel) {
                eprintln!("{kernel:?} is not available on this CPU: not tested");
                continue;
            }
            for n in [1usize, 2, 5, 6, 7, 13, 40, SEQUENCE_TOKENS_MAX] {
                let ids: Vec<u32> = (0..n)
                    .map(|i| ((i * 7 + 3) % TinyModel::VOCAB) as u32)
                    .collect();
                model.embed_ids(&ids, &mut scratch, &mut out);
                let want = tiny.reference(&ids);
                let diff = max_abs_diff(&out, &want);
                assert!(diff < 2e-5, "{kernel:?} n {n}: max diff {diff}");
            }
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn load_errors_are_typed() {
        let tiny = TinyModel::new();
        let missing = MiniLm::load(Path::new("/nonexistent/minilm"));
        assert!(matches!(missing, Err(EmbedError::Io { .. })), "{missing:?}");

        let dir = tiny.write("f16", "F16");
        assert!(matches!(MiniLm::load(&dir), Err(EmbedError::Format(_))));

        let mut wrong = TinyModel::new();
        wrong.config["hidden_size"] = 48.into();
        wrong.config["num_attention_heads"] = 4.into();
        let dir = wrong.write("shape", "F32");
        assert!(matches!(MiniLm::load(&dir), Err(EmbedError::Shape { .. })));

        let mut missing = TinyModel::new();
        missing
            .tensors
            .retain(|t| !t.0.contains("layer.1.output.dense.bias"));
        let dir = missing.write("missing", "F32");
        assert!(matches!(
            MiniLm::load(&dir),
            Err(EmbedError::MissingTensor(_))
        ));

        let mut odd = TinyModel::new();
        odd.config["hidden_act"] = "relu".into();
        let dir = odd.write("act", "F32");
        assert!(matches!(MiniLm::load(&dir), Err(EmbedError::Format(_))));

        // Truncated data, then a header length past the end of the file.
        let dir = tiny.write("short", "F32");
        let path = dir.join("model.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        assert!(matches!(MiniLm::load(&dir), Err(EmbedError::Format(_))));
        let mut bytes = bytes;
        bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(MiniLm::load(&dir), Err(EmbedError::Format(_))));
        bytes[..8].copy_from_slice(&3u64.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(MiniLm::load(&dir), Err(EmbedError::Json { .. })));
        for name in ["f16", "shape", "missing", "act", "short"] {
            let _ = std::fs::remove_dir_all(
                std::env::temp_dir().join(format!("bursar-minilm-{name}-{}", std::process::id())),
            );
        }
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        dot(a, b) / (dot(a, a) * dot(b, b)).sqrt()
    }

    /// The similarities sentence-transformers' model card publishes for
    /// all-MiniLM-L6-v2.
    #[test]
    fn model_anchor_cosines_match_model_card() {
        let (model, vocab) = (testdata::model(), testdata::vocab());
        let e: Vec<Vec<f32>> = [
            "The weather is lovely today.",
            "It's so sunny outside!",
            "He drove to the stadium.",
        ]
        .iter()
        .map(|t| model.embed(vocab, t))
        .collect();
        for v in &e {
            assert_eq!(v.len(), 384);
            assert!((dot(v, v) - 1.0).abs() < 1e-5);
        }
        let pairs = [((0, 1), 0.6660), ((0, 2), 0.1046), ((1, 2), 0.1411)];
        for ((a, b), want) in pairs {
            let got = cosine(&e[a], &e[b]);
            assert!(
                (got - want).abs() < 2e-3,
                "cosine {a}-{b}: {got}, card says {want}"
            );
        }
    }

    /// reference.jsonl's `full` vectors: sentence-transformers' embeddings.
    #[test]
    fn model_matches_reference_vectors() {
        let (model, vocab) = (testdata::model(), testdata::vocab());
        let references = testdata::reference();
        let mut scratch = Scratch::new();
        let mut out = Vec::new();
        let mut worst = 0.0f32;
        for r in &references {
            model.embed_into(vocab, &r.text, &mut scratch, &mut out);
            let diff = max_abs_diff(&out, &r.full);
            assert!(diff < 1e-4, "text {:?}: max diff {diff}", r.text);
            worst = worst.max(diff);
        }
        eprintln!(
            "{} reference vectors, max abs diff {worst:e}",
            references.len()
        );
    }

    #[test]
    fn model_kernels_agree() {
        let mut portable = MiniLm::load(&testdata::dir().join("minilm")).unwrap();
        portable.set_kernel(Kernel::Portable);
        let (model, vocab) = (testdata::model(), testdata::vocab());
        if model.kernel() != Kernel::Avx2Fma {
            eprintln!("this CPU has no AVX2+FMA: only the portable kernel runs");
            return;
        }
        for text in [
            "The weather is lovely today.",
            "",
            &"lorem ipsum dolor sit amet ".repeat(5),
        ] {
            let diff = max_abs_diff(&model.embed(vocab, text), &portable.embed(vocab, text));
            assert!(diff < 1e-5, "{text:?}: {diff}");
        }
    }

    /// A 100 KB prompt is cut at the sequence bound, never panics, and is a
    /// unit vector; so is an empty one ([CLS] [SEP]). That the cut is the
    /// one sentence-transformers makes, reference.jsonl's long document
    /// checks (model_matches_reference_vectors).
    #[test]
    fn model_bounds_truncate_and_empty() {
        let (model, vocab) = (testdata::model(), testdata::vocab());
        let huge = "the quick brown fox jumps over the lazy dog. ".repeat(2_300);
        assert!(huge.len() > 100_000);
        let mut ids = Vec::new();
        vocab.tokenize(&huge, TEXT_TOKENS_MAX, &mut ids);
        assert_eq!(ids.len(), TEXT_TOKENS_MAX);
        for text in [
            huge.as_str(),
            "",
            "\u{0}\u{1}",
            &"x".repeat(100_000),
            &"é".repeat(50_000),
        ] {
            let v = model.embed(vocab, text);
            assert_eq!(v.len(), model.dims());
            assert!(v.iter().all(|x| x.is_finite()));
            assert!((dot(&v, &v) - 1.0).abs() < 1e-5);
        }
    }
}
