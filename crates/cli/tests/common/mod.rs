//! Shared helpers for the process-level tests: spawn the real `cohort`
//! binary, learn its addresses from the lines it prints once ready, run CLI
//! commands, and make sure every child process dies with the test.
//!
//! Waiting is always bounded by [`DEADLINE`] and driven by what a process
//! prints or answers, never by sleeping for a guessed duration.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upper bound on any single wait: a process getting ready, a CLI command,
/// a graceful shutdown.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How many lines of a child's stderr are kept to explain a failure.
const STDERR_TAIL: usize = 60;

/// Path of the `cohort` binary under test.
pub fn cohort_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cohort")
}

/// A `cohort` command with a quiet, predictable environment: `RUST_LOG=warn`
/// and no inherited `COHORT_*` variables (which the binary reads as settings).
pub fn cohort_command(args: &[&str]) -> Command {
    let mut command = Command::new(cohort_bin());
    command.args(args).env("RUST_LOG", "warn");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("COHORT_") {
            command.env_remove(name);
        }
    }
    command
}

/// A long-running `cohort` process (dev cluster, node, coordinator). Dropping
/// it kills the process and reaps it, also when the test panics; on a panic
/// it prints the tail of the process's stderr.
pub struct Proc {
    name: String,
    child: Option<Child>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    /// Starts `cohort <args>` with extra environment variables `env`.
    pub fn spawn(name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut command = cohort_command(args);
        command.envs(env.iter().copied()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (send, lines) = channel();
        // Keep draining stdout after the test stops listening, so the child
        // never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = send.send(line);
            }
        });
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let keep = tail.clone();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut tail = keep.lock().unwrap_or_else(|p| p.into_inner());
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        Proc { name: name.to_string(), child: Some(child), lines, stderr: tail, stderr_reader: Some(stderr_reader) }
    }

    /// The operating-system process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("process is running").id()
    }

    /// Everything the process wrote to stderr until it closed it (its last
    /// lines included), once it has exited; waits for the reader to drain.
    pub fn final_stderr(&mut self) -> String {
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        self.stderr_tail()
    }

    /// What the process has written to stderr lately.
    pub fn stderr_tail(&self) -> String {
        let tail = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Waits (up to [`DEADLINE`]) for a stdout line starting with `prefix`,
    /// skipping other lines, and returns the rest of that line.
    pub fn wait_for_line(&mut self, prefix: &str) -> String {
        self.try_wait_for_line(prefix).unwrap_or_else(|why| panic!("{why}"))
    }

    /// [`Proc::wait_for_line`], reporting a timeout or an early exit as an
    /// error instead of panicking (e.g. a restart that cannot bind its port).
    pub fn try_wait_for_line(&mut self, prefix: &str) -> Result<String, String> {
        let deadline = Instant::now() + DEADLINE;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => match line.strip_prefix(prefix) {
                    Some(rest) => return Ok(rest.to_string()),
                    None => skipped.push(line),
                },
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{}: no line starting with {prefix:?} within {DEADLINE:?}; stdout so far: {skipped:?}; \
                         stderr:\n{}",
                        self.name,
                        self.stderr_tail()
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    return Err(format!(
                        "{}: exited ({status:?}) before printing {prefix:?}; stdout: {skipped:?}; stderr:\n{}",
                        self.name,
                        self.stderr_tail()
                    ));
                }
            }
        }
    }

    /// Sends `signal` (a name for kill(1): `STOP`, `CONT`, `KILL`, …) to the
    /// process without waiting for it.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().to_string();
        let sent = Command::new("kill").args([&format!("-{signal}"), &pid]).status().expect("run kill(1)");
        assert!(sent.success(), "kill -{signal} {pid} ({}) failed", self.name);
    }

    /// Kills the process with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits (up to [`DEADLINE`]) for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.pid().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill(1)");
        assert!(sent.success(), "kill -TERM {pid} failed");
        // The child's exit is the event: a thread waits on it and the test
        // waits for that thread, at most DEADLINE.
        let mut child = self.child.take().expect("process is running");
        let (exited, exit) = channel();
        std::thread::spawn(move || {
            let _ = exited.send(child.wait().expect("wait for the child"));
        });
        match exit.recv_timeout(DEADLINE) {
            Ok(status) => status,
            Err(_) => {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                panic!("{} did not exit within {DEADLINE:?} of SIGTERM; stderr:\n{}", self.name, self.stderr_tail());
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() && std::thread::panicking() {
            eprintln!("--- stderr of {} (last lines) ---\n{}", self.name, self.stderr_tail());
        }
        self.kill();
    }
}

/// What a finished `cohort` command printed and how it exited.
#[derive(Debug)]
pub struct Output {
    /// The exit code; `None` when a signal ended the process.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Asserts success and parses standard output as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        assert!(self.success(), "command failed: {self:?}");
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {:?}", self.stdout))
    }

    /// Asserts a failure reported as exactly one `error: …` line on stderr
    /// containing `needle`, with nothing on stdout; returns that line.
    pub fn one_line_error(&self, needle: &str) -> String {
        assert!(!self.success() && self.code.is_some(), "expected a non-zero exit: {self:?}");
        assert!(self.stdout.is_empty(), "a failed command printed to stdout: {self:?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one line on stderr: {self:?}");
        assert!(lines[0].starts_with("error: "), "stderr does not start with `error: `: {self:?}");
        assert!(lines[0].contains(needle), "stderr does not mention {needle:?}: {self:?}");
        lines[0].to_string()
    }
}

/// Runs `cohort <args>` to completion (up to [`DEADLINE`]).
/// The id of node number `index` (from 0): `node-1`, `node-2`, …
pub fn node_id(index: usize) -> String {
    format!("node-{}", index + 1)
}

