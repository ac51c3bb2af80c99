//! The connection to one PostgreSQL database that the store, the run queue and the workers
//! share: a few pipelined connections driven by a small runtime of the backend's own.
//!
//! Every operation is one SQL statement (several tables change together through a statement
//! with data-modifying `WITH` clauses), so each is a transaction of its own and needs no
//! connection to itself: requests of many tasks share a connection, pipelined, instead of
//! queueing for a pool.

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use flow_core::FlowError;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::Mutex;
use tokio_postgres::{Client, Config, NoTls};

use crate::listen::Listener;
use crate::migrations::MIGRATIONS;
use crate::sql;

/// The notification channels, by what they announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Channel {
    /// A run was queued (submitted, given back, requeued by an answer).
    Runs = 0,
    /// A run ended.
    Done = 1,
    /// A semaphore's permit was released.
    Permits = 2,
    /// An answer was posted.
    Answers = 3,
    /// A remote state's attempt was sent.
    Tasks = 4,
    /// A remote attempt's reply was written.
    Replies = 5,
    /// A worker was asked to cancel a run it holds.
    Cancels = 6,
}

/// Every channel's name, by [`Channel`].
pub(crate) const CHANNELS: [&str; 7] = [
    "fluffy_runs",
    "fluffy_done",
    "fluffy_permits",
    "fluffy_answers",
    "fluffy_tasks",
    "fluffy_replies",
    "fluffy_cancels",
];

/// How many connections a backend keeps by default.
const DEFAULT_CONNECTIONS: usize = 4;

