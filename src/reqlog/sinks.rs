//! Opening the store a sink names. Its own file, above both sinks and the
//! `LogStore` trait they implement, so the arrows run one way: the sinks
//! import the trait, this file imports the sinks, and the trait imports
//! neither.

use std::path::Path;

use super::store::{LogStore, StoreError};
use super::{SinkKind, LOG_SQLITE_FILE};

/// Opens (creating if needed) the store a sink names.
pub(crate) fn open(sink: &SinkKind, state_dir: &Path) -> Result<Box<dyn LogStore>, StoreError> {
    Ok(match sink {
        SinkKind::Sqlite => Box::new(super::sqlite::SqliteStore::open(
            &state_dir.join(LOG_SQLITE_FILE),
        )?),
        SinkKind::Postgres { url } => Box::new(super::postgres::PostgresStore::connect(url)?),
    })
}
