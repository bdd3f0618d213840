//! Child processes for tests: output to a log file, readiness waits with the
//! log tail in the error, and a kill of the child's whole process group on
//! drop. Children also get `PR_SET_PDEATHSIG(SIGKILL)`, so they die with the
//! thread that spawned them even if the test process is killed.

use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running child process that is killed (with its process group) on drop.
pub struct Proc {
    name: String,
    child: Child,
    log_path: PathBuf,
    extra_logs: Vec<PathBuf>,
    killed: bool,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr going to `<dir>/<name>.stdout.log`,
    /// in its own process group.
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Result<Proc> {
        let log_path = dir.join(format!("{name}.stdout.log"));
        let out = File::create(&log_path)
            .with_context(|| format!("create log file {}", log_path.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {name}: {:?}", cmd))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log_path,
            extra_logs: Vec::new(),
            killed: false,
        })
    }

    /// Also show this file (e.g. a `--log-path` log) in [`Proc::log_tail`].
    pub fn add_log(&mut self, path: PathBuf) {
        self.extra_logs.push(path);
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the stdout/stderr log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole stdout/stderr log.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the stdout/stderr log and of every added log.
    pub fn log_tail(&self, n: usize) -> String {
        let mut out = String::new();
        for p in std::iter::once(&self.log_path).chain(self.extra_logs.iter()) {
            let text = std::fs::read(p)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_else(|e| format!("<cannot read: {e}>"));
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(n);
            out.push_str(&format!(
                "----- {} ({}), last {} lines -----\n",
                self.name,
                p.display(),
                lines.len() - start
            ));
            for l in &lines[start..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// `Some(status)` when the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn fail(&mut self, what: String) -> anyhow::Error {
        let state = match self.exited() {
            Some(s) => format!("process exited: {s}"),
            None => "process still running".to_string(),
        };
        anyhow!("{}: {what} ({state})\n{}", self.name, self.log_tail(40))
    }

    /// Polls `check` every 20 ms until it returns `Ok(Some(_))`, the process
    /// exits, or `timeout` passes; errors carry the log tail.
    pub async fn wait_until<T, F, Fut>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check().await {
                return Ok(v);
            }
            if self.exited().is_some() {
                return Err(self.fail(format!("exited while waiting for {what}")));
            }
            if Instant::now() >= deadline {
                return Err(self.fail(format!("timed out after {timeout:?} waiting for {what}")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `addr` accepts TCP connections.
    pub async fn wait_for_port(&mut self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        self.wait_until(
            &format!("{addr} to accept connections"),
            timeout,
            || async move { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) },
        )
        .await
    }

    /// Waits until `GET path` on `addr` answers 200.
    pub async fn wait_for_http_ok(
        &mut self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> Result<()> {
        let what = format!("GET http://{addr}{path} to return 200");
        self.wait_until(&what, timeout, || async move {
            let req = crate::raw::RawRequest::new("GET", path);
            match crate::raw::send(addr, &req, Duration::from_secs(2)).await {
                Ok(r) if r.status == 200 => Some(()),
                _ => None,
            }
        })
        .await
    }

    /// Waits until a line of the stdout/stderr log starts with `prefix`;
    /// returns the rest of that line.
    pub async fn wait_for_log_line(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let path = self.log_path.clone();
        self.wait_until(
            &format!("a log line starting with {prefix:?}"),
            timeout,
            || {
                let path = path.clone();
                async move {
                    let text = std::fs::read(&path).ok()?;
                    let text = String::from_utf8_lossy(&text);
                    text.lines()
                        .find_map(|l| l.strip_prefix(prefix))
                        .map(|rest| rest.trim().to_string())
                }
            },
        )
        .await
    }

    /// Kills the process group with SIGKILL and reaps the child.
    pub fn kill(&mut self) {
        if self.killed {
            return;
        }
        self.killed = true;
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: plain syscall; the group id is the child's pid (process_group(0)).
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(60));
        }
        self.kill();
    }
}

/// A port on 127.0.0.1 that was free a moment ago (bind to port 0, release).
/// Prefer letting servers bind port 0 themselves where possible.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A 127.0.0.1 port held by a bound but non-listening socket: connections to
/// it are refused, and no one else can take it while this value lives.
pub struct ClosedPort {
    fd: i32,
    port: u16,
}

impl ClosedPort {
    /// The port number.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for ClosedPort {
    fn drop(&mut self) {
        // SAFETY: fd is owned by this value.
        unsafe {
            libc::close(self.fd);
        }
    }
}

/// Reserves a port that refuses connections (see [`ClosedPort`]).
pub fn closed_port() -> Result<ClosedPort> {
    // SAFETY: plain socket syscalls on a locally owned fd and stack structs.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        addr.sin_port = 0;
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len) != 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            bail!("bind: {e}");
        }
        let mut got: libc::sockaddr_in = std::mem::zeroed();
        let mut got_len = len;
        if libc::getsockname(fd, &mut got as *mut _ as *mut libc::sockaddr, &mut got_len) != 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            bail!("getsockname: {e}");
        }
        Ok(ClosedPort {
            fd,
            port: u16::from_be(got.sin_port),
        })
    }
}

/// A fresh temp dir for one test's processes (kept when `TESTBED_KEEP_DIRS`
/// is set, and its path printed).
pub fn test_dir(prefix: &str) -> Result<tempfile::TempDir> {
    let mut dir = tempfile::Builder::new()
        .prefix(&format!("testbed-{prefix}-"))
        .tempdir()?;
    if std::env::var_os("TESTBED_KEEP_DIRS").is_some() {
        dir.disable_cleanup(true);
        eprintln!("testbed: keeping {}", dir.path().display());
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_port_refuses() {
        let p = closed_port().unwrap();
        let err = std::net::TcpStream::connect(p.addr()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}
