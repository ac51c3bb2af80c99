//! Opening the store a command names (`--store`).

use std::path::Path;
use std::sync::Arc;

use flow_runtime::{CheckpointStore, FileStore, RedbStore};

use super::Failure;

/// The store that `spec` names: `postgres://…` (or `postgresql://…`), a redb file, or a file
/// store's directory. Nothing is created: a path that does not exist is an error.
pub(crate) fn open(spec: &str) -> Result<Arc<dyn CheckpointStore>, Failure> {
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        return open_postgres(spec);
    }
    let path = Path::new(spec);
    let metadata = std::fs::metadata(path).map_err(|error| {
        Failure::not_found(format!(
            "no store at `{spec}` ({error}): give a redb file, a file store's directory or a postgres:// URL"
        ))
    })?;
    if metadata.is_dir() {
        Ok(Arc::new(FileStore::new(path)))
    } else {
        let store = RedbStore::open(path).map_err(|error| match error {
            flow_core::FlowError::StoreInUse { .. } => Failure::failed(format!(
                "{error} (a redb file is open in one process at a time: stop the program that runs with it, or use a file store or PostgreSQL to watch runs while they run)"
            )),
            error => Failure::failed(error.to_string()),
        })?;
        Ok(Arc::new(store))
    }
}

#[cfg(feature = "postgres")]
fn open_postgres(url: &str) -> Result<Arc<dyn CheckpointStore>, Failure> {
    // Connecting is async; the backend then drives its connections on a runtime of its own.
    // (On a thread of its own, so that a caller inside a runtime can run the CLI too.)
    let url = url.to_owned();
    let connected = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| Failure::failed(format!("starting a runtime: {error}")))?;
        runtime
            .block_on(flow_postgres::PgBackend::connect(&url))
            .map_err(|error| Failure::failed(error.to_string()))
    })
    .join()
    .map_err(|_| {
        Failure::failed("connecting to PostgreSQL: the connecting thread panicked".into())
    })?;
    Ok(Arc::new(flow_postgres::PgStore::new(&connected?)))
}

#[cfg(not(feature = "postgres"))]
fn open_postgres(_url: &str) -> Result<Arc<dyn CheckpointStore>, Failure> {
    Err(Failure::usage(
        "this `fluffy` was built without PostgreSQL: install it with `--features postgres`".into(),
    ))
}
