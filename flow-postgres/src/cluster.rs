//! A throwaway PostgreSQL cluster for tests, benchmarks and examples: `initdb` and `postgres`
//! of the machine's PostgreSQL package in a temporary directory, on a random port of
//! 127.0.0.1, stopped when the value is dropped or the process ends.
//!
//! `initdb` refuses to run as root; as root (CI), the cluster runs as the `postgres` system
//! user that Debian's package creates.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use flow_core::FlowError;

/// What to tell a user whose machine has no PostgreSQL server.
pub const INSTALL_HINT: &str = "PostgreSQL's server binaries were not found (initdb, postgres): install them (Debian/Ubuntu: `apt-get install postgresql`; they land in `pg_config --bindir`), or set FLUFFY_PG_BINDIR to their directory";

/// A PostgreSQL server of its own, in a temporary directory, for as long as it lives.
///
/// ```no_run
/// let cluster = flow_postgres::TempCluster::start().unwrap();
/// println!("{}", cluster.url("postgres"));
/// ```
pub struct TempCluster {
    dir: PathBuf,
    port: u16,
    child: Mutex<Option<Child>>,
    bindir: PathBuf,
    user: Option<(u32, u32)>,
}

/// Where the server binaries are: `FLUFFY_PG_BINDIR`, else `pg_config --bindir`, else the
/// newest `/usr/lib/postgresql/*/bin`.
pub fn server_bindir() -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("FLUFFY_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        return has_server(&dir).then_some(dir);
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output()
        && output.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if has_server(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
        .filter(|dir| has_server(dir))
        .collect();
    versions.sort();
    versions.pop()
}

/// The uid and gid of the system user `name`, from `/etc/passwd`.
fn system_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name) && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

fn error(action: &str, message: impl std::fmt::Display) -> FlowError {
    FlowError::CheckpointStore {
        store: "temporary PostgreSQL cluster".to_owned(),
        action: action.to_owned(),
        message: message.to_string(),
    }
}

/// A port on 127.0.0.1 that nothing listens on now.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl TempCluster {
    /// Creates and starts a cluster (a few seconds: `initdb` writes the template databases).
    /// Fails with the install hint when the server binaries are missing.
    pub fn start() -> Result<Self, FlowError> {
        let bindir = server_bindir().ok_or_else(|| error("finding PostgreSQL", INSTALL_HINT))?;
        // SAFETY: `geteuid` has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let user = if root {
            Some(system_user("postgres").ok_or_else(|| {
                error(
                    "finding the `postgres` user",
                    "running as root, the cluster runs as the `postgres` system user, and there is none: install Debian's postgresql package, which creates it",
                )
            })?)
        } else {
            None
        };
        static COUNT: AtomicU32 = AtomicU32::new(0);
        remove_stale_dirs();
        let dir = std::env::temp_dir().join(format!(
            "fluffy-pg-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| error("creating its directory", e))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| error("handing its directory to `postgres`", e))?;
        }
        let mut cluster = Self {
            dir,
            port: 0,
            child: Mutex::new(None),
            bindir,
            user,
        };
        cluster.init()?;
        // A port can be taken between the check and the server's bind: try a few.
        let mut last = None;
        for _ in 0..5 {
            cluster.port = free_port().map_err(|e| error("finding a free port", e))?;
            match cluster.launch() {
                Ok(()) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| error("starting the server", "no attempt was made")))
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bindir.join(program));
        if let Some((uid, gid)) = self.user {
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(gid);
        }
        command.env("LC_ALL", "C").current_dir(&self.dir);
        command
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn init(&self) -> Result<(), FlowError> {
        let output = self
            .command("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(self.data())
            .output()
            .map_err(|e| error("running initdb", e))?;
        if !output.status.success() {
            return Err(error(
                "running initdb",
                String::from_utf8_lossy(&output.stderr).trim(),
            ));
        }
        Ok(())
    }

    /// Starts the server and waits until it takes connections.
    fn launch(&self) -> Result<(), FlowError> {
        let log = self.dir.join("server.log");
        let log_file = std::fs::File::create(&log).map_err(|e| error("creating its log", e))?;
        if let Some((uid, gid)) = self.user {
            let _ = std::os::unix::fs::chown(&log, Some(uid), Some(gid));
        }
        let mut command = self.command("postgres");
        command
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=64MB",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: only async-signal-safe calls between fork and exec. The server gets
            // SIGQUIT (an immediate shutdown) when the thread that started it ends: that
            // thread is the process's own launcher thread, which ends with the process.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
                    Ok(())
                });
            }
        }
        let child = launcher_spawn(command).map_err(|e| error("starting postgres", e))?;
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() && self.ready() {
                return Ok(());
            }
            let exited = self
                .child
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
                .is_none_or(|child| child.try_wait().ok().flatten().is_some());
            if exited || Instant::now() > deadline {
                self.kill();
                let mut text = String::new();
                let _ = std::fs::File::open(&log).and_then(|mut f| f.read_to_string(&mut text));
                return Err(error(
                    "starting postgres",
                    format!("it did not start on port {}: {}", self.port, text.trim()),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the server says it accepts connections (`pg_isready`).
    fn ready(&self) -> bool {
        Command::new(self.bindir.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
            .status()
            .is_ok_and(|status| status.success())
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for database `database` as the superuser `postgres`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates database `name` (empty) and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String, FlowError> {
        let output = Command::new(self.bindir.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                name,
            ])
            .output()
            .map_err(|e| error("running createdb", e))?;
        if !output.status.success() {
            return Err(error(
                "creating a database",
                String::from_utf8_lossy(&output.stderr).trim(),
            ));
        }
        Ok(self.url(name))
    }

    fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            // SAFETY: signals the server process we started (and still own: not reaped).
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGQUIT);
            }
            let _ = child.wait();
        }
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Spawns `command` from one long-lived thread of the process: a child's parent-death
/// signal fires when the thread that spawned it ends, and this one ends only with the
/// process.
fn launcher_spawn(command: Command) -> std::io::Result<Child> {
    use std::sync::mpsc;
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static LAUNCHER: Mutex<Option<mpsc::Sender<Job>>> = Mutex::new(None);
    let mut launcher = LAUNCHER.lock().unwrap_or_else(|e| e.into_inner());
    let sender = launcher.get_or_insert_with(|| {
        let (sender, jobs) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("fluffy-pg-launcher".into())
            .spawn(move || {
                for (mut command, reply) in jobs {
                    let _ = reply.send(command.spawn());
                }
                // (The sender lives in a static: the loop ends only with the process.)
            })
            .expect("a thread can be spawned");
        sender
    });
    let (reply, spawned) = mpsc::channel();
    sender
        .send((command, reply))
        .map_err(|_| std::io::Error::other("the launcher thread has ended"))?;
    drop(launcher);
    spawned
        .recv()
        .map_err(|_| std::io::Error::other("the launcher thread has ended"))?
}

/// Removes the directories of clusters whose process has ended (killed before it could).
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("fluffy-pg-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
