//! What the DNS forwarder learned, on disk: a snapshot and a journal of the changes since.
//!
//! A client that got an answer holds its addresses for the answer's TTL, so a restarted daemon
//! must take back everything learned, up to the last answer before a `kill -9`. The journal gets
//! each answer's entries before the answer goes to the client: one appended line per entry, one
//! `write` per answer, so the cost follows what changed, not the table's size. The page cache
//! keeps what was written across a crash of the process; `/run` and the pinned maps do not
//! survive a reboot either, so nothing is synced to the disk.
//!
//! When the journal outgrows the snapshot, the whole table is written as the new snapshot (to a
//! temporary file, renamed over the old one) under the next generation number, and the journal
//! starts again. Journal lines carry the generation they extend: lines of an older one, left by
//! a crash between the rename and the truncation, are skipped when read.
//!
//! ```text
//!  <run dir>/<pin path>.learned.json    {"generation": 7, "written_at": …, "learned": [view, …]}
//!  <run dir>/<pin path>.learned.jsonl   {"generation": 7, "at": …, "learned": view}
//!                                       {"generation": 7, "at": …, "forgot": {address, service}}
//! ```

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::{
    dns::{learned::LearnedKey, LearnedView},
    state::State,
};

/// The journal may grow to this before it is folded into the snapshot, however small that is.
const JOURNAL_MIN_FOLD: u64 = 256 * 1024;

#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    generation: u64,
    /// Seconds since the epoch: what the views' ages and expiries are relative to.
    written_at: u64,
    learned: Vec<LearnedView>,
}

/// One journal line.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    generation: u64,
    /// Seconds since the epoch when it was written.
    at: u64,
    #[serde(flatten)]
    change: Change,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Change {
    /// Learned or renewed: the entry as it is now.
    Learned(LearnedView),
    /// Pushed out to make room for others.
    Forgot { address: IpAddr, service: String },
}

/// The daemon's writer of the snapshot and the journal.
#[derive(Debug)]
pub struct LearnedStore {
    snapshot: PathBuf,
    journal_path: PathBuf,
    journal: File,
    generation: u64,
    journal_bytes: u64,
    snapshot_bytes: u64,
}

impl LearnedStore {
    /// Starts a new generation with `views` (what the daemon took back) as its snapshot, beside
    /// the state file `state_file` (`PinDir::state_file`).
    pub fn create(state_file: &Path, views: Vec<LearnedView>) -> anyhow::Result<Self> {
        let (snapshot, journal_path) = paths(state_file);
        let generation = read_snapshot(&snapshot)
            .ok()
            .flatten()
            .map_or(0, |s| s.generation + 1);
        let snapshot_bytes = write_snapshot(&snapshot, generation, views)?;
        Ok(Self {
            journal: open_journal(&journal_path)?,
            snapshot,
            journal_path,
            generation,
            journal_bytes: 0,
            snapshot_bytes,
        })
    }

    /// Appends what one answer changed: the entries it learned or renewed, as they are now, and
    /// those it pushed out. One write, before the answer goes to the client.
    pub fn record(
        &mut self,
        learned: Vec<LearnedView>,
        forgot: &[LearnedKey],
    ) -> anyhow::Result<()> {
        if learned.is_empty() && forgot.is_empty() {
            return Ok(());
        }
        let at = State::now_secs();
        let changes = learned
            .into_iter()
            .map(Change::Learned)
            .chain(forgot.iter().map(|(address, service)| Change::Forgot {
                address: *address,
                service: service.clone(),
            }));
        let mut lines = Vec::new();
        for change in changes {
            serde_json::to_writer(
                &mut lines,
                &Record {
                    generation: self.generation,
                    at,
                    change,
                },
            )?;
            lines.push(b'\n');
        }
        self.journal
            .write_all(&lines)
            .with_context(|| format!("cannot append to {}", self.journal_path.display()))?;
        self.journal_bytes += lines.len() as u64;
        Ok(())
    }

