//! The guest agent client: sync with retries, exec with deadlines, file reads.
//!
//! Callers see [`Output`] and bytes, never QAPI structs. Each agent call has its
//! own deadline; a call that misses it poisons the client (a late answer would
//! otherwise be taken for the next command's), so later calls fail at once.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use qapi::futures::{QapiService, QgaStreamTokio};
use qapi::qga;
use tokio::io::WriteHalf;
use tokio::net::UnixStream;
use tokio::time::{sleep, timeout, Instant};

type Service = QapiService<QgaStreamTokio<WriteHalf<UnixStream>>>;

/// Errors talking to a guest agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent did not answer `guest-sync` before the boot deadline.
    #[error("the guest agent did not answer within {0:?}")]
    NoAnswer(Duration),
    /// An agent call missed its deadline; the guest is hung or overloaded.
    #[error("the guest agent stopped answering (`{0}` took longer than {1:?})")]
    Hung(String, Duration),
    /// The agent was poisoned by an earlier timeout.
    #[error("the guest agent is unusable after an earlier timeout")]
    Poisoned,
    /// The agent answered with an error.
    #[error("guest agent `{0}` failed: {1}")]
    Command(String, String),
    /// A guest command ran past its deadline and was killed.
    #[error("guest command `{0}` did not finish within {1:?}")]
    CommandTimeout(String, Duration),
}

/// What a guest command left behind.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Exit code (or 128 + signal when killed by a signal).
    pub code: i64,
    /// Captured standard output.
    pub stdout: Vec<u8>,
    /// Captured standard error.
    pub stderr: Vec<u8>,
}

impl Output {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == 0
    }
    /// stdout as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// stderr as text.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A connected, synchronised guest agent.
