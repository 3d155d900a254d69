//! A QMP client: the JSON control protocol of QEMU and qemu-storage-daemon, over a Unix
//! socket. One command at a time; events that arrive meanwhile are kept for the caller.
//!
//! The peer is a QEMU process kura started or was pointed at; its answers are still checked:
//! a line longer than [`MAX_LINE`] or an answer that is not a JSON object is an error, never
//! an unbounded allocation or a panic.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Error, Result};

/// The longest line a QMP peer may send (a `query-block` of many disks fits easily).
pub const MAX_LINE: usize = 16 << 20;

fn qmp_err(message: impl Into<String>) -> Error {
    Error::Qmp(message.into())
}

/// A QMP session in command mode: on the monitor socket, or through libvirt, which owns the
/// monitor of the domains it runs.
#[derive(Debug)]
pub struct Qmp {
    reader: Option<BufReader<UnixStream>>,
    writer: Option<UnixStream>,
    libvirt: Option<crate::libvirt::Domain>,
    next_id: u64,
    events: Vec<Value>,
}

impl Qmp {
    /// Connects to the QMP socket at `path` (waiting up to `wait` for it to appear), reads the
    /// greeting and enters command mode.
    pub fn connect(path: &Path, wait: Duration) -> Result<Qmp> {
        // A QMP socket serves one client at a time: a connection made while another client
        // is (or was just) connected may be closed before its greeting. Such a session is
        // tried again until `wait` (at least a second) has passed.
        let deadline = Instant::now() + wait.max(Duration::from_secs(1));
        loop {
            match Self::connect_once(path) {
                Ok(q) => return Ok(q),
                Err(e) if Instant::now() < deadline && wait > Duration::ZERO && dropped(&e) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn connect_once(path: &Path) -> Result<Qmp> {
        let stream = UnixStream::connect(path).map_err(|e| {
            qmp_err(format!(
                "cannot connect to QMP socket {}: {e}",
                path.display()
            ))
        })?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| qmp_err(e.to_string()))?;
        let writer = stream.try_clone().map_err(|e| qmp_err(e.to_string()))?;
        let mut qmp = Qmp {
            reader: Some(BufReader::new(stream)),
            writer: Some(writer),
            libvirt: None,
            next_id: 1,
            events: Vec::new(),
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(qmp_err(format!("no QMP greeting: {greeting}")));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// A session with a libvirt domain's QEMU, through libvirt; fails when it does not run.
    pub fn libvirt(domain: &crate::libvirt::Domain) -> Result<Qmp> {
        let mut qmp = Qmp {
            reader: None,
            writer: None,
            libvirt: Some(domain.clone()),
            next_id: 1,
            events: Vec::new(),
        };
        qmp.execute("query-status", None)?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<Value> {
        let mut line = Vec::new();
        let reader = self.reader.as_mut().ok_or_else(|| qmp_err("no socket"))?;
        let n = reader
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| qmp_err(format!("reading: {e}")))?;
        if n == 0 {
            return Err(qmp_err("the QMP peer closed the connection"));
        }
        if n > MAX_LINE {
            return Err(qmp_err(format!(
                "a QMP message longer than {MAX_LINE} bytes"
            )));
        }
        let v: Value = serde_json::from_slice(&line)
            .map_err(|e| qmp_err(format!("unreadable QMP message: {e}")))?;
        if !v.is_object() {
            return Err(qmp_err(format!("a QMP message that is not an object: {v}")));
        }
        Ok(v)
    }

    /// Runs `command` with `arguments`; returns its `return` value. An `error` answer is
    /// [`Error::Qmp`] with QEMU's class and description.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"execute": command, "id": id});
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        if let Some(d) = &self.libvirt {
            msg.as_object_mut().expect("object").remove("id");
            let v = d
                .monitor(&msg)
                .map_err(|e| qmp_err(format!("{command}: {e}")))?;
            return answer(command, v);
        }
        let mut text = serde_json::to_vec(&msg).expect("json");
        text.push(b'\n');
        self.writer
            .as_mut()
            .ok_or_else(|| qmp_err("no socket"))?
            .write_all(&text)
            .map_err(|e| qmp_err(format!("sending {command}: {e}")))?;
        loop {
            let v = self.read_message()?;
            if v.get("event").is_some() {
                self.events.push(v);
                continue;
            }
            if v.get("id").and_then(Value::as_u64) != Some(id) {
                return Err(qmp_err(format!(
                    "{command}: an answer to another command: {v}"
                )));
            }
            return answer(command, v);
        }
    }

    /// The process at the other end of the socket, as the kernel names it.
    pub fn peer_pid(&self) -> Option<u32> {
        let cred = rustix::net::sockopt::socket_peercred(self.writer.as_ref()?).ok()?;
        u32::try_from(cred.pid.as_raw_nonzero().get()).ok()
    }

    /// The user and group of the process at the other end of the socket.
    pub fn peer_ids(&self) -> Option<(u32, u32)> {
        let cred = rustix::net::sockopt::socket_peercred(self.writer.as_ref()?).ok()?;
        Some((cred.uid.as_raw(), cred.gid.as_raw()))
    }

    /// The command line of the process at the other end of the socket (read from
    /// `/proc/PID/cmdline` of the peer the kernel names), when it can be read: a VM's QEMU
    /// command line, kept with its points so a restore can make a runnable copy.
    pub fn peer_cmdline(&self) -> Option<Vec<String>> {
        let pid = self.peer_pid()?;
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<String> = raw
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let mut args = args;
        if args.last().is_some_and(String::is_empty) {
            args.pop();
        }
        (!args.is_empty()).then_some(args)
    }

    /// Events received so far, oldest first; they are removed from the session.
    pub fn take_events(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.events)
    }
}

/// Whether a failed session was dropped by the peer (busy with another client) rather than
/// refused for what it said: only those are tried again. A socket that is not there yet is
/// waited for too.
fn dropped(e: &Error) -> bool {
    let m = e.to_string();
    [
        "closed the connection",
        "reset by peer",
        "Broken pipe",
        "No such file",
        "Connection refused",
    ]
    .iter()
    .any(|x| m.contains(x))
}

/// The `return` of an answer, or its `error` as [`Error::Qmp`].
fn answer(command: &str, v: Value) -> Result<Value> {
    if let Some(err) = v.get("error") {
        return Err(qmp_err(format!(
            "{command} failed: {} ({})",
            err.get("desc")
                .and_then(Value::as_str)
                .unwrap_or("no description"),
            err.get("class")
                .and_then(Value::as_str)
                .unwrap_or("no class")
        )));
    }
    v.get("return")
        .cloned()
        .ok_or_else(|| qmp_err(format!("{command}: an answer without return: {v}")))
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    use super::*;

    /// A scripted peer: answers each command it reads with the next line of `script`.
    fn peer(script: Vec<&'static str>) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let l = UnixListener::bind(&sock).unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            let mut lines = script.into_iter();
            if let Some(g) = lines.next() {
                let _ = w.write_all(g.as_bytes());
            }
            for answer in lines {
                let mut cmd = String::new();
                if r.read_line(&mut cmd).unwrap_or(0) == 0 {
                    break;
                }
                let _ = w.write_all(answer.as_bytes());
            }
        });
        (dir, sock)
    }

