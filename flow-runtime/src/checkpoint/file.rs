//! A store of JSON files: one directory per workflow and run, one file per checkpoint.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use flow_core::FlowError;

use super::{AnswerInbox, Checkpoint, CheckpointStore};
use crate::input::PostedAnswer;

/// Keeps each checkpoint in its own JSON file: `<dir>/<workflow>/<run>/<sequence>.json`.
///
/// A save writes a temporary file, flushes it to disk (`fsync`), renames it over its final
/// name (atomic on POSIX file systems) and flushes the directory, so a crash leaves either the
/// old set of files or the new one, never a half-written checkpoint under a final name. Names
/// come from sequence numbers, which only grow within a run: two checkpoints never share a
/// file. Workflow and run names are escaped to be safe file names. One process should write a
/// given run at a time.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    /// A store in `dir` (created when the first checkpoint is saved).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory it keeps its files in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file checkpoint `sequence` of `run` is (or would be) kept in.
    pub fn file_of(&self, agent: &str, run: &str, sequence: u64) -> PathBuf {
        self.file(agent, run, sequence)
    }

    fn run_dir(&self, agent: &str, run: &str) -> PathBuf {
        self.dir.join(escape(agent)).join(escape(run))
    }

    fn file(&self, agent: &str, run: &str, sequence: u64) -> PathBuf {
        self.run_dir(agent, run)
            .join(format!("{sequence:020}.json"))
    }

    /// The directories in `dir` whose names this store wrote (escaped names), unescaped,
    /// with their paths; none if `dir` does not exist.
    fn subdirectories(&self, dir: &std::path::Path) -> Result<Vec<(String, PathBuf)>, FlowError> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(self.failed(&format!("listing {}", dir.display()), &error)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| self.failed(&format!("listing {}", dir.display()), &e))?;
            let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
            if let (true, Some(name)) = (is_dir, entry.file_name().to_str().and_then(unescape)) {
                found.push((name, entry.path()));
            }
        }
        Ok(found)
    }

    fn failed(&self, action: &str, error: &io::Error) -> FlowError {
        FlowError::CheckpointStore {
            store: self.describe(),
            action: action.to_owned(),
            message: error.to_string(),
        }
    }

    /// Creates `dir` and any missing parent, flushing each new directory's entry in its parent
    /// to disk (a new run's first checkpoint must not vanish with its directory).
    fn create_durably(&self, dir: &Path) -> io::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.create_durably(parent)?;
        }
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            Err(error) => return Err(error),
        }
        match dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => File::open(parent)?.sync_all(),
            _ => Ok(()),
        }
    }

    fn read(&self, agent: &str, run: &str, sequence: u64) -> Result<Option<Checkpoint>, FlowError> {
        let path = self.file(agent, run, sequence);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(self.failed(&format!("reading {}", path.display()), &error));
            }
        };
        let store = format!("{} (file {})", self.describe(), path.display());
        Checkpoint::from_json(&bytes, &store, agent, run).map(Some)
    }
}

impl CheckpointStore for FileStore {
    fn describe(&self) -> String {
        format!("file store {}", self.dir.display())
    }

    fn save(&self, checkpoint: &Checkpoint) -> Result<(), FlowError> {
        let bytes = checkpoint.to_json()?;
        let dir = self.run_dir(&checkpoint.agent, &checkpoint.run_key);
        self.create_durably(&dir)
            .map_err(|e| self.failed(&format!("creating {}", dir.display()), &e))?;
        let target = self.file(&checkpoint.agent, &checkpoint.run_key, checkpoint.sequence);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let temporary = dir.join(format!(
            ".{:020}.{}.{nanos}.tmp",
            checkpoint.sequence,
            std::process::id()
        ));
        write_whole(&dir, &temporary, &target, &bytes)
            .map_err(|error| self.failed(&format!("writing {}", target.display()), &error))
    }

    fn latest(&self, agent: &str, run: &str) -> Result<Option<Checkpoint>, FlowError> {
        match self.sequences(agent, run)?.last() {
            Some(&sequence) => self.read(agent, run, sequence),
            None => Ok(None),
        }
    }

