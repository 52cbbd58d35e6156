//! The embedding model's cost on a prompt. Run: `cargo bench --bench embed`
//! (needs the model files: `scripts/fetch-embeddings target/embeddings`, or
//! `BURSAR_EMBEDDINGS_DIR`).
//!
//! - `tokenize/20_words`: WordPiece ids of a 20-word English prompt.
//! - `tokenize/20_words_accented`: the same prompt with accents and a CJK
//!   word (the Unicode path: NFD and the category tables).
//! - `embed/{16,64}_tokens`: the whole embedding (tokenize, forward pass,
//!   pooling) of a prompt whose text is 16 or 64 tokens (18 and 66 with
//!   `[CLS]` and `[SEP]`), warm scratch, the fastest kernel this CPU has.
//! - `embed_portable/{16,64}_tokens`: the same with the portable kernel.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bursar::embed::{Kernel, MiniLm, Scratch, Vocab};
use criterion::Criterion;

const PROMPT_20_WORDS: &str = "Please summarise the attached quarterly report and list the three \
                               biggest risks for our sales team next year";
const PROMPT_20_WORDS_ACCENTED: &str = "Please résumé the attached quarterly report and list the \
                                        three biggest risks for our café team 東京 next year";

/// Common one-token words, to build prompts of an exact length.
const WORDS: &str = "the model reads each word of the question and writes a short answer about \
                     what the user asked before the next request arrives from another team";

fn dir() -> PathBuf {
    let dir = std::env::var_os("BURSAR_EMBEDDINGS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/embeddings"));
    if !dir.join("minilm/model.safetensors").is_file() {
        eprintln!(
            "no model files in {}: run `scripts/fetch-embeddings target/embeddings` \
             (or set BURSAR_EMBEDDINGS_DIR)",
            dir.display()
        );
        std::process::exit(1);
    }
    dir
}

/// A prompt that tokenizes to exactly `tokens` ids.
fn prompt(vocab: &Vocab, tokens: usize) -> String {
    let mut text = String::new();
    for word in WORDS.split(' ').cycle() {
        let mut ids = Vec::new();
        vocab.tokenize(&text, usize::MAX, &mut ids);
        if ids.len() == tokens {
            return text;
        }
        assert!(ids.len() < tokens);
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(word);
    }
    unreachable!()
}

fn benches(c: &mut Criterion) {
    let dir = dir();
    let vocab = Vocab::load(&dir.join("minilm/vocab.txt")).unwrap();
    let start = Instant::now();
    let mut model = MiniLm::load(&dir.join("minilm")).unwrap();
    eprintln!("load: {:?}, kernel: {:?}", start.elapsed(), model.kernel());

    let mut ids = Vec::with_capacity(256);
    for (name, text) in [
        ("tokenize/20_words", PROMPT_20_WORDS),
        ("tokenize/20_words_accented", PROMPT_20_WORDS_ACCENTED),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                ids.clear();
                vocab.tokenize(black_box(text), 254, &mut ids);
                black_box(ids.len())
            })
        });
    }

    let mut scratch = Scratch::new();
    let mut out = Vec::with_capacity(model.dims());
    let prompts = [(16, prompt(&vocab, 16)), (64, prompt(&vocab, 64))];
    let mut kernels = vec![(model.kernel(), "embed")];
    if model.kernel() != Kernel::Portable {
        kernels.push((Kernel::Portable, "embed_portable"));
    }
    for (kernel, group) in kernels {
        model.set_kernel(kernel);
        for (tokens, text) in &prompts {
            c.bench_function(&format!("{group}/{tokens}_tokens"), |b| {
                b.iter(|| {
                    model.embed_into(&vocab, black_box(text), &mut scratch, &mut out);
                    black_box(out[0])
                })
            });
        }
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(50)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1))
}

criterion::criterion_group! {
    name = group;
    config = config();
    targets = benches
}
criterion::criterion_main!(group);