    #[test]
    fn answers_errors_and_events_are_told_apart() {
        let (_d, sock) = peer(vec![
            "{\"QMP\": {\"version\": {}}}\n",
            "{\"return\": {}, \"id\": 1}\n",
            "{\"event\": \"JOB_STATUS_CHANGE\", \"data\": {}}\n{\"return\": [1, 2], \"id\": 2}\n",
            "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no such node\"}, \"id\": 3}\n",
            "{\"return\": {}, \"id\": 99}\n",
        ]);
        let mut q = Qmp::connect(&sock, Duration::from_secs(5)).unwrap();
        assert_eq!(q.execute("query-x", None).unwrap(), json!([1, 2]));
        assert_eq!(q.take_events().len(), 1);
        let e = q.execute("blockdev-del", None).unwrap_err().to_string();
        assert!(
            e.contains("blockdev-del failed: no such node (GenericError)"),
            "{e}"
        );
        let e = q.execute("query-y", None).unwrap_err().to_string();
        assert!(e.contains("another command"), "{e}");
    }

    #[test]
    fn a_peer_without_greeting_or_with_garbage_is_refused() {
        let (_d, sock) = peer(vec!["[1, 2, 3]\n"]);
        let e = Qmp::connect(&sock, Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an object"), "{e}");
        let (_d, sock) = peer(vec!["{\"hello\": 1}\n"]);
        let e = Qmp::connect(&sock, Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no QMP greeting"), "{e}");
        let (_d, sock) = peer(vec!["not json\n"]);
        assert!(Qmp::connect(&sock, Duration::from_secs(5)).is_err());
    }
}
