//! What asks the daemon to reload its rules: SIGHUP always, and with `run --watch-rules` a
//! change in the rules' directories, once it has settled.
//!
//! A Kubernetes ConfigMap mounted as a directory changes by a symlink swap: the kubelet writes
//! the new files into a fresh `..<timestamp>` directory, points `..data_tmp` at it and renames
//! that over `..data`, which every `name.toml` links through. So the watch is on the directory
//! (creations, renames, deletions, finished writes), never on the files, whose inodes are not
//! the ones that change. An editor saving a rules file in place or by rename is caught the same
//! way. The events of one update come in a burst: the reload waits for [`SETTLE`] of quiet so
//! it reads the finished update once.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use futures::StreamExt as _;
use inotify::{EventStream, Inotify, WatchMask};
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    time::Instant,
};

/// Quiet time after the last change before a reload: a ConfigMap swap or an editor's save is
/// over well within it.
pub const SETTLE: Duration = Duration::from_millis(300);

/// What a directory is watched for: whatever can change which rules files it holds or what
/// they say.
const CHANGES: WatchMask = WatchMask::CLOSE_WRITE
    .union(WatchMask::CREATE)
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO);

/// SIGHUP, and (if asked for) settled changes of the rules on disk.
pub struct ReloadRequests {
    hangup: Signal,
    watch: Option<RulesWatch>,
}

impl ReloadRequests {
    /// Listens for SIGHUP, and with `watch` for changes in the directories of `rules` (a
    /// directory itself, or the one holding a file).
    pub fn new(rules: &[PathBuf], watch: bool) -> anyhow::Result<Self> {
        let watch = if watch {
            let watch = RulesWatch::new(rules)?;
            tracing::info!(
                "watching {} for changes to the rules",
                joined(&watch.directories)
            );
            Some(watch)
        } else {
            None
        };
        Ok(Self {
            hangup: signal(SignalKind::hangup())?,
            watch,
        })
    }

    /// Waits for the next request. Cancel-safe: a request that arrives while the caller is
    /// busy elsewhere is kept for the next call.
    pub async fn recv(&mut self) -> Option<()> {
        let Some(watch) = &mut self.watch else {
            return self.hangup.recv().await;
        };
        tokio::select! {
            hangup = self.hangup.recv() => hangup,
            settled = watch.settled() => {
                if let Err(err) = settled {
                    tracing::warn!("the rules are no longer watched (SIGHUP still reloads): {err:#}");
                    self.watch = None;
                }
                Some(())
            }
        }
    }
}

/// Changes in the rules' directories, settled.
struct RulesWatch {
    events: EventStream<Vec<u8>>,
    directories: Vec<PathBuf>,
    /// When the last burst of changes counts as over, if one is under way.
    settles_at: Option<Instant>,
}

impl RulesWatch {
    fn new(rules: &[PathBuf]) -> anyhow::Result<Self> {
        let inotify = Inotify::init().context("cannot start inotify")?;
        let mut directories: Vec<PathBuf> = rules.iter().map(|path| directory_of(path)).collect();
        directories.sort();
        directories.dedup();
        for directory in &directories {
            inotify
                .watches()
                .add(directory, CHANGES)
                .with_context(|| format!("cannot watch {}", directory.display()))?;
        }
        let events = inotify
            .into_event_stream(vec![0; 4096])
            .context("cannot read inotify events")?;
        Ok(Self {
            events,
            directories,
            settles_at: None,
        })
    }

    /// Returns once changes came and then none for [`SETTLE`]. Its state lives in `self`, so
    /// dropping the future loses nothing.
    async fn settled(&mut self) -> anyhow::Result<()> {
        loop {
            let settles_at = self.settles_at;
            tokio::select! {
                event = self.events.next() => match event {
                    // A queue overflow is a change too: something happened that was not seen.
                    Some(Ok(_)) => self.settles_at = Some(Instant::now() + SETTLE),
                    Some(Err(err)) => return Err(err).context("reading inotify events"),
                    None => anyhow::bail!("the inotify stream ended"),
                },
                () = tokio::time::sleep_until(settles_at.unwrap_or_else(Instant::now)),
                    if settles_at.is_some() =>
                {
                    self.settles_at = None;
                    return Ok(());
                }
            }
        }
    }
}

/// The directory whose entries decide what `path` loads: itself, or the one holding a file.
fn directory_of(path: &Path) -> PathBuf {
    if path.is_dir() {
        return path.to_path_buf();
    }
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn joined(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A scratch directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("rules-watch-{name}-{}", std::process::id()));
            let _stale = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("scratch directory");
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _gone = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Whether a request comes within `within`.
    async fn requested(requests: &mut ReloadRequests, within: Duration) -> bool {
        tokio::time::timeout(within, requests.recv()).await.is_ok()
    }

    #[tokio::test]
    async fn a_burst_of_writes_asks_for_one_reload_once_settled() {
        let scratch = Scratch::new("burst");
        let mut requests = ReloadRequests::new(std::slice::from_ref(&scratch.0), true).unwrap();
        assert!(!requested(&mut requests, Duration::from_millis(100)).await);
        for i in 0..5 {
            std::fs::write(scratch.0.join("a.toml"), format!("# {i}\n")).unwrap();
        }
        let started = std::time::Instant::now();
        assert!(requested(&mut requests, Duration::from_secs(5)).await);
        assert!(started.elapsed() + Duration::from_millis(50) >= SETTLE);
        assert!(
            !requested(&mut requests, SETTLE * 2).await,
            "one burst, one reload"
        );
    }

    #[tokio::test]
    async fn a_configmap_style_symlink_swap_asks_for_a_reload() {
        let scratch = Scratch::new("configmap");
        let dir = &scratch.0;
        // What the kubelet lays out: ..data -> ..v1, a.toml -> ..data/a.toml.
        std::fs::create_dir(dir.join("..v1")).unwrap();
        std::fs::write(dir.join("..v1/a.toml"), "# v1\n").unwrap();
        symlink("..v1", dir.join("..data")).unwrap();
        symlink("..data/a.toml", dir.join("a.toml")).unwrap();
        let mut requests = ReloadRequests::new(std::slice::from_ref(dir), true).unwrap();

        // An update: a new timestamped directory, swapped in by renaming a symlink over ..data.
        std::fs::create_dir(dir.join("..v2")).unwrap();
        std::fs::write(dir.join("..v2/a.toml"), "# v2\n").unwrap();
        symlink("..v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        std::fs::remove_dir_all(dir.join("..v1")).unwrap();

        assert!(requested(&mut requests, Duration::from_secs(5)).await);
        assert_eq!(
            std::fs::read_to_string(dir.join("a.toml")).unwrap(),
            "# v2\n"
        );
    }

    #[tokio::test]
    async fn without_the_flag_only_sighup_asks() {
        let scratch = Scratch::new("off");
        let mut requests = ReloadRequests::new(std::slice::from_ref(&scratch.0), false).unwrap();
        std::fs::write(scratch.0.join("a.toml"), "# changed\n").unwrap();
        assert!(!requested(&mut requests, SETTLE * 2).await);
    }

    #[test]
    fn a_rules_file_is_watched_through_its_directory() {
        assert_eq!(
            directory_of(Path::new("/etc/egress-filter/rules/apple.toml")),
            Path::new("/etc/egress-filter/rules")
        );
        assert_eq!(directory_of(Path::new("apple.toml")), Path::new("."));
        let here = std::env::temp_dir();
        assert_eq!(directory_of(&here), here);
    }
}