    fn runs(&self) -> Result<Vec<super::StoredRun>, FlowError> {
        let mut runs = Vec::new();
        for (agent, agent_dir) in self.subdirectories(&self.dir)? {
            for (run, _) in self.subdirectories(&agent_dir)? {
                // (A run whose checkpoints were all deleted leaves its directory behind.)
                if !self.sequences(&agent, &run)?.is_empty() {
                    runs.push(super::StoredRun::new(agent.clone(), run));
                }
            }
        }
        runs.sort();
        Ok(runs)
    }

    fn sequences(&self, agent: &str, run: &str) -> Result<Vec<u64>, FlowError> {
        let dir = self.run_dir(agent, run);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(self.failed(&format!("listing {}", dir.display()), &error)),
        };
        let mut sequences = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| self.failed(&format!("listing {}", dir.display()), &e))?;
            let name = entry.file_name();
            // Temporary files start with a dot; anything else not ours is ignored.
            if let Some(sequence) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|n| n.len() == 20)
                .and_then(|n| n.parse::<u64>().ok())
            {
                sequences.push(sequence);
            }
        }
        sequences.sort_unstable();
        Ok(sequences)
    }

    fn load(&self, agent: &str, run: &str, sequence: u64) -> Result<Option<Checkpoint>, FlowError> {
        self.read(agent, run, sequence)
    }

    fn post_answer(&self, agent: &str, run: &str, answer: &PostedAnswer) -> Result<(), FlowError> {
        AnswerInbox::for_file_store(&self.dir).post(agent, run, answer)
    }

    fn posted_answers(&self, agent: &str, run: &str) -> Result<Vec<PostedAnswer>, FlowError> {
        AnswerInbox::for_file_store(&self.dir).list(agent, run)
    }

    fn clear_answers(&self, agent: &str, run: &str) -> Result<(), FlowError> {
        AnswerInbox::for_file_store(&self.dir).clear(agent, run)
    }

    fn delete(&self, agent: &str, run: &str, sequence: u64) -> Result<(), FlowError> {
        let path = self.file(agent, run, sequence);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(self.failed(&format!("deleting {}", path.display()), &error)),
        }
    }
}

/// Writes `bytes` to `target` in `dir` whole or not at all: into `temporary` (a name no one
/// else uses), synced, renamed over `target`, and the directory synced (the rename is durable
/// once the directory is). A temporary file this call created is removed if it fails.
pub(crate) fn write_whole(
    dir: &Path,
    temporary: &Path,
    target: &Path,
    bytes: &[u8],
) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(temporary)?;
    let written = (|| {
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(temporary, target)?;
        File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(temporary);
    }
    written
}

/// A name as a safe file name: ASCII letters, digits, `-` and `_` stay; everything else
/// (including `.`, so `..` cannot escape) becomes `%XX` per byte.
pub(crate) fn escape(name: &str) -> String {
    let mut escaped = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            escaped.push(byte as char);
        } else {
            escaped.push_str(&format!("%{byte:02X}"));
        }
    }
    if escaped.is_empty() {
        escaped.push('%');
    }
    escaped
}

/// The name [`escape`] made `escaped` from; `None` for a name it would not have made.
pub(crate) fn unescape(escaped: &str) -> Option<String> {
    if escaped == "%" {
        return Some(String::new());
    }
    let bytes = escaped.as_bytes();
    let mut name = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = escaped.get(i + 1..i + 3)?;
                name.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            byte if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' => {
                name.push(byte);
                i += 1;
            }
            _ => return None,
        }
    }
    let name = String::from_utf8(name).ok()?;
    // Only the one spelling `escape` writes (upper-case hex, escapes where needed): another
    // (`%2a`, `%41`) is a directory this store did not make, not a second copy of a run.
    (escape(&name) == escaped).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::{escape, unescape};

    #[test]
    fn names_cannot_escape_the_directory() {
        assert_eq!(escape("nightly-2026_11"), "nightly-2026_11");
        assert_eq!(escape("../etc"), "%2E%2E%2Fetc");
        assert_eq!(escape("a b"), "a%20b");
        assert_eq!(escape(""), "%");
    }

    #[test]
    fn escaped_names_read_back() {
        for name in ["nightly-2026_11", "../etc", "a b", "", "été/2026", "%41"] {
            assert_eq!(unescape(&escape(name)).as_deref(), Some(name), "{name}");
        }
        // Names this store did not write are not runs of it.
        for foreign in [".tmp", "a%2", "a%zz", "a.b", "%FF", "a%2a", "%+A", "%41"] {
            assert_eq!(unescape(foreign), None, "{foreign}");
        }
    }
}
