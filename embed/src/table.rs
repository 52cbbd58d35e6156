//! The static embedding table: one int8 row (with its scale) per
//! WordPiece token, distilled from all-MiniLM-L6-v2 by
//! `tools/embeddings/distill.py` (model2vec's method: each token through
//! the full model alone, PCA, Zipf weights). A prompt's embedding is the
//! normalised sum of its tokens' rows: microseconds, no matrix product, so
//! it can run on a worker for every cacheable prompt.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::wordpiece::Vocab;
use super::EmbedError;

/// The manifest format this build reads.
pub const MANIFEST_FORMAT: u64 = 1;
/// Most tokens of a prompt the static embedding reads (the semantic
/// cache's prompts are at most 2 KiB, far fewer tokens than this).
pub const STATIC_TOKENS_MAX: usize = 1024;
/// Bounds on the table's shape, checked at load.
pub const STATIC_DIMS_MAX: usize = 1024;
pub const STATIC_ROWS_MAX: usize = 1 << 20;

/// `DIR/manifest.json`, as `scripts/fetch-embeddings DIR` writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub format: u64,
    pub package: String,
    pub package_version: String,
    #[serde(rename = "static")]
    pub static_table: StaticManifest,
    pub confirm: ConfirmManifest,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StaticManifest {
    pub dims: usize,
    pub rows: usize,
    pub table: String,
    pub scales: String,
    pub vocab: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ConfirmManifest {
    pub kind: String,
    pub dir: String,
    pub dims: usize,
}

impl Manifest {
    /// Reads and checks `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Manifest, EmbedError> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(|source| EmbedError::Io {
            path: path.clone(),
            source,
        })?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| EmbedError::Format(format!("{}: {e}", path.display())))?;
        if m.format != MANIFEST_FORMAT {
            return Err(EmbedError::Format(format!(
                "{}: format {} (this build reads {MANIFEST_FORMAT}); run scripts/fetch-embeddings again",
                path.display(),
                m.format
            )));
        }
        let s = &m.static_table;
        if s.dims == 0 || s.dims > STATIC_DIMS_MAX || s.rows == 0 || s.rows > STATIC_ROWS_MAX {
            return Err(EmbedError::Format(format!(
                "{}: a static table of {} rows of {} dims",
                path.display(),
                s.rows,
                s.dims
            )));
        }
        Ok(m)
    }

    /// The confirming model's directory.
    pub fn confirm_dir(&self, dir: &Path) -> PathBuf {
        dir.join(&self.confirm.dir)
    }
}

/// The table and the vocabulary that indexes it.
pub struct StaticTable {
    vocab: Vocab,
    dims: usize,
    rows: Box<[i8]>,
    scales: Box<[f32]>,
}

impl std::fmt::Debug for StaticTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticTable")
            .field("dims", &self.dims)
            .field("rows", &self.scales.len())
            .finish()
    }
}

impl StaticTable {
    /// Loads the table `manifest` describes from `dir`.
    pub fn load(dir: &Path, manifest: &Manifest) -> Result<StaticTable, EmbedError> {
        let s = &manifest.static_table;
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| EmbedError::Io { path, source })
        };
        let vocab = Vocab::load(&dir.join(&s.vocab))?;
        let rows = read(&s.table)?;
        let scales = read(&s.scales)?;
        if rows.len() != s.rows * s.dims || scales.len() != s.rows * 4 || vocab.len() != s.rows {
            return Err(EmbedError::Format(format!(
                "{}: the table, its scales and the vocabulary disagree with the manifest \
                 ({} rows of {} dims): {} bytes, {} bytes, {} tokens",
                dir.display(),
                s.rows,
                s.dims,
                rows.len(),
                scales.len(),
                vocab.len()
            )));
        }
        let rows: Box<[i8]> = rows.into_iter().map(|b| b as i8).collect();
        let scales: Box<[f32]> = scales
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if scales.iter().any(|x| !x.is_finite() || *x < 0.0) {
            return Err(EmbedError::Format(format!(
                "{}: a scale that is negative or not finite",
                dir.display()
            )));
        }
        Ok(StaticTable {
            vocab,
            dims: s.dims,
            rows,
            scales,
        })
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// The unit vector of `text` into `out` (`dims` long; all zeros when no
    /// token has a row). `ids` is scratch.
    pub fn embed(&self, text: &str, ids: &mut Vec<u32>, out: &mut Vec<f32>) {
        ids.clear();
        self.vocab.tokenize(text, STATIC_TOKENS_MAX, ids);
        out.clear();
        out.resize(self.dims, 0.0);
        for &id in ids.iter() {
            let Some(&scale) = self.scales.get(id as usize) else {
                continue;
            };
            if scale == 0.0 {
                continue;
            }
            let row = &self.rows[id as usize * self.dims..][..self.dims];
            for (o, &r) in out.iter_mut().zip(row) {
                *o += scale * f32::from(r);
            }
        }
        let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            for o in out.iter_mut() {
                *o /= norm;
            }
        }
    }

    /// Memory held, in bytes.
    pub fn bytes(&self) -> usize {
        self.rows.len() + self.scales.len() * 4
    }
}