pub struct Agent {
    service: Service,
    reader: tokio::task::JoinHandle<()>,
    poisoned: AtomicBool,
    call_deadline: Duration,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The longest argument the guest's kernel passes to a program
/// (`MAX_ARG_STRLEN`, 32 pages), less a margin.
pub const LONGEST_ARGUMENT: usize = 128 * 1024 - 4096;

impl Agent {
    /// Connects and retries `guest-sync` until it answers or `deadline` passes.
    /// `alive` is polled between attempts; when it returns an error (QEMU
    /// exited) waiting stops at once with that error. Later, each agent round
    /// trip may take `call_deadline` (TCG guests can be very busy).
    pub async fn connect<E>(
        socket: &Path,
        deadline: Instant,
        call_deadline: Duration,
        mut alive: impl FnMut() -> Result<(), E>,
    ) -> Result<Result<Agent, AgentError>, E> {
        let started = Instant::now();
        let mut attempt: i32 = 0;
        loop {
            alive()?;
            if Instant::now() >= deadline {
                return Ok(Err(AgentError::NoAnswer(started.elapsed())));
            }
            attempt += 1;
            if let Ok(stream) = qapi::futures::QgaStreamTokio::open_uds(socket).await {
                let (service, reader) = stream.spawn_tokio();
                let sync_id = (std::process::id() as i32).wrapping_mul(1000).wrapping_add(attempt);
                if let Ok(Ok(())) = timeout(Duration::from_millis(700), service.guest_sync(sync_id)).await {
                    return Ok(Ok(Agent { service, reader, poisoned: AtomicBool::new(false), call_deadline }));
                }
                reader.abort();
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    async fn call<C>(&self, name: &str, command: C) -> Result<C::Ok, AgentError>
    where
        C: qapi::Command + qga::QgaCommand,
    {
        if self.poisoned.load(Ordering::Relaxed) {
            return Err(AgentError::Poisoned);
        }
        match timeout(self.call_deadline, self.service.execute(command)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(AgentError::Command(name.into(), e.to_string())),
            Err(_) => {
                self.poisoned.store(true, Ordering::Relaxed);
                Err(AgentError::Hung(name.into(), self.call_deadline))
            }
        }
    }

    /// Starts `argv` in the guest and returns its pid without waiting.
    pub async fn spawn(&self, argv: &[&str]) -> Result<i64, AgentError> {
        let exec = qga::guest_exec {
            path: argv[0].to_string(),
            arg: Some(argv[1..].iter().map(|s| s.to_string()).collect()),
            env: Some(vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()]),
            input_data: None,
            capture_output: Some(qga::GuestExecCaptureOutput::flag(true)),
        };
        Ok(self.call("guest-exec", exec).await?.pid)
    }

    /// Waits for a spawned command; kills it (and fails) after `limit`. Its
    /// status is asked 4 ms after it started, then less and less often (at
    /// most 20 ms apart): a short command under TCG takes 15-80 ms, and every
    /// millisecond waited past its end is a millisecond of every case.
    pub async fn wait(&self, pid: i64, what: &str, limit: Duration) -> Result<Output, AgentError> {
        let deadline = Instant::now() + limit;
        let mut pause = Duration::from_millis(4);
        loop {
            let status = self.call("guest-exec-status", qga::guest_exec_status { pid }).await?;
            if status.exited {
                let code = match (status.exitcode, status.signal) {
                    (Some(c), _) => c,
                    (None, Some(s)) => 128 + s,
                    (None, None) => -1,
                };
                return Ok(Output {
                    code,
                    stdout: status.out_data.unwrap_or_default(),
                    stderr: status.err_data.unwrap_or_default(),
                });
            }
            if Instant::now() >= deadline {
                let kill = format!("kill -9 {pid}");
                if let Ok(k) = self.spawn(&["/bin/sh", "-c", &kill]).await {
                    let _ = Box::pin(self.wait(k, &kill, Duration::from_secs(10))).await;
                }
                return Err(AgentError::CommandTimeout(what.into(), limit));
            }
            sleep(pause).await;
            pause = (pause * 3 / 2).min(Duration::from_millis(20));
        }
    }

    /// Runs `argv` to completion within `limit`.
    pub async fn exec(&self, argv: &[&str], limit: Duration) -> Result<Output, AgentError> {
        let pid = self.spawn(argv).await?;
        self.wait(pid, &argv.join(" "), limit).await
    }

    /// [`exec`](Self::exec) for a command known to run at least `expected`
    /// (a workload): its status is first asked after that, so that the agent
    /// does not wake the guest while it measures.
    pub async fn exec_for(&self, argv: &[&str], expected: Duration, limit: Duration) -> Result<Output, AgentError> {
        let pid = self.spawn(argv).await?;
        if !expected.is_zero() {
            sleep(expected.min(limit)).await;
        }
        self.wait(pid, &argv.join(" "), limit.saturating_sub(expected)).await
    }

    /// Runs a shell script (`/bin/sh -c`) to completion within `limit`.
    pub async fn sh(&self, script: &str, limit: Duration) -> Result<Output, AgentError> {
        self.sh_for(script, Duration::ZERO, limit).await
    }

    /// [`sh`](Self::sh) for a script known to run at least `expected` (one
    /// that runs a workload): see [`exec_for`](Self::exec_for).
    ///
    /// A script longer than the kernel takes as one argument
    /// ([`LONGEST_ARGUMENT`]: a policy of 10000 rules) is written to a file
    /// in the guest first, run from there and removed.
    pub async fn sh_for(&self, script: &str, expected: Duration, limit: Duration) -> Result<Output, AgentError> {
        if script.len() < LONGEST_ARGUMENT {
            return self.exec_for(&["/bin/sh", "-c", script], expected, limit).await;
        }
        static SCRIPTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SCRIPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = format!("/tmp/vlab-script-{}-{n}.sh", std::process::id());
        self.write_file(&path, script.as_bytes()).await?;
        let run = format!("trap 'rm -f {path}' EXIT; . {path}");
        self.exec_for(&["/bin/sh", "-c", &run], expected, limit).await
    }

    /// Reads a whole file from the guest.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, AgentError> {
        let handle =
            self.call("guest-file-open", qga::guest_file_open { path: path.into(), mode: Some("r".into()) }).await?;
        let mut data = Vec::new();
        let result = loop {
            match self.call("guest-file-read", qga::guest_file_read { handle, count: Some(1 << 20) }).await {
                Ok(chunk) => {
                    data.extend_from_slice(&chunk.buf_b64);
                    if chunk.eof || chunk.count == 0 {
                        break Ok(data);
                    }
                }
                Err(e) => break Err(e),
            }
        };
        let _ = self.call("guest-file-close", qga::guest_file_close { handle }).await;
        result
    }

    /// Writes a whole file in the guest (created or truncated), in chunks.
    pub async fn write_file(&self, path: &str, bytes: &[u8]) -> Result<(), AgentError> {
        let handle =
            self.call("guest-file-open", qga::guest_file_open { path: path.into(), mode: Some("w".into()) }).await?;
        let mut result = Ok(());
        for chunk in bytes.chunks(1 << 20) {
            let write = qga::guest_file_write { handle, buf_b64: chunk.to_vec(), count: Some(chunk.len() as i64) };
            match self.call("guest-file-write", write).await {
                Ok(w) if w.count as usize == chunk.len() => {}
                Ok(w) => {
                    result = Err(AgentError::Command(
                        "guest-file-write".into(),
                        format!("wrote {} of {} bytes to {path}", w.count, chunk.len()),
                    ));
                    break;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let closed = self.call("guest-file-close", qga::guest_file_close { handle }).await;
        result.and(closed.map(|_| ()))
    }
}
