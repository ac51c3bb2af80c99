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

/// A plain client of the database at `url`, for what a test reads or changes by hand.
#[allow(dead_code)]
pub async fn client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Holds each worker's work until every one of `n` workers has begun some, so that a test
/// of how work spreads over workers does not depend on how fast each connects and claims:
/// a worker whose slots all wait here can claim nothing more, so the others take the rest.
/// Each worker's definition gets its own [`EveryWorker::member`].
#[allow(dead_code)]
#[derive(Clone)]
pub struct EveryWorker {
    /// The bit of this member's worker, 0 for the shared gate itself.
    bit: u32,
    all: u32,
    begun: std::sync::Arc<tokio::sync::watch::Sender<u32>>,
}

#[allow(dead_code)]
impl EveryWorker {
    /// A gate for `n` (at most 32) workers.
    pub fn new(n: u32) -> Self {
        assert!((1..=32).contains(&n));
        Self {
            bit: 0,
            all: u32::MAX >> (32 - n),
            begun: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// The handle of worker `i` (from 0).
    pub fn member(&self, i: usize) -> Self {
        Self {
            bit: 1 << i,
            ..self.clone()
        }
    }

    /// Marks this member's worker as begun and waits until every worker has.
    pub async fn begin(&self) {
        self.begun.send_modify(|begun| *begun |= self.bit);
        let mut seen = self.begun.subscribe();
        seen.wait_for(|begun| *begun == self.all)
            .await
            .expect("the sender lives as long as its members");
    }
}
