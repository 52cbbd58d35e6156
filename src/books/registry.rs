//! Stable entity ids: the `(kind, name) → EntityId` map that the journal and
//! snapshots rely on.
//!
//! The ledger names entities by a dense [`EntityId`]; the config and the admin
//! API name them by kind and name. The mapping must survive restarts and config
//! edits (a journal record for id 7 must mean the same key forever), so it is
//! kept in `entities.log` in the state directory: one
//! `"{id}\t{kind}\t{name}\t{crc}\n"` line per entity (`crc`: the crc32c of
//! `"{id}\t{kind}\t{name}"`, 8 hex digits, so a flipped byte in a name is
//! caught rather than read as another entity's name), appended and fsynced
//! before the new id is handed out. Lines without the checksum (written by
//! builds before it) are read, and the file is rewritten with checksums at
//! the next start.
//! Ids are assigned in order and never reused, even when an entity leaves the
//! config: its history in the journal still names it.
//!
//! Crash safety: a line is written with one `write` and then `fsync`ed; a crash
//! in between can leave a last line without its `\n`. That id was never
//! returned to anyone, so the torn line is cut off on open (and the id is
//! assigned again). A *complete* line that does not parse is real corruption
//! (no crash produces it) and stops the open with the file and line number.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::budget::Budget;
use crate::config::Config;
use crate::ledger::{EntityId, EntityKind};

/// The registry file's name in the state directory.
pub const REGISTRY_FILE: &str = "entities.log";
/// Longest entity name accepted, in bytes: the longest a config makes is a
/// key's budget on a model, `key/model` (128 + 1 + 256 bytes), or a tag
/// budget's `key=value` (64 + 1 + 256). The bound keeps a corrupt file from
/// being read as one giant name.
pub const ENTITY_NAME_BYTES_MAX: usize = 512;
/// Largest registry file read on open: `ENTITIES_MAX` lines of the longest
/// form. Anything bigger is refused rather than read into memory.
pub const REGISTRY_FILE_BYTES_MAX: u64 =
    crate::ledger::messages::ENTITIES_MAX as u64 * (ENTITY_NAME_BYTES_MAX as u64 + 32);

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("entity registry {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("entity registry {path}, line {line}: {reason}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("entity registry {path} is {len} bytes, more than the {REGISTRY_FILE_BYTES_MAX} a registry can hold")]
    TooLarge { path: PathBuf, len: u64 },
    #[error("entity name {name:?} is not acceptable: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error(
        "the registry is full: ids are below {}",
        crate::ledger::messages::ENTITIES_MAX
    )]
    Full,
}

/// The registry's text for a kind.
pub fn kind_str(kind: EntityKind) -> &'static str {
    kind.as_str()
}

pub fn kind_from_str(s: &str) -> Option<EntityKind> {
    EntityKind::ALL.into_iter().find(|k| kind_str(*k) == s)
}

/// Why a name cannot be registered, if it cannot.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > ENTITY_NAME_BYTES_MAX {
        return Err("longer than ENTITY_NAME_BYTES_MAX bytes");
    }
    if name.bytes().any(|b| b == b'\t' || b == b'\n' || b == b'\r') {
        return Err("contains a tab or a line break");
    }
    Ok(())
}

/// The persistent `(kind, name) ↔ id` map. Owned by one thread (the control
/// plane); wrap it in a mutex to share.
#[derive(Debug)]
pub struct EntityRegistry {
    path: PathBuf,
    file: File,
    by_name: HashMap<(EntityKind, String), EntityId>,
    /// Indexed by id: every id below `names.len()` is assigned.
    names: Vec<(EntityKind, String)>,
    /// The file's length: where the next line goes.
    len: u64,
    /// An append failed and its partial line could not be cut: refuse more.
    poisoned: bool,
}