/// One database: the checkpoint store, the run queue and the workers of a deployment talk
/// to PostgreSQL through it. Cheap to clone (clones share the connections).
///
/// Its blocking methods (those of [`crate::PgStore`]) may be called from any thread that is
/// not one of the backend's own; the queries run on the backend's runtime, so they need no
/// tokio runtime of the caller's.
#[derive(Clone)]
pub struct PgBackend {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    describe: String,
    runtime: Option<Runtime>,
    handle: Handle,
    slots: Vec<Mutex<Option<Arc<Connection>>>>,
    next: AtomicUsize,
    /// One connection listening on every channel the backend's users wait on, opened by the
    /// first that waits (every wait shares it: no connection per waiter).
    listener: OnceLock<Listener>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // (Dropped from async code too: a runtime must not be dropped there in place.)
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// One open connection and its prepared statements.
pub(crate) struct Connection {
    pub(crate) client: Client,
    pub(crate) sql: sql::Statements,
}

/// An error during `action`, as the store reports it.
pub(crate) fn db_error(store: &str, action: &str, error: impl std::fmt::Display) -> FlowError {
    FlowError::CheckpointStore {
        store: store.to_owned(),
        action: action.to_owned(),
        message: error.to_string(),
    }
}

/// A client error with what lies under it: the server's message, detail and hint, or the
/// chain of causes (tokio-postgres's own text says only "error serializing parameter 2").
pub(crate) fn explain(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = format!("{}: {}", db.severity(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        return text;
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

impl PgBackend {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`;
    /// see tokio-postgres's `Config` for every key) with up to 4 connections, and checks
    /// that the server answers. Apply the schema with [`Self::migrate`] before use.
    pub async fn connect(url: &str) -> Result<Self, FlowError> {
        Self::connect_with(url, DEFAULT_CONNECTIONS).await
    }

    /// [`Self::connect`] with up to `connections` connections (at least one).
    pub async fn connect_with(url: &str, connections: usize) -> Result<Self, FlowError> {
        let mut config = Config::from_str(url).map_err(|e| FlowError::InvalidConfig {
            agent: "postgres".to_owned(),
            message: format!("`{}` is not a PostgreSQL URL: {e}", redact(url)),
        })?;
        // A server that stops answering (a black-holed network) is noticed in seconds, not
        // hours, unless the URL says otherwise.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            config.keepalives_idle(Duration::from_secs(15));
        }
        #[cfg(target_os = "linux")]
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(Duration::from_secs(30));
        }
        let describe = format!("postgres store {}", describe(&config));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fluffy-postgres")
            .enable_all()
            .build()
            .map_err(|e| db_error(&describe, "starting its runtime", e))?;
        let handle = runtime.handle().clone();
        let backend = Self {
            inner: Arc::new(Inner {
                config,
                describe,
                runtime: Some(runtime),
                handle,
                slots: (0..connections.max(1)).map(|_| Mutex::new(None)).collect(),
                next: AtomicUsize::new(0),
                listener: OnceLock::new(),
            }),
        };
        // One connection now, so that a wrong address or password is an error here.
        let client = backend.open_plain().await?;
        drop(client);
        Ok(backend)
    }

    /// The database, for error messages (`postgres store 127.0.0.1:5432/flows`; never the
    /// password).
    pub fn describe(&self) -> &str {
        &self.inner.describe
    }

    /// What wakes waiters on notification channel `channel` (one of [`CHANNELS`]): they
    /// look again at what they wait for. (Also woken when the listening connection was
    /// opened again: a notification may have been missed meanwhile.)
    pub(crate) fn notifications(&self, channel: Channel) -> Arc<tokio::sync::Notify> {
        let listener = self
            .inner
            .listener
            .get_or_init(|| Listener::start(self, &CHANNELS));
        Arc::clone(listener.notify(channel))
    }

    /// The connection settings.
    pub(crate) fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Runs `future` on the backend's runtime, in the background.
    pub(crate) fn spawn(
        &self,
        future: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::AbortHandle {
        self.inner.handle.spawn(future).abort_handle()
    }

    /// Runs `future` on the backend's runtime and waits for it, blocking this thread.
    pub(crate) fn block_on<T: Send + 'static>(
        &self,
        future: impl Future<Output = Result<T, FlowError>> + Send + 'static,
    ) -> Result<T, FlowError> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        self.inner.handle.spawn(async move {
            let _ = sender.send(future.await);
        });
        receiver.recv().map_err(|_| {
            db_error(
                &self.inner.describe,
                "waiting for the database",
                "the backend's runtime has shut down",
            )
        })?
    }

    /// Runs `future` on the backend's runtime (where its connections live) and awaits it.
    pub(crate) async fn on_runtime<T: Send + 'static>(
        &self,
        future: impl Future<Output = Result<T, FlowError>> + Send + 'static,
    ) -> Result<T, FlowError> {
        self.inner
            .handle
            .spawn(future)
            .await
            .map_err(|e| db_error(&self.inner.describe, "waiting for the database", e))?
    }

    /// A connection without prepared statements, driven on the backend's runtime.
    async fn open_plain(&self) -> Result<Client, FlowError> {
        let config = self.inner.config.clone();
        let describe = self.inner.describe.clone();
        self.on_runtime(async move {
            let (client, connection) = config
                .connect(NoTls)
                .await
                .map_err(|e| db_error(&describe, "connecting", explain(&e)))?;
            tokio::spawn(async move {
                // (Ends when the client is dropped or the server goes away; a broken
                // connection is noticed by the next request and replaced.)
                let _ = connection.await;
            });
            // The statements' guarantees (a lock taken, then a fresh snapshot per statement)
            // hold under READ COMMITTED: whatever the database's or role's default is.
            client
                .batch_execute("SET default_transaction_isolation = 'read committed'")
                .await
                .map_err(|e| db_error(&describe, "connecting", explain(&e)))?;
            Ok(client)
        })
        .await
    }

    /// One of the shared connections, opened (and its statements prepared) on first use,
    /// reopened if it was closed.
    pub(crate) async fn connection(&self) -> Result<Arc<Connection>, FlowError> {
        let slots = &self.inner.slots;
        let slot = &slots[self.inner.next.fetch_add(1, Ordering::Relaxed) % slots.len()];
        let mut slot = slot.lock().await;
        if let Some(connection) = slot.as_ref()
            && !connection.client.is_closed()
        {
            return Ok(Arc::clone(connection));
        }
        let client = self.open_plain().await?;
        let sql = sql::Statements::prepare(&client).await.map_err(|e| {
            db_error(
                &self.inner.describe,
                "preparing its statements (has `migrate` been run?)",
                explain(&e),
            )
        })?;
        let connection = Arc::new(Connection { client, sql });
        *slot = Some(Arc::clone(&connection));
        Ok(connection)
    }

    /// [`PgBackend::query`], blocking this thread (which must not be one of the backend's).
    pub(crate) fn blocking<T, F>(
        &self,
        action: &'static str,
        query: impl FnOnce(Arc<Connection>) -> F + Send + 'static,
    ) -> Result<T, FlowError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, tokio_postgres::Error>> + Send,
    {
        let backend = self.clone();
        self.block_on(async move { backend.query(action, query).await })
    }

    /// `query` on one of the backend's connections, on its runtime, awaited here: the
    /// async twin of [`PgBackend::blocking`]. A failure is an error of `action`.
    pub(crate) async fn query<T, F>(
        &self,
        action: &'static str,
        query: impl FnOnce(Arc<Connection>) -> F + Send + 'static,
    ) -> Result<T, FlowError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, tokio_postgres::Error>> + Send,
    {
        let backend = self.clone();
        self.on_runtime(async move {
            let connection = backend.connection().await?;
            query(connection)
                .await
                .map_err(|e| db_error(backend.describe(), action, explain(&e)))
        })
        .await
    }

    /// Applies the schema's migrations that the database has not had yet, each in a
    /// transaction, under an advisory lock (workers starting together apply each once).
    /// Returns how many it applied.
    pub async fn migrate(&self) -> Result<usize, FlowError> {
        let mut client = self.open_plain().await?;
        let describe = self.inner.describe.clone();
        self.on_runtime(async move {
            let fail =
                |e: tokio_postgres::Error| db_error(&describe, "migrating its schema", explain(&e));
            client
                .batch_execute(
                    "SELECT pg_advisory_lock(7270115320);
                     CREATE TABLE IF NOT EXISTS fluffy_migrations (
                         version integer PRIMARY KEY,
                         name text NOT NULL,
                         applied_at timestamptz NOT NULL DEFAULT now()
                     );",
                )
                .await
                .map_err(fail)?;
            let applied: Vec<i32> = client
                .query("SELECT version FROM fluffy_migrations", &[])
                .await
                .map_err(fail)?
                .iter()
                .map(|row| row.get(0))
                .collect();
            let mut count = 0;
            for (version, name, text) in MIGRATIONS {
                if applied.contains(&version) {
                    continue;
                }
                let transaction = client.transaction().await.map_err(fail)?;
                transaction.batch_execute(text).await.map_err(fail)?;
                transaction
                    .execute(
                        "INSERT INTO fluffy_migrations (version, name) VALUES ($1, $2)",
                        &[&version, &name],
                    )
                    .await
                    .map_err(fail)?;
                transaction.commit().await.map_err(fail)?;
                count += 1;
            }
            client
                .batch_execute("SELECT pg_advisory_unlock(7270115320)")
                .await
                .map_err(fail)?;
            Ok(count)
        })
        .await
    }
}

/// `url` without its password (in a URL or in `key=value` form).
fn redact(url: &str) -> String {
    if !url.contains("://") {
        return url
            .split(' ')
            .map(|pair| match pair.split_once('=') {
                Some(("password", _)) => "password=***",
                _ => pair,
            })
            .collect::<Vec<_>>()
            .join(" ");
    }
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// `host:port/database` of `config`.
fn describe(config: &Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".to_owned());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{host}:{port}/{}",
        config.get_dbname().unwrap_or("postgres")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://ann:s3cret@db:5432/flows"),
            "postgres://ann:***@db:5432/flows"
        );
        assert_eq!(redact("postgres://ann@db/flows"), "postgres://ann@db/flows");
        assert_eq!(
            redact("host=db user=ann password=s3cret"),
            "host=db user=ann password=***"
        );
    }
}
