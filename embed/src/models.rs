//! What the semantic cache loads from `[cache] embedding_dir`: the static
//! table and, when confirmation is on, the full model. Loaded once per
//! directory and shared by every catalog that names it (a catalog is
//! rebuilt on every admin change; the model is 90 MB and takes a second to
//! read).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use super::minilm::MiniLm;
use super::table::{Manifest, StaticTable};
use super::EmbedError;

/// The models of one embedding directory.
pub struct Models {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub table: StaticTable,
    /// The confirming model, when loaded with confirmation.
    pub confirm: Option<MiniLm>,
}

impl std::fmt::Debug for Models {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Models")
            .field("dir", &self.dir)
            .field("table", &self.table)
            .field("confirm", &self.confirm.is_some())
            .finish()
    }
}

impl Models {
    /// Loads `dir`'s static table, and its full model with `confirm`.
    pub fn load(dir: &Path, confirm: bool) -> Result<Models, EmbedError> {
        let manifest = Manifest::read(dir)?;
        let table = StaticTable::load(dir, &manifest)?;
        let confirm = if confirm {
            if manifest.confirm.kind != "minilm" {
                return Err(EmbedError::Format(format!(
                    "{}: the confirming model is {:?}; this build runs \"minilm\"",
                    dir.display(),
                    manifest.confirm.kind
                )));
            }
            let model = MiniLm::load(&manifest.confirm_dir(dir))?;
            if model.dims() != manifest.confirm.dims {
                return Err(EmbedError::Format(format!(
                    "{}: the confirming model has {} dims, the manifest says {}",
                    dir.display(),
                    model.dims(),
                    manifest.confirm.dims
                )));
            }
            Some(model)
        } else {
            None
        };
        Ok(Models {
            dir: dir.to_path_buf(),
            manifest,
            table,
            confirm,
        })
    }

    /// The confirming model's unit vector of `text` (empty without one).
    pub fn confirm_embed(&self, text: &str) -> Vec<f32> {
        match &self.confirm {
            Some(m) => m.embed(self.table.vocab(), text),
            None => Vec::new(),
        }
    }
}

/// Directories loaded and still in use, by path and whether the full model
/// was loaded.
#[allow(clippy::type_complexity)]
static LOADED: Mutex<Vec<(PathBuf, bool, Weak<Models>)>> = Mutex::new(Vec::new());

/// The models of `dir`, loaded once while any catalog holds them. Called
/// off the workers (start-up, the control plane's catalog builds).
pub fn load_shared(dir: &Path, confirm: bool) -> Result<Arc<Models>, EmbedError> {
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    loaded.retain(|(_, _, w)| w.strong_count() > 0);
    if let Some(m) = loaded
        .iter()
        .filter(|(d, c, _)| d == dir && *c == confirm)
        .find_map(|(_, _, w)| w.upgrade())
    {
        return Ok(m);
    }
    let models = Arc::new(Models::load(dir, confirm)?);
    loaded.push((dir.to_path_buf(), confirm, Arc::downgrade(&models)));
    Ok(models)
}
