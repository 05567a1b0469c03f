//! Results folders (`--out` of `mcgrad run` and `mcgrad train`): how they are created or
//! replaced so that nothing of the user's is lost and nothing half-written is left.
//!
//! A run writes into a hidden staging folder beside the destination, `.NAME.partial-PID`,
//! then a marker file [`MARKER`] listing every file it wrote, and renames the staging folder
//! into place at the end (an earlier folder is first moved aside to `.NAME.old-PID`, then
//! removed). An existing `--out` is replaced only when it is provably an mcgrad output: its
//! marker lists every entry in it, and every entry is a plain file. An empty folder is taken
//! too; anything else is refused as bad input (exit 2), listing what is in the way. A
//! symbolic link is followed: the results replace the folder it points to, and the link
//! stays. Folders written before the marker existed (the committed `results/reference/` and
//! `results/train/`) carry a marker added by hand, so regenerating them works as before.
//!
//! On SIGINT, SIGTERM or SIGHUP the staging and moved-aside folders are removed before the
//! process dies of the signal (unix). Folders that a process left when it died otherwise
//! (`kill -9`, a crash, a power cut) are removed by the next run on the same `--out`, once
//! their process is gone (`/proc/PID` missing; where there is no `/proc`, they are left). A
//! moved-aside folder whose destination is missing (a run killed between its two renames)
//! is renamed back into place instead.
//!
//! Write errors inside the staging folder are failures while running (exit 1) and name the
//! file under the user's `--out`, never the hidden staging path.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// The marker file that makes a folder an mcgrad output: its first line is
/// [`MARKER_HEADER`], then the name of every file mcgrad wrote there, one per line.
pub const MARKER: &str = ".mcgrad-output";

/// The first line of a [`MARKER`] file.
pub const MARKER_HEADER: &str =
    "mcgrad output folder: the next run with this --out replaces it; the files it wrote:";

/// The names of the hidden folders beside a destination: staging (`partial`), moved aside
/// (`old`), and `tmp` (what `mcgrad train` called its staging folder before this module).
const HIDDEN_KINDS: [&str; 3] = ["partial", "old", "tmp"];

/// At most this many entries are named when refusing a folder.
const LISTED: usize = 12;

/// A results folder being written: the staging folder, and where it goes at the end.
/// Dropping it uncommitted removes the staging folder.
#[derive(Debug)]
pub struct OutDir {
    /// `--out` as the user gave it (error messages name this).
    shown: PathBuf,
    /// The folder to create or replace (`--out` with a symbolic link resolved).
    dest: PathBuf,
    /// The hidden folder being written.
    staging: PathBuf,
    committed: bool,
}

fn refuse(out: &Path, why: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("--out {}: {why}", out.display()))
}