    /// Whether the journal has grown enough to fold it into a new snapshot.
    #[must_use]
    pub fn fold_due(&self) -> bool {
        self.journal_bytes > JOURNAL_MIN_FOLD.max(self.snapshot_bytes)
    }

    /// Writes `views` (the whole table now) as the next generation's snapshot and starts its
    /// journal empty.
    pub fn fold(&mut self, views: Vec<LearnedView>) -> anyhow::Result<()> {
        let generation = self.generation + 1;
        self.snapshot_bytes = write_snapshot(&self.snapshot, generation, views)?;
        self.generation = generation;
        self.journal = File::create(&self.journal_path)
            .with_context(|| format!("cannot truncate {}", self.journal_path.display()))?;
        self.journal_bytes = 0;
        Ok(())
    }
}

/// What was learned, as of now: the snapshot with the journal of its generation replayed,
/// ages and expiries moved on, expired entries left out. `None` when no snapshot exists.
pub fn load(state_file: &Path) -> anyhow::Result<Option<Vec<LearnedView>>> {
    let (snapshot, journal) = paths(state_file);
    let Some(base) = read_snapshot(&snapshot)? else {
        return Ok(None);
    };
    let now = State::now_secs();
    let mut entries: BTreeMap<LearnedKey, (u64, LearnedView)> = base
        .learned
        .into_iter()
        .map(|view| {
            (
                (view.address, view.service.clone()),
                (base.written_at, view),
            )
        })
        .collect();
    let text = match std::fs::read_to_string(&journal) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", journal.display())),
    };
    for (number, line) in text.lines().enumerate() {
        // A line cut short by a crash mid-write can only be the last one.
        let Ok(record) = serde_json::from_str::<Record>(line) else {
            tracing::warn!(
                "{}:{}: not a journal line, skipped",
                journal.display(),
                number + 1
            );
            continue;
        };
        if record.generation != base.generation {
            continue;
        }
        match record.change {
            Change::Learned(view) => {
                entries.insert((view.address, view.service.clone()), (record.at, view));
            }
            Change::Forgot { address, service } => {
                entries.remove(&(address, service));
            }
        }
    }
    let mut views: Vec<(u64, LearnedView)> = entries.into_values().collect();
    // Oldest first, as the table lists them.
    views.sort_by_key(|(at, view)| at.saturating_sub(view.age_secs));
    Ok(Some(
        views
            .into_iter()
            .filter_map(|(at, mut view)| {
                let elapsed = now.saturating_sub(at);
                view.expires_in_secs = view.expires_in_secs.checked_sub(elapsed)?;
                view.age_secs += elapsed;
                (view.expires_in_secs > 0).then_some(view)
            })
            .collect(),
    ))
}

/// Removes the snapshot and the journal (the filter is being removed).
pub fn remove(state_file: &Path) -> anyhow::Result<()> {
    let (snapshot, journal) = paths(state_file);
    for file in [snapshot, journal] {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", file.display())),
        }
    }
    Ok(())
}

fn paths(state: &Path) -> (PathBuf, PathBuf) {
    (
        state.with_extension("learned.json"),
        state.with_extension("learned.jsonl"),
    )
}

fn read_snapshot(path: &Path) -> anyhow::Result<Option<Snapshot>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is damaged", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes a snapshot atomically; returns its size.
fn write_snapshot(path: &Path, generation: u64, learned: Vec<LearnedView>) -> anyhow::Result<u64> {
    let bytes = serde_json::to_vec(&Snapshot {
        generation,
        written_at: State::now_secs(),
        learned,
    })?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(bytes.len() as u64)
}

