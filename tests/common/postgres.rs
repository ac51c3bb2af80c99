//! One throwaway PostgreSQL cluster per test binary, and a database of its own per test.
//!
//! Without the server binaries a test prints how to install them and is skipped (`None`);
//! under CI (`CI=true`) that is a failure.

use std::sync::OnceLock;

use fluffy_flow::postgres::{PgBackend, TempCluster, cluster};

fn cluster() -> Option<&'static TempCluster> {
    static CLUSTER: OnceLock<Option<TempCluster>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| match TempCluster::start() {
            Ok(cluster) => Some(cluster),
            Err(error)
                if std::env::var_os("CI").is_none() && cluster::server_bindir().is_none() =>
            {
                eprintln!("skipping the PostgreSQL tests: {error}");
                None
            }
            Err(error) => panic!("cannot start a PostgreSQL cluster for the tests: {error}"),
        })
        .as_ref()
}

/// The URL of database `name` (created on first use), or `None` when there is no server.
pub fn database(name: &str) -> Option<String> {
    static CREATED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let cluster = cluster()?;
    let mut created = CREATED.lock().unwrap_or_else(|e| e.into_inner());
    if created.iter().any(|known| known == name) {
        return Some(cluster.url(name));
    }
    let url = cluster
        .create_database(name)
        .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
    created.push(name.to_owned());
    Some(url)
}

/// The URL of database `name`, which `database` or `backend` created.
#[allow(dead_code)]
pub fn url(name: &str) -> String {
    cluster().expect("a cluster").url(name)
}

/// A migrated backend on a new database `name`.
#[allow(dead_code)]
pub async fn backend(name: &str) -> Option<PgBackend> {
    let url = database(name)?;
    let backend = PgBackend::connect(&url).await.unwrap();
    backend.migrate().await.unwrap();
    Some(backend)
}
