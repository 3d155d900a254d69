//! A client of the QEMU guest agent (qemu-ga), over the host side of its virtio-serial
//! channel (a Unix socket QEMU listens on).
//!
//! The channel is a byte stream that survives clients: a reply to an earlier client may still
//! be queued, and nothing tells the host whether an agent listens at the other end. So every
//! session starts with `guest-sync-delimited`: kura sends 0xFF (which resets the agent's
//! parser), then the sync with a fresh id; everything before the agent's 0xFF and an answer
//! carrying that id is discarded. An agent that does not answer within the timeout is Not
//! Ready. Every reply is read before the session ends (an unread reply confuses the next
//! client). What the guest sends is untrusted: lines are bounded, exec output is capped.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Serialize;
use serde_json::{Value, json};

use crate::{Error, Result};

/// The longest line the agent may send (exec output is base64 inside one line).
pub const MAX_LINE: usize = 4 << 20;

fn qga_err(message: impl Into<String>) -> Error {
    Error::Agent(message.into())
}

/// A session with a guest agent.
#[derive(Debug)]
pub struct Qga {
    /// The channel's socket (a plain QEMU) ...
    socket: Option<(BufReader<UnixStream>, UnixStream)>,
    /// ... or libvirt, which owns the channel of the domains it runs.
    libvirt: Option<crate::libvirt::Domain>,
    timeout: Duration,
}

/// What `guest-info` and `guest-get-osinfo` told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentInfo {
    /// The agent's version.
    pub version: String,
    /// The guest OS, as the agent names it (pretty name, else kernel release).
    pub os: String,
    /// The OS's id (`guest-get-osinfo`'s `id`: `debian`, `mswindows`, ...).
    pub os_id: String,
    /// Commands the agent has enabled.
    #[serde(skip)]
    pub commands: Vec<String>,
}

/// The name `vssadmin list writers` gives the writer of Windows failover clusters' shared
/// volumes.
pub const CSV_WRITER: &str = "Cluster Shared Volume VSS Writer";

impl AgentInfo {
    /// Whether the guest runs Windows (its agent freezes through VSS).
    pub fn is_windows(&self) -> bool {
        self.os_id == "mswindows"
    }
}

/// The outcome of a program run in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    /// Its exit code (`None` when it was killed by a signal or did not end in time).
    pub exit_code: Option<i64>,
    /// Whether it ended before the timeout.
    pub ended: bool,
    /// Its standard output and error, decoded lossily and cut to a few KiB.
    pub output: String,
}