/// The folder's name, if `path` ends with a plain name (not `/`, `.` or `..`).
fn folder_name(path: &Path) -> Option<String> {
    match path.components().next_back() {
        Some(Component::Normal(n)) => Some(n.to_string_lossy().into_owned()),
        _ => None,
    }
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// The names the marker in `dir` lists, if `dir` has a marker.
fn marker_list(dir: &Path) -> Option<BTreeSet<String>> {
    let path = dir.join(MARKER);
    let meta = std::fs::symlink_metadata(&path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let mut lines = text.lines();
    if lines.next()? != MARKER_HEADER {
        return None;
    }
    Some(
        lines
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
    )
}

/// The entries of folder `dir` that are in the way of replacing it (sorted; folders end with
/// `/`), and whether it has a marker at all.
fn in_the_way(dir: &Path) -> std::io::Result<(Vec<String>, bool)> {
    let listed = marker_list(dir);
    let mut foreign = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == MARKER && listed.is_some() {
            continue;
        }
        let file_type = entry.file_type()?;
        let ours = file_type.is_file() && listed.as_ref().is_some_and(|l| l.contains(&name));
        if !ours {
            foreign.push(if file_type.is_dir() {
                format!("{name}/")
            } else {
                name
            });
        }
    }
    foreign.sort();
    Ok((foreign, listed.is_some()))
}

/// Checks that `out` can take results: absent, an empty folder, an earlier mcgrad output, or
/// a symbolic link to one of these. Returns the folder that will be created or replaced.
/// Nothing is written.
///
/// # Errors
/// [`Error::InvalidArgument`] if `out` names no folder (`/`, `.`, `..`), is a file, is a
/// dangling link, or holds anything that mcgrad did not write (the message lists it);
/// [`Error::Write`] if it cannot be read.
pub fn check(out: &Path) -> Result<PathBuf> {
    if folder_name(out).is_none() {
        return Err(refuse(out, "must name a folder"));
    }
    let unreadable = |source| Error::Write {
        path: out.to_owned(),
        source,
    };
    let dest = match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out.to_owned()),
        Err(e) => return Err(unreadable(e)),
        Ok(m) if m.file_type().is_symlink() => {
            let target = std::fs::canonicalize(out).map_err(|e| {
                let to = std::fs::read_link(out).unwrap_or_default();
                refuse(
                    out,
                    format!(
                        "a symbolic link to {}, which cannot be followed ({e}); create that folder or remove the link",
                        to.display()
                    ),
                )
            })?;
            if folder_name(&target).is_none() {
                return Err(refuse(
                    out,
                    format!(
                        "a symbolic link to {}, which is not a folder to replace",
                        target.display()
                    ),
                ));
            }
            target
        }
        Ok(_) => out.to_owned(),
    };
    if !dest.is_dir() {
        return Err(refuse(out, "exists and is not a folder"));
    }
    let (foreign, marked) = in_the_way(&dest).map_err(unreadable)?;
    if foreign.is_empty() {
        return Ok(dest);
    }
    let mut names = foreign[..foreign.len().min(LISTED)].join(", ");
    if foreign.len() > LISTED {
        names.push_str(&format!(" and {} more", foreign.len() - LISTED));
    }
    Err(refuse(
        out,
        if marked {
            format!(
                "holds what mcgrad did not write (not listed in its {MARKER}), in the way: {names}; \
                 move them elsewhere or choose another --out"
            )
        } else {
            format!(
                "exists and is not an mcgrad output folder (no {MARKER} marker), in the way: {names}; \
                 choose another --out or remove the folder"
            )
        },
    ))
}

impl OutDir {
    /// Checks `out` (see [`check`]), removes what dead runs left beside it, and creates the
    /// staging folder (and `out`'s parent folders if missing), which proves the place
    /// writable.
    ///
    /// # Errors
    /// As [`check`]; [`Error::Write`] if the staging folder cannot be created.
    pub fn create(out: &Path) -> Result<Self> {
        let dest = check(out)?;
        let name = folder_name(&dest).unwrap_or_default();
        let parent = parent_of(&dest);
        let unwritable = |source| Error::Write {
            path: out.to_owned(),
            source,
        };
        std::fs::create_dir_all(&parent).map_err(unwritable)?;
        remove_stale(&parent, &name, &dest);
        let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if std::fs::symlink_metadata(&staging).is_ok() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        cleanup::register(&staging);
        if let Err(e) = std::fs::create_dir(&staging) {
            cleanup::deregister(&staging);
            return Err(unwritable(e));
        }
        Ok(Self {
            shown: out.to_owned(),
            dest,
            staging,
            committed: false,
        })
    }

    /// The folder to write into (the hidden staging folder).
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// `name` under `--out` as the user gave it, for messages.
    pub fn shown(&self, name: impl AsRef<Path>) -> PathBuf {
        self.shown.join(name)
    }

    /// Writes the file `name` into the staging folder and returns `name`.
    ///
    /// # Errors
    /// [`Error::Output`] naming the file under `--out`.
    pub fn write(&self, name: &str, contents: &[u8]) -> Result<PathBuf> {
        let written = match crate::faults::write_failure(name) {
            Some(e) => Err(e),
            None => std::fs::write(self.staging.join(name), contents),
        };
        written.map_err(|source| Error::Output {
            path: self.shown(name),
            source,
        })?;
        Ok(PathBuf::from(name))
    }