fn open_journal(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(address: &str, service: &str, expires_in_secs: u64) -> LearnedView {
        LearnedView {
            address: address.parse().expect("test address"),
            service: service.into(),
            name: format!("{service}.example.test"),
            question: format!("{service}.example.test"),
            age_secs: 0,
            expires_in_secs,
        }
    }

    /// A state-file path in a directory of its own, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(test: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("ef-learned-{test}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("scratch dir");
            Self(dir)
        }

        fn state(&self) -> PathBuf {
            self.0.join("filter.json")
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn addresses(views: &[LearnedView]) -> Vec<String> {
        views
            .iter()
            .map(|v| format!("{} {}", v.address, v.service))
            .collect()
    }

    #[test]
    fn what_was_recorded_is_taken_back_with_what_was_forgotten_left_out() {
        let dir = Scratch::new("taken-back");
        let state = dir.state();
        assert!(load(&state).expect("readable").is_none(), "nothing yet");
        let mut store =
            LearnedStore::create(&state, vec![view("192.0.2.1", "a", 600)]).expect("created");
        store
            .record(
                vec![view("192.0.2.2", "b", 600), view("192.0.2.1", "a", 900)],
                &[],
            )
            .expect("recorded");
        store
            .record(
                vec![view("192.0.2.3", "c", 600)],
                &[("192.0.2.2".parse().expect("address"), "b".into())],
            )
            .expect("recorded");
        // No snapshot was written since the first: the journal alone carries the rest, as
        // after a kill -9.
        let back = load(&state).expect("readable").expect("a snapshot");
        assert_eq!(addresses(&back), ["192.0.2.1 a", "192.0.2.3 c"]);
        assert!(
            back[0].expires_in_secs > 600,
            "the renewal counts: {back:?}"
        );
    }

    #[test]
    fn a_fold_starts_a_generation_and_older_lines_are_ignored() {
        let dir = Scratch::new("generation");
        let state = dir.state();
        let mut store = LearnedStore::create(&state, Vec::new()).expect("created");
        store
            .record(vec![view("192.0.2.1", "a", 600)], &[])
            .expect("recorded");
        assert!(!store.fold_due(), "a short journal is not folded");
        let journal_before = std::fs::read(paths(&state).1).expect("journal");
        store
            .fold(vec![view("192.0.2.7", "z", 600)])
            .expect("folded");
        // A crash between the snapshot's rename and the truncation leaves the old lines: they
        // belong to the previous generation and must not come back.
        std::fs::write(paths(&state).1, journal_before).expect("old journal put back");
        let back = load(&state).expect("readable").expect("a snapshot");
        assert_eq!(addresses(&back), ["192.0.2.7 z"]);
        // A new daemon takes over with the next generation.
        drop(store);
        let _next = LearnedStore::create(&state, back).expect("created again");
        let back = load(&state).expect("readable").expect("a snapshot");
        assert_eq!(addresses(&back), ["192.0.2.7 z"]);
    }

    #[test]
    fn expired_entries_and_a_torn_last_line_are_left_out() {
        let dir = Scratch::new("torn");
        let state = dir.state();
        let mut store = LearnedStore::create(&state, Vec::new()).expect("created");
        store
            .record(
                vec![view("192.0.2.1", "a", 0), view("192.0.2.2", "b", 600)],
                &[],
            )
            .expect("recorded");
        let mut journal = OpenOptions::new()
            .append(true)
            .open(paths(&state).1)
            .expect("journal");
        journal
            .write_all(br#"{"generation":0,"at":1,"learned":{"addr"#)
            .expect("torn line");
        let back = load(&state).expect("readable").expect("a snapshot");
        assert_eq!(addresses(&back), ["192.0.2.2 b"]);
    }

    #[test]
    fn the_journal_is_folded_once_it_outgrows_the_snapshot() {
        let dir = Scratch::new("outgrows");
        let state = dir.state();
        let mut store = LearnedStore::create(&state, Vec::new()).expect("created");
        let mut answers = 0;
        while !store.fold_due() {
            store
                .record(vec![view("192.0.2.1", "a", 600)], &[])
                .expect("recorded");
            answers += 1;
            assert!(answers < 100_000, "never due");
        }
        // About 200 bytes a line: the fold comes after the minimum, not before.
        assert!(answers > 1000, "folded after {answers} answers");
        store
            .fold(vec![view("192.0.2.1", "a", 600)])
            .expect("folded");
        assert!(!store.fold_due());
        assert_eq!(
            std::fs::metadata(paths(&state).1).expect("journal").len(),
            0
        );
    }
}