/// Runs `cohort admin ARGS --endpoint ENDPOINT` and asserts it succeeded.
pub fn admin(endpoint: &str, args: &[&str]) {
    let mut all = vec!["admin"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--endpoint", endpoint]);
    let output = run(&all);
    assert!(output.success(), "cohort {all:?} failed: {output:?}");
}

pub fn run(args: &[&str]) -> Output {
    run_with_stdin(args, None)
}

/// Runs `cohort <args>` with `stdin` as its standard input (or none).
pub fn run_with_stdin(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut command = cohort_command(args);
    command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot run cohort {args:?}: {e}"));
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(bytes).expect("write the command's stdin");
        // Dropping the pipe closes it: the command sees end of input.
    }
    let pid = child.id();
    let (send, finished) = channel();
    std::thread::spawn(move || {
        let _ = send.send(child.wait_with_output());
    });
    match finished.recv_timeout(DEADLINE) {
        Ok(output) => {
            let output = output.expect("collect the command's output");
            Output {
                code: output.status.code(),
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            }
        }
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("cohort {args:?} did not finish within {DEADLINE:?}")
        }
    }
}

/// A running `cohort dev` cluster.
pub struct Dev {
    /// The process.
    pub proc: Proc,
    /// `http://host:port` of the public API.
    pub endpoint: String,
    /// `host:port` of the HTTP endpoint with /metrics and /health/*.
    pub metrics: String,
}

/// Starts `cohort dev` on `data_dir` with ephemeral ports and waits until it
/// has printed both addresses.
pub fn start_dev(data_dir: &Path) -> Dev {
    let dir = data_dir.to_str().expect("UTF-8 path");
    let args = ["dev", "--data-dir", dir, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"];
    let mut proc = Proc::spawn("cohort dev", &args, &[]);
    // "  API:      http://127.0.0.1:7070   (tenant ...)"
    let api = proc.wait_for_line("  API:");
    let endpoint = api.split_whitespace().next().expect("API line names an endpoint").to_string();
    assert!(endpoint.starts_with("http://"), "unexpected API line {api:?}");
    // "  metrics:  http://127.0.0.1:9090/metrics"
    let metrics = proc.wait_for_line("  metrics:");
    let metrics = metrics
        .trim()
        .strip_prefix("http://")
        .and_then(|m| m.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("unexpected metrics line {metrics:?}"))
        .to_string();
    Dev { proc, endpoint, metrics }
}

/// Starts `cohort node` with id `id` on `data_dir` and returns it with the
/// address of its Storage API.
pub fn start_node(id: &str, data_dir: &Path) -> (Proc, String) {
    try_start_node(id, data_dir, "127.0.0.1:0").unwrap_or_else(|why| panic!("{why}"))
}

/// Starts `cohort node` with id `id` on `data_dir` listening on `listen`
/// (`127.0.0.1:0` for an ephemeral port); an error when it exits before it
/// listens, e.g. because the port is still taken.
pub fn try_start_node(id: &str, data_dir: &Path, listen: &str) -> Result<(Proc, String), String> {
    let dir = data_dir.to_str().expect("UTF-8 path");
    let args = ["node", "--id", id, "--data-dir", dir, "--listen", listen];
    let mut proc = Proc::spawn(&format!("cohort node {id}"), &args, &[]);
    let address = proc.try_wait_for_line(&format!("cohort node {id} listening on "))?.trim().to_string();
    Ok((proc, address))
}

/// A running `cohort coordinator`.
pub struct Coordinator {
    /// The process.
    pub proc: Proc,
    /// `http://host:port` of the public API.
    pub endpoint: String,
    /// `host:port` of the HTTP endpoint with /metrics and /health/*.
    pub metrics: String,
}

/// Starts `cohort coordinator` with embedded stores under `data_dir`.
pub fn start_coordinator(data_dir: &Path, env: &[(&str, &str)]) -> Coordinator {
    try_start_coordinator(data_dir, "127.0.0.1:0", &[], env).unwrap_or_else(|why| panic!("{why}"))
}

/// Starts `cohort coordinator` with embedded stores under `data_dir`, its API
/// on `listen`, and `extra` flags (e.g. `--config FILE`); an error when it
/// exits before it listens.
pub fn try_start_coordinator(
    data_dir: &Path,
    listen: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<Coordinator, String> {
    let dir = data_dir.to_str().expect("UTF-8 path");
    let mut args = vec![
        "coordinator",
        "--id",
        "coordinator-1",
        "--listen",
        listen,
        "--metrics-listen",
        "127.0.0.1:0",
        "--data-dir",
        dir,
        "--metadata-backend",
        "embedded",
        "--idempotency-backend",
        "embedded",
    ];
    args.extend_from_slice(extra);
    let mut proc = Proc::spawn("cohort coordinator", &args, env);
    let metrics = proc.try_wait_for_line("metrics on http://")?;
    let metrics = metrics.trim().strip_suffix("/metrics").expect("metrics URL ends in /metrics").to_string();
    let address = proc.try_wait_for_line("cohort coordinator coordinator-1 listening on ")?.trim().to_string();
    Ok(Coordinator { proc, endpoint: format!("http://{address}"), metrics })
}

/// A plain HTTP/1.0 GET of `path` on `address`: the status code and body.
pub fn http_get(address: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap_or_else(|e| panic!("connect to {address}: {e}"));
    stream.set_read_timeout(Some(DEADLINE)).expect("set a read timeout");
    stream.set_write_timeout(Some(DEADLINE)).expect("set a write timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").expect("send the request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read the response");
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response.as_str(), ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"));
    (status, body.to_string())
}