    /// Runs `write` on the staging folder, and reports its failures as failures while running
    /// that name files under `--out` rather than under the staging folder.
    ///
    /// # Errors
    /// Those of `write`, with [`Error::Write`] turned into [`Error::Output`].
    pub fn fill<T>(&self, write: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
        write(&self.staging).map_err(|e| self.relocate(e))
    }

    fn relocate(&self, err: Error) -> Error {
        let staged = self.staging.display().to_string();
        let shown = self.shown.display().to_string();
        match err {
            Error::Write { path, source } | Error::Output { path, source } => Error::Output {
                path: match path.strip_prefix(&self.staging) {
                    Ok(rel) => self.shown(rel),
                    Err(_) => path,
                },
                source,
            },
            Error::Plot { name, message } => Error::Plot {
                name,
                message: message.replace(&staged, &shown),
            },
            other => other,
        }
    }

    /// Writes the marker, then moves the staging folder into place, replacing an earlier
    /// output. Returns the names of the files written (the marker not included).
    ///
    /// # Errors
    /// [`Error::Output`] if the marker cannot be written or a rename fails (the earlier
    /// folder is put back if it can be); [`Error::InvalidArgument`] if, while the run went
    /// on, something that mcgrad did not write appeared in the destination.
    pub fn commit(mut self) -> Result<Vec<PathBuf>> {
        let output = |source| Error::Output {
            path: self.shown.clone(),
            source,
        };
        let mut names: Vec<String> = std::fs::read_dir(&self.staging)
            .and_then(|d| {
                d.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .map_err(output)?;
        names.retain(|n| n != MARKER);
        names.sort();
        let mut marker = format!("{MARKER_HEADER}\n");
        for n in &names {
            marker.push_str(n);
            marker.push('\n');
        }
        self.write(MARKER, marker.as_bytes())?;

        // A signal now waits until the folders are where they belong.
        let mut pending = cleanup::lock();
        if std::fs::symlink_metadata(&self.dest).is_ok() {
            check(&self.dest).map_err(|_| {
                refuse(
                    &self.shown,
                    "something that mcgrad did not write appeared there during the run; the results were not written",
                )
            })?;
            let old = parent_of(&self.dest).join(format!(
                ".{}.old-{}",
                folder_name(&self.dest).unwrap_or_default(),
                std::process::id()
            ));
            pending.push(old.clone());
            std::fs::rename(&self.dest, &old).map_err(output)?;
            if let Err(e) = std::fs::rename(&self.staging, &self.dest) {
                pending.retain(|p| p != &old);
                let _ = std::fs::rename(&old, &self.dest);
                return Err(output(e));
            }
            let _ = std::fs::remove_dir_all(&old);
            pending.retain(|p| p != &old);
        } else {
            std::fs::rename(&self.staging, &self.dest).map_err(output)?;
        }
        pending.retain(|p| p != &self.staging);
        self.committed = true;
        Ok(names.into_iter().map(PathBuf::from).collect())
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
            cleanup::deregister(&self.staging);
        }
    }
}

/// Removes the hidden folders `.NAME.KIND-PID` beside `dest` whose process is gone; puts a
/// moved-aside folder back where `dest` is missing.
fn remove_stale(parent: &Path, name: &str, dest: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name
            .to_str()
            .and_then(|f| f.strip_prefix('.'))
            .and_then(|f| f.strip_prefix(name))
            .and_then(|f| f.strip_prefix('.'))
        else {
            continue;
        };
        let Some((kind, pid)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let alive = pid != me && Path::new(&format!("/proc/{pid}")).exists();
        if !HIDDEN_KINDS.contains(&kind) || alive || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        if kind == "old" && std::fs::symlink_metadata(dest).is_err() {
            let _ = std::fs::rename(&path, dest);
        } else {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// The folders to remove if a signal ends the process, and the signal handling that does it.
mod cleanup {
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, MutexGuard};

    static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    /// The pending folders; holding the guard delays a signal's cleanup (and so the exit).
    pub(super) fn lock() -> MutexGuard<'static, Vec<PathBuf>> {
        PENDING.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes `path` if a signal ends the process (installs the handlers the first time).
    pub(super) fn register(path: &Path) {
        #[cfg(unix)]
        signals::install();
        lock().push(path.to_owned());
    }

    pub(super) fn deregister(path: &Path) {
        lock().retain(|p| p != path);
    }

    /// Removes every pending folder, keeping the lock so that no commit starts after.
    #[cfg_attr(not(unix), allow(dead_code))]
    fn remove_pending() -> MutexGuard<'static, Vec<PathBuf>> {
        let pending = lock();
        for path in pending.iter() {
            // The run may still be writing into it: retry a few times.
            for _ in 0..10 {
                match std::fs::remove_dir_all(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    _ => break,
                }
            }
        }
        pending
    }

    /// SIGINT, SIGTERM and SIGHUP: the handler only writes the signal's number to a pipe
    /// (async-signal-safe); a thread reading the pipe removes the pending folders, restores
    /// the default action and raises the signal again, so the process still dies of it (the
    /// exit status a shell or a supervisor expects). Signals that were ignored when the
    /// handlers were installed (`nohup`) stay ignored.
    #[cfg(unix)]
    mod signals {
        use std::sync::atomic::{AtomicI32, Ordering};
        use std::sync::Once;

        const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
        static WAKE: AtomicI32 = AtomicI32::new(-1);

        extern "C" fn on_signal(sig: libc::c_int) {
            let fd = WAKE.load(Ordering::Relaxed);
            let byte = sig as u8;
            // SAFETY: write(2) is async-signal-safe; `byte` outlives the call.
            unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
        }

        pub(super) fn install() {
            static ONCE: Once = Once::new();
            ONCE.call_once(|| {
                let mut fds = [-1; 2];
                // SAFETY: `fds` has room for the two descriptors pipe(2) returns.
                if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
                    return;
                }
                for fd in fds {
                    // SAFETY: fcntl on descriptors this function owns.
                    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
                }
                let read_fd = fds[0];
                let watcher = std::thread::Builder::new()
                    .name("mcgrad-signals".into())
                    .spawn(move || watch(read_fd));
                if watcher.is_err() {
                    return;
                }
                WAKE.store(fds[1], Ordering::Relaxed);
                for sig in SIGNALS {
                    // SAFETY: sigaction(2) with a zeroed (then filled) struct; the handler
                    // only calls write(2).
                    unsafe {
                        let mut old: libc::sigaction = std::mem::zeroed();
                        if libc::sigaction(sig, std::ptr::null(), &mut old) != 0
                            || old.sa_sigaction == libc::SIG_IGN
                        {
                            continue;
                        }
                        let mut action: libc::sigaction = std::mem::zeroed();
                        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                        action.sa_flags = libc::SA_RESTART;
                        libc::sigemptyset(&mut action.sa_mask);
                        libc::sigaction(sig, &action, std::ptr::null_mut());
                    }
                }
            });
        }

        fn watch(read_fd: libc::c_int) {
            let mut byte = 0u8;
            loop {
                // SAFETY: reads one byte into `byte`.
                let n = unsafe { libc::read(read_fd, (&mut byte as *mut u8).cast(), 1) };
                if n == 1 {
                    break;
                }
                if n == 0
                    || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                {
                    return;
                }
            }
            let sig = libc::c_int::from(byte);
            let _pending = super::remove_pending();
            // SAFETY: restores the default action and raises the signal again: the process
            // ends as the signal's default would have ended it.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                libc::raise(sig);
            }
            std::process::exit(128 + sig);
        }
    }
}