impl EntityRegistry {
    /// Opens (or creates) `state_dir/entities.log`, cutting a torn last line
    /// and adding checksums to lines an older build wrote without them.
    pub fn open(state_dir: &Path) -> Result<EntityRegistry, RegistryError> {
        let path = state_dir.join(REGISTRY_FILE);
        let io = |source| RegistryError::Io {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(state_dir).map_err(|source| RegistryError::Io {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io)?;
        if !existed {
            sync_dir(state_dir)?;
        }
        let len = file.metadata().map_err(io)?.len();
        if len > REGISTRY_FILE_BYTES_MAX {
            return Err(RegistryError::TooLarge { path, len });
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.read_to_end(&mut bytes).map_err(io)?;
        let parsed = parse(&bytes, &path)?;
        if parsed.torn_bytes > 0 {
            log::warn!(
                "entity registry {}: cutting a torn last line of {} bytes",
                path.display(),
                parsed.torn_bytes
            );
            file.set_len(parsed.whole as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let mut registry = EntityRegistry {
            path: path.clone(),
            file,
            by_name: HashMap::new(),
            names: Vec::new(),
            len: parsed.whole as u64,
            poisoned: false,
        };
        for (kind, name) in parsed.names {
            registry.insert(kind, name);
        }
        if parsed.unchecked > 0 {
            log::info!(
                "entity registry {}: adding checksums to {} lines an older build wrote",
                path.display(),
                parsed.unchecked
            );
            registry.rewrite(state_dir)?;
        }
        Ok(registry)
    }

    /// Reads `state_dir/entities.log` without changing it (`bursar
    /// verify-state`).
    pub fn inspect(state_dir: &Path) -> Result<RegistryFile, RegistryError> {
        let path = state_dir.join(REGISTRY_FILE);
        let io = |source| RegistryError::Io {
            path: path.clone(),
            source,
        };
        let len = fs::metadata(&path).map_err(io)?.len();
        if len > REGISTRY_FILE_BYTES_MAX {
            return Err(RegistryError::TooLarge { path, len });
        }
        let bytes = fs::read(&path).map_err(io)?;
        parse(&bytes, &path)
    }

    /// Writes every entry again, with checksums, in place of the file
    /// (a temporary file, synced, renamed over it, the directory synced).
    fn rewrite(&mut self, state_dir: &Path) -> Result<(), RegistryError> {
        let tmp = state_dir.join(format!("{REGISTRY_FILE}.tmp"));
        let io_at = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RegistryError::Io { path, source }
        };
        let mut text = String::new();
        for (id, (kind, name)) in self.names.iter().enumerate() {
            text.push_str(&line(id as u32, *kind, name));
        }
        let mut f = File::create(&tmp).map_err(io_at(&tmp))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io_at(&tmp))?;
        drop(f);
        fs::rename(&tmp, &self.path).map_err(io_at(&self.path))?;
        sync_dir(state_dir)?;
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(io_at(&self.path))?;
        self.len = text.len() as u64;
        Ok(())
    }

    fn insert(&mut self, kind: EntityKind, name: String) -> EntityId {
        let id = EntityId(self.names.len() as u32);
        self.by_name.insert((kind, name.clone()), id);
        self.names.push((kind, name));
        id
    }

    /// The id of `(kind, name)`, assigning (and durably recording) the next one
    /// on first sight. When this returns, the line is fsynced.
    pub fn id_for(&mut self, kind: EntityKind, name: &str) -> Result<EntityId, RegistryError> {
        if let Some(id) = self.lookup(kind, name) {
            return Ok(id);
        }
        check_name(name).map_err(|reason| RegistryError::BadName {
            name: name.chars().take(ENTITY_NAME_BYTES_MAX).collect(),
            reason,
        })?;
        let next = self.names.len() as u32;
        if next >= crate::ledger::messages::ENTITIES_MAX {
            return Err(RegistryError::Full);
        }
        let line = line(next, kind, name);
        let path = self.path.clone();
        let io = |source| RegistryError::Io { path, source };
        if self.poisoned {
            return Err(io(std::io::Error::other(
                "an earlier append failed and could not be undone; reopen the registry",
            )));
        }
        // One write: a crash leaves a prefix of it at worst, which open cuts.
        let written = self
            .file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Undo a partial line, or the next append would follow it and
            // make a corrupt line in the middle of the file.
            if self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_data())
                .is_err()
            {
                self.poisoned = true;
            }
            return Err(io(e));
        }
        self.len += line.len() as u64;
        let id = self.insert(kind, name.to_owned());
        debug_assert_eq!(id.0, next);
        Ok(id)
    }

    pub fn lookup(&self, kind: EntityKind, name: &str) -> Option<EntityId> {
        // The key is (kind, String); a borrowed lookup would need a custom
        // Borrow impl, and this is the control plane, not the request path.
        self.by_name.get(&(kind, name.to_owned())).copied()
    }

    pub fn name_of(&self, id: EntityId) -> Option<(EntityKind, &str)> {
        self.names
            .get(id.0 as usize)
            .map(|(kind, name)| (*kind, name.as_str()))
    }

    /// Ids assigned so far (all ids below this are taken).
    pub fn len(&self) -> u32 {
        self.names.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl EntityRegistry {
    /// The ids of every customer, team, key and provider of `config`,
    /// assigning (durably) ids to the ones seen for the first time.
    pub fn ids_for_config(&mut self, config: &Config) -> Result<EntityIds, RegistryError> {
        let mut ids = EntityIds::default();
        for (kind, name, _) in config_entities(config) {
            let id = self.id_for(kind, &name)?;
            ids.0.insert((kind, name.into_owned()), id);
        }
        Ok(ids)
    }
}

/// Cluster mode's demands on a config's budgets, checked by `check-config`,
/// at start and on every admin change (the ledger refuses the same when a
/// budget is set): every node
/// must agree on each budget's periods without talking, so a resetting
/// budget must be calendar-aligned (a rolling one counts from when each
/// node created it).
pub fn check_cluster_budgets(config: &Config) -> Result<(), String> {
    if config.cluster.is_none() {
        return Ok(());
    }
    for (kind, name, budget) in config_entities(config) {
        if let Some(b) = budget {
            if b.reset.is_some() && b.alignment != crate::budget::period::Alignment::Calendar {
                return Err(format!(
                    "{} {name:?}: in cluster mode a resetting budget must be calendar-aligned \
                     (calendar_aligned = true), so every node agrees on its periods",
                    kind_str(kind)
                ));
            }
        }
    }
    Ok(())
}

/// Every entity a config defines, with its budget: customers, teams, virtual
/// keys, providers (in that order), then the budgets on other dimensions:
/// models gateway-wide, tag values, and each customer's, team's and key's
/// budgets on a model (named as [`crate::config::dimensions`] says).
pub fn config_entities(config: &Config) -> Vec<(EntityKind, Cow<'_, str>, Option<Budget>)> {
    use crate::config::dimensions::owner_model_name;
    let mut out = Vec::with_capacity(
        config.customers.len()
            + config.teams.len()
            + config.keys.len()
            + config.providers.len()
            + config.model_budgets.len()
            + config.tag_budgets.len(),
    );
    for c in &config.customers {
        out.push((
            EntityKind::Customer,
            Cow::Borrowed(c.name.as_str()),
            c.budget,
        ));
    }
    for t in &config.teams {
        out.push((EntityKind::Team, Cow::Borrowed(t.name.as_str()), t.budget));
    }
    for k in &config.keys {
        out.push((EntityKind::Key, Cow::Borrowed(k.name.as_str()), k.budget));
    }
    for p in &config.providers {
        out.push((
            EntityKind::Provider,
            Cow::Borrowed(p.name.as_str()),
            p.budget,
        ));
    }
    for m in &config.model_budgets {
        out.push((
            EntityKind::Model,
            Cow::Borrowed(m.model.as_str()),
            Some(m.budget),
        ));
    }
    for t in &config.tag_budgets {
        out.push((EntityKind::Tag, Cow::Owned(t.name()), Some(t.budget)));
    }
    let owners = config
        .customers
        .iter()
        .map(|c| (EntityKind::CustomerModel, &c.name, &c.model_budgets))
        .chain(
            config
                .teams
                .iter()
                .map(|t| (EntityKind::TeamModel, &t.name, &t.model_budgets)),
        )
        .chain(
            config
                .keys
                .iter()
                .map(|k| (EntityKind::KeyModel, &k.name, &k.model_budgets)),
        );
    for (kind, owner, budgets) in owners {
        for m in budgets {
            out.push((
                kind,
                Cow::Owned(owner_model_name(owner, &m.model)),
                Some(m.budget),
            ));
        }
    }
    out
}

/// A catalog's view of the registry: `(kind, name) → id` for the entities of
/// one config. Immutable; built on the control plane, read by workers.
#[derive(Debug, Clone, Default)]
pub struct EntityIds(HashMap<(EntityKind, String), EntityId>);

impl EntityIds {
    pub fn get(&self, kind: EntityKind, name: &str) -> Option<EntityId> {
        self.0.get(&(kind, name.to_owned())).copied()
    }

    /// Ids numbered in config order, without a registry: for tests and
    /// benches that build a catalog with no books behind it.
    pub fn sequential(config: &Config) -> EntityIds {
        EntityIds(
            config_entities(config)
                .into_iter()
                .enumerate()
                .map(|(i, (kind, name, _))| ((kind, name.into_owned()), EntityId(i as u32)))
                .collect(),
        )
    }
}

/// One registry line, with its checksum, as the registry writes it.
pub fn line(id: u32, kind: EntityKind, name: &str) -> String {
    let fields = format!("{id}\t{}\t{name}", kind_str(kind));
    let crc = crc32c::crc32c(fields.as_bytes());
    format!("{fields}\t{crc:08x}\n")
}

/// What a registry file holds ([`EntityRegistry::inspect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryFile {
    /// Indexed by id.
    pub names: Vec<(EntityKind, String)>,
    /// Bytes of whole lines.
    pub whole: usize,
    /// A torn last line (a crash mid-append; cut at the next start).
    pub torn_bytes: usize,
    /// Lines without a checksum (an older build's; rewritten at the next start).
    pub unchecked: usize,
}

/// Parses a registry file's bytes. A torn last line (no `\n`) is left out
/// and counted; any whole line that does not check out is corruption,
/// named by its line number.
pub fn parse(bytes: &[u8], path: &Path) -> Result<RegistryFile, RegistryError> {
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut file = RegistryFile {
        names: Vec::new(),
        whole,
        torn_bytes: bytes.len() - whole,
        unchecked: 0,
    };
    let mut seen: HashMap<(EntityKind, &str), u32> = HashMap::new();
    if whole == 0 {
        return Ok(file);
    }
    for (i, line) in bytes[..whole - 1].split(|&b| b == b'\n').enumerate() {
        let corrupt = |reason: String| RegistryError::Corrupt {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        if line.is_empty() {
            return Err(corrupt("empty line".into()));
        }
        let text = std::str::from_utf8(line).map_err(|_| corrupt("not UTF-8".into()))?;
        let fields: Vec<&str> = text.splitn(5, '\t').collect();
        let (id, kind, name) = match fields[..] {
            [id, kind, name, crc] => {
                let body = &text[..text.len() - crc.len() - 1];
                let want = format!("{:08x}", crc32c::crc32c(body.as_bytes()));
                if crc != want {
                    return Err(corrupt(format!(
                        "checksum {crc:?} does not match the line (damaged)"
                    )));
                }
                (id, kind, name)
            }
            [id, kind, name] => {
                file.unchecked += 1;
                (id, kind, name)
            }
            _ => {
                return Err(corrupt(format!(
                    "expected `id<TAB>kind<TAB>name<TAB>crc`, found {text:?}"
                )))
            }
        };
        let id: u32 = id
            .parse()
            .map_err(|_| corrupt(format!("id {id:?} is not a number")))?;
        let expected = file.names.len();
        if id as usize != expected {
            return Err(corrupt(format!(
                "id {id} where id {expected} was expected (ids are assigned in order)"
            )));
        }
        if id >= crate::ledger::messages::ENTITIES_MAX {
            return Err(corrupt(format!("id {id} is out of range")));
        }
        let kind = kind_from_str(kind).ok_or_else(|| corrupt(format!("unknown kind {kind:?}")))?;
        check_name(name).map_err(|why| corrupt(format!("name {name:?} is {why}")))?;
        if seen.insert((kind, name), id).is_some() {
            return Err(corrupt(format!(
                "{} {name:?} is registered twice",
                kind_str(kind)
            )));
        }
        file.names.push((kind, name.to_owned()));
    }
    Ok(file)
}

fn sync_dir(dir: &Path) -> Result<(), RegistryError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| RegistryError::Io {
            path: dir.to_path_buf(),
            source,
        })
}
