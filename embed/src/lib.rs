//! Sentence embeddings: text to a unit vector whose cosine with another
//! text's says how alike their meanings are.
//!
//! Its parts, all pure computation over files read once at load:
//!
//! - [`wordpiece`]: BERT's uncased WordPiece tokenizer ([`Vocab`]), written to
//!   give the same ids as Hugging Face `tokenizers` does for
//!   all-MiniLM-L6-v2's `tokenizer.json`, character for character.
//! - [`minilm`]: the all-MiniLM-L6-v2 sentence transformer ([`MiniLm`]), a
//!   6-layer BERT with mean pooling, hand-written: one small fixed
//!   architecture does not justify a tensor framework's build time, and a
//!   hand-written forward pass can keep every buffer and bound in view.
//! - [`table`]: the static table ([`StaticTable`]) distilled from it by
//!   `scripts/fetch-embeddings`: a prompt's vector in microseconds, the
//!   semantic cache's stage a.
//! - [`models`]: what `[cache] embedding_dir` holds, loaded once per
//!   directory ([`load_shared`]).
//!
//! Nothing here does I/O after loading, takes a lock or allocates on a warm
//! path (the tokenizer writes into the caller's `Vec`, the model into a
//! reusable [`Scratch`]). The module imports nothing else from the crate so
//! that it can be tested, benchmarked and reasoned about on its own; what
//! calls it (and on which thread) is the caller's business.
//!
//! Architecture Invariant: a malformed model directory is an [`EmbedError`]
//! at load; after a successful load no input text can make either part
//! panic or allocate without bound (prompts are cut at
//! [`minilm::SEQUENCE_TOKENS_MAX`]).

pub mod ann;
pub mod minilm;
pub mod models;
pub mod table;
pub mod vectors;
pub mod wordpiece;

use std::path::PathBuf;

pub use minilm::{Kernel, MiniLm, Scratch, SEQUENCE_TOKENS_MAX, TEXT_TOKENS_MAX};
pub use models::{load_shared, Models};
pub use table::{Manifest, StaticTable};
pub use wordpiece::{Vocab, WORD_CHARS_MAX};

// Loaded once and shared by every thread that embeds (each with its own
// `Scratch`).
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<Vocab>();
    shareable::<MiniLm>();
};

/// Why a vocabulary or model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (`config.json`, the safetensors header) did not parse.
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A file parsed but says something this module cannot use: a missing
    /// special token, an unsupported dtype, a tensor outside the file.
    #[error("{0}")]
    Format(String),
    /// The model lacks a tensor its architecture needs.
    #[error("model has no tensor {0:?}")]
    MissingTensor(String),
    /// A tensor's shape disagrees with `config.json`.
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
}

/// Where the tests find the model files, and the files loaded once.
///
/// The files are not in the repository (90 MB): `scripts/fetch-embeddings
/// target/embeddings` fetches them; `BURSAR_EMBEDDINGS_DIR` points elsewhere.
/// Every test that needs them is named `model_…` and fails, saying so, when
/// they are absent: a missing model must not pass for a working one.
#[cfg(test)]
pub(crate) mod testdata {
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;

    use super::{MiniLm, Vocab};

    /// The embeddings directory (`manifest.json`, `minilm/`,
    /// `reference.jsonl`).
    pub(crate) fn dir() -> PathBuf {
        let dir = std::env::var_os("BURSAR_EMBEDDINGS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/embeddings"));
        let model = dir.join("minilm");
        assert!(
            model.join("model.safetensors").is_file() && model.join("vocab.txt").is_file(),
            "the embedding model files are missing from {}: run \
             `scripts/fetch-embeddings target/embeddings` (or set BURSAR_EMBEDDINGS_DIR \
             to a directory that has minilm/model.safetensors)",
            dir.display()
        );
        dir
    }

    /// The model's `vocab.txt`, loaded once.
    pub(crate) fn vocab() -> &'static Vocab {
        static VOCAB: OnceLock<Vocab> = OnceLock::new();
        VOCAB.get_or_init(|| {
            Vocab::load(&dir().join("minilm/vocab.txt")).expect("load minilm/vocab.txt")
        })
    }

    /// The model, loaded once (with the fastest kernel).
    pub(crate) fn model() -> &'static MiniLm {
        static MODEL: OnceLock<MiniLm> = OnceLock::new();
        MODEL.get_or_init(|| MiniLm::load(&dir().join("minilm")).expect("load minilm/"))
    }

    /// One line of `reference.jsonl`: Hugging Face's ids and
    /// sentence-transformers' embedding of a text.
    #[derive(Debug, serde::Deserialize)]
    pub(crate) struct Reference {
        pub(crate) text: String,
        pub(crate) ids: Vec<u32>,
        pub(crate) full: Vec<f32>,
    }

    /// Every line of `reference.jsonl`; fails when it is missing.
    pub(crate) fn reference() -> Vec<Reference> {
        let path = dir().join("reference.jsonl");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}: run `scripts/fetch-embeddings target/embeddings`",
                path.display()
            )
        });
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("a reference.jsonl line"))
            .collect()
    }
}