impl Qga {
    /// Connects to the agent socket at `path` and synchronises; fails when no agent answers
    /// within `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qga> {
        let stream = UnixStream::connect(path)
            .map_err(|e| qga_err(format!("cannot connect to {}: {e}", path.display())))?;
        let writer = stream.try_clone().map_err(|e| qga_err(e.to_string()))?;
        let mut qga = Qga {
            socket: Some((BufReader::new(stream), writer)),
            libvirt: None,
            timeout,
        };
        qga.sync()?;
        Ok(qga)
    }

    /// The agent of a libvirt domain, through libvirt; fails when it does not answer a ping
    /// within `timeout`.
    pub fn libvirt(domain: &crate::libvirt::Domain, timeout: Duration) -> Result<Qga> {
        let mut qga = Qga {
            socket: None,
            libvirt: Some(domain.clone()),
            timeout,
        };
        qga.execute("guest-ping", None)?;
        Ok(qga)
    }

    fn reader(&mut self) -> Result<&mut BufReader<UnixStream>> {
        Ok(&mut self.socket.as_mut().ok_or_else(|| qga_err("no socket"))?.0)
    }

    fn sync(&mut self) -> Result<()> {
        let id = sync_id();
        self.send(
            b"\xff",
            "guest-sync-delimited",
            Some(json!({ "id": id })),
            self.timeout,
        )?;
        let deadline = Instant::now() + self.timeout;
        // Skip to the agent's delimiter, then to the answer that carries our id.
        loop {
            self.set_deadline(deadline)?;
            let mut byte = [0u8];
            match self.reader()?.read(&mut byte) {
                Ok(0) => return Err(qga_err("the agent channel closed")),
                Ok(_) if byte[0] == 0xff => {}
                Ok(_) => continue,
                Err(e) => return Err(timeout_or(e, "guest-sync-delimited", self.timeout)),
            }
            let v = self.read_message(deadline, "guest-sync-delimited")?;
            if v.get("return").and_then(Value::as_u64) == Some(id) {
                return Ok(());
            }
        }
    }

    fn set_deadline(&mut self, deadline: Instant) -> Result<()> {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        self.reader()?
            .get_ref()
            .set_read_timeout(Some(left))
            .map_err(|e| qga_err(e.to_string()))
    }

    fn send(
        &mut self,
        prefix: &[u8],
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<()> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut text = prefix.to_vec();
        text.extend(serde_json::to_vec(&msg).expect("json"));
        text.push(b'\n');
        let writer = &mut self.socket.as_mut().ok_or_else(|| qga_err("no socket"))?.1;
        writer
            .set_write_timeout(Some(timeout))
            .map_err(|e| qga_err(e.to_string()))?;
        writer
            .write_all(&text)
            .map_err(|e| timeout_or(e, command, timeout))
    }

    fn read_message(&mut self, deadline: Instant, command: &str) -> Result<Value> {
        let mut line = Vec::new();
        loop {
            self.set_deadline(deadline)?;
            let n = self
                .reader()?
                .take((MAX_LINE + 1 - line.len()) as u64)
                .read_until(b'\n', &mut line)
                .map_err(|e| timeout_or(e, command, Duration::ZERO))?;
            if n == 0 {
                return Err(qga_err("the agent channel closed"));
            }
            if line.len() > MAX_LINE {
                return Err(qga_err(format!(
                    "{command}: a reply longer than {MAX_LINE} bytes"
                )));
            }
            if line.ends_with(b"\n") {
                break;
            }
        }
        // A stray delimiter before a reply is not part of it.
        let text: &[u8] = match line.iter().position(|&b| b != 0xff) {
            Some(i) => &line[i..],
            None => &[],
        };
        let v: Value = serde_json::from_slice(text)
            .map_err(|e| qga_err(format!("{command}: unreadable reply: {e}")))?;
        if !v.is_object() {
            return Err(qga_err(format!("{command}: a reply that is not an object")));
        }
        Ok(v)
    }

    /// Runs `command`; returns its `return` value. An error reply is [`Error::Agent`] with
    /// the agent's description.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        self.execute_within(command, arguments, self.timeout)
    }

    /// [`Qga::execute`] with its own timeout (a freeze may take longer than a ping).
    pub fn execute_within(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value> {
        let v = match &self.libvirt {
            Some(d) => {
                let mut msg = json!({ "execute": command });
                if let Some(a) = arguments {
                    msg["arguments"] = a;
                }
                d.agent(&msg, timeout)?
            }
            None => {
                self.send(b"", command, arguments, timeout)?;
                self.read_message(Instant::now() + timeout, command)?
            }
        };
        if let Some(err) = v.get("error") {
            return Err(qga_err(format!(
                "{command} failed: {}",
                err.get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("no description")
            )));
        }
        v.get("return")
            .cloned()
            .ok_or_else(|| qga_err(format!("{command}: a reply without return")))
    }

    /// `guest-ping`, `guest-info` and `guest-get-osinfo`.
    pub fn info(&mut self) -> Result<AgentInfo> {
        self.execute("guest-ping", None)?;
        let info = self.execute("guest-info", None)?;
        let version = info
            .get("version")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .chars()
            .take(64)
            .collect();
        let commands = info
            .get("supported_commands")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|c| c.get("enabled").and_then(Value::as_bool) != Some(false))
            .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
            .collect();
        let osinfo = self.execute("guest-get-osinfo", None).ok();
        let os_id = osinfo
            .as_ref()
            .and_then(|o| o.get("id"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .chars()
            .take(64)
            .collect();
        let os = osinfo
            .and_then(|o| {
                ["pretty-name", "name"]
                    .iter()
                    .find_map(|k| o.get(*k).and_then(Value::as_str).map(str::to_string))
                    .or_else(|| {
                        let kernel = o.get("kernel-release").and_then(Value::as_str)?;
                        Some(format!("Linux {kernel}"))
                    })
            })
            .unwrap_or_else(|| "unknown".into())
            .chars()
            .take(128)
            .collect();
        Ok(AgentInfo {
            version,
            os,
            os_id,
            commands,
        })
    }

    /// Whether `path` exists and can be opened for reading in the guest.
    pub fn file_exists(&mut self, path: &str) -> Result<bool> {
        match self.execute("guest-file-open", Some(json!({"path": path, "mode": "r"}))) {
            Ok(handle) => {
                self.execute("guest-file-close", Some(json!({ "handle": handle })))?;
                Ok(true)
            }
            // The agent's refusal, as QEMU's socket reports it and as libvirt relays it.
            Err(Error::Agent(m))
                if m.contains("guest-file-open failed")
                    || (m.contains("'guest-file-open'") && m.contains("failed to open file")) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Runs `path` with `args` in the guest and waits up to `timeout` for it to end; its
    /// output is cut to 4 KiB (for logs).
    pub fn exec(&mut self, path: &str, args: &[&str], timeout: Duration) -> Result<ExecResult> {
        self.exec_keeping(path, args, timeout, 4096)
    }

    /// Whether the guest is Windows and `vssadmin list writers` lists the Cluster Shared
    /// Volume VSS Writer, which keeps VSS from giving application-consistent points (Azure
    /// caps such VMs at file-system consistency). `Ok(None)` for other guests.
    pub fn csv_writer(&mut self, info: &AgentInfo) -> Result<Option<bool>> {
        if !info.is_windows() {
            return Ok(None);
        }
        let r = self.exec_keeping(
            "vssadmin.exe",
            &["list", "writers"],
            Duration::from_secs(60),
            1 << 20,
        )?;
        if !r.ended || r.exit_code != Some(0) {
            return Err(qga_err(format!(
                "`vssadmin list writers` in the guest failed (exit code {:?}): {}",
                r.exit_code,
                r.output.chars().take(300).collect::<String>()
            )));
        }
        Ok(Some(r.output.contains(CSV_WRITER)))
    }

    fn exec_keeping(
        &mut self,
        path: &str,
        args: &[&str],
        timeout: Duration,
        keep: usize,
    ) -> Result<ExecResult> {
        let started = self.execute(
            "guest-exec",
            Some(json!({"path": path, "arg": args, "capture-output": true})),
        )?;
        let pid = started
            .get("pid")
            .and_then(Value::as_i64)
            .ok_or_else(|| qga_err("guest-exec: no pid in the reply"))?;
        let deadline = Instant::now() + timeout;
        let mut wait = Duration::from_millis(20);
        loop {
            let st = self.execute("guest-exec-status", Some(json!({ "pid": pid })))?;
            if st.get("exited").and_then(Value::as_bool) == Some(true) {
                let mut output = String::new();
                for key in ["out-data", "err-data"] {
                    if let Some(b) = st.get(key).and_then(Value::as_str) {
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(b)
                            .unwrap_or_default();
                        output.push_str(&String::from_utf8_lossy(&bytes));
                    }
                }
                let output = output.trim().chars().take(keep).collect();
                return Ok(ExecResult {
                    exit_code: st.get("exitcode").and_then(Value::as_i64),
                    ended: true,
                    output,
                });
            }
            if Instant::now() >= deadline {
                return Ok(ExecResult {
                    exit_code: None,
                    ended: false,
                    output: String::new(),
                });
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_millis(500));
        }
    }

    /// Freezes the guest's file systems; returns how many were frozen.
    pub fn freeze(&mut self, timeout: Duration) -> Result<u64> {
        let n = self.execute_within("guest-fsfreeze-freeze", None, timeout)?;
        Ok(n.as_u64().unwrap_or(0))
    }

    /// Thaws the guest's file systems; returns how many were thawed.
    pub fn thaw(&mut self, timeout: Duration) -> Result<u64> {
        let n = self.execute_within("guest-fsfreeze-thaw", None, timeout)?;
        Ok(n.as_u64().unwrap_or(0))
    }

    /// `frozen` or `thawed`.
    pub fn freeze_status(&mut self) -> Result<String> {
        Ok(self
            .execute("guest-fsfreeze-status", None)?
            .as_str()
            .unwrap_or("unknown")
            .to_string())
    }

    /// Asks the guest to power off. A successful shutdown has no reply; the agent may be gone
    /// before it could answer, so a timeout or a closed channel counts as accepted.
    pub fn shutdown(&mut self) -> Result<()> {
        if let Some(d) = &self.libvirt {
            return d
                .virsh(&["shutdown", &d.name, "--mode", "agent"])
                .map(|_| ());
        }
        self.send(
            b"",
            "guest-shutdown",
            Some(json!({"mode": "powerdown"})),
            self.timeout,
        )?;
        match self.read_message(Instant::now() + Duration::from_secs(2), "guest-shutdown") {
            Ok(v) if v.get("error").is_some() => Err(qga_err(format!(
                "guest-shutdown failed: {}",
                v["error"]["desc"].as_str().unwrap_or("no description")
            ))),
            _ => Ok(()),
        }
    }
}

fn sync_id() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // Positive and below 2^53, so every JSON reader keeps it exact.
    (nanos ^ u64::from(std::process::id()) << 20) & ((1 << 52) - 1) | 1
}

fn timeout_or(e: std::io::Error, command: &str, timeout: Duration) -> Error {
    if matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ) {
        if timeout.is_zero() {
            qga_err(format!("{command}: the agent did not answer in time"))
        } else {
            qga_err(format!(
                "{command}: the agent did not answer within {} s",
                timeout.as_secs_f64()
            ))
        }
    } else {
        qga_err(format!("{command}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    use super::*;

    /// A scripted agent: reads the sync, answers it after some stale noise, then answers each
    /// later command with the next reply of `script`.
    fn agent(script: Vec<&'static str>, answer_sync: bool) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qga.sock");
        let l = UnixListener::bind(&sock).unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            let mut sync = Vec::new();
            r.read_until(b'\n', &mut sync).unwrap();
            if !answer_sync {
                std::thread::sleep(Duration::from_secs(3));
                return;
            }
            assert_eq!(sync[0], 0xff, "a sync starts with the delimiter");
            let v: Value = serde_json::from_slice(&sync[1..]).unwrap();
            let id = v["arguments"]["id"].as_u64().unwrap();
            // A reply meant for an earlier client, then the real sync answer.
            let _ = w.write_all(b"{\"return\": {}}\n\xff{\"return\": 7}\n\xff");
            let _ = writeln!(w, "{{\"return\": {id}}}");
            for answer in script {
                let mut cmd = String::new();
                if r.read_line(&mut cmd).unwrap_or(0) == 0 {
                    break;
                }
                let _ = w.write_all(answer.as_bytes());
            }
        });
        (dir, sock)
    }

    use std::path::PathBuf;

    #[test]
    fn stale_replies_are_skipped_and_errors_are_told() {
        let (_d, sock) = agent(
            vec![
                "{\"return\": {}}\n",
                "{\"return\": {\"version\": \"7.2.0\", \"supported_commands\": []}}\n",
                "{\"return\": {\"pretty-name\": \"Debian GNU/Linux 12\"}}\n",
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"frozen twice\"}}\n",
            ],
            true,
        );
        let mut q = Qga::connect(&sock, Duration::from_secs(5)).unwrap();
        let info = q.info().unwrap();
        assert_eq!(info.version, "7.2.0");
        assert_eq!(info.os, "Debian GNU/Linux 12");
        let e = q.freeze(Duration::from_secs(5)).unwrap_err().to_string();
        assert!(e.contains("frozen twice"), "{e}");
    }

    #[test]
    fn an_agent_that_does_not_answer_is_a_clear_timeout() {
        let (_d, sock) = agent(vec![], false);
        let e = Qga::connect(&sock, Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not answer"), "{e}");
    }
}
