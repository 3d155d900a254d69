//! Output: tables or one JSON document on stdout; progress bars on a terminal's stderr.

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use kura_engine::Progress;
use serde::Serialize;

/// Where results go.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    json: bool,
}

impl Out {
    pub fn new(json: bool) -> Self {
        Out { json }
    }

    pub fn json(&self) -> bool {
        self.json
    }

    /// Prints `value` as JSON, or `table()` for people.
    pub fn print<T: Serialize>(&self, value: &T, table: impl FnOnce() -> String) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).expect("serializable")
            );
        } else {
            print!("{}", table());
        }
    }

    /// Prints `value` as JSON, or as text by `render` from the same JSON.
    pub fn view<T: Serialize>(&self, value: &T, render: impl FnOnce(&serde_json::Value) -> String) {
        let v = serde_json::to_value(value).expect("serializable");
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&v).expect("serializable")
            );
        } else {
            print!("{}", render(&v));
        }
    }

    /// Reports an error: JSON on stdout, or a message on stderr.
    pub fn error(&self, e: &anyhow::Error) {
        if self.json {
            let mut doc = serde_json::json!({"error": {"code": crate::error_code(e), "message": format!("{e:#}")}});
            let fields = crate::error_fields(e);
            if !fields.is_empty() {
                doc["error"]["fields"] = fields
                    .iter()
                    .map(|(field, message)| serde_json::json!({"field": field, "message": message}))
                    .collect();
            }
            println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
        } else {
            eprintln!("error: {e:#}");
        }
    }
}

/// Human-readable binary size.
pub fn size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

/// A progress bar on stderr when it is a terminal and output is for people; silent otherwise.
pub struct Bar {
    enabled: bool,
    json: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Bar {
    pub fn new(out: &Out) -> Self {
        Bar {
            enabled: !out.json() && std::io::stderr().is_terminal(),
            json: out.json(),
            bar: Mutex::new(None),
        }
    }
}

impl Progress for Bar {
    fn start(&self, phase: &str, total: u64) {
        if !self.enabled {
            return;
        }
        let pb = new_bar(total);
        pb.set_message(phase.to_string());
        *self.bar.lock().unwrap_or_else(|e| e.into_inner()) = Some(pb);
    }

    fn advance(&self, bytes: u64) {
        if let Some(pb) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            pb.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Some(pb) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
            pb.finish_and_clear();
        }
    }

    fn job_started(&self, id: &str, operation: &str, target: &str) {
        // Printed at once, on a terminal or not, so the id is known while the job runs.
        if !self.json {
            let line = format!("job {id} started: {operation} of {target}");
            match self.bar.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                Some(pb) => pb.println(line),
                None => eprintln!("{line}"),
            }
        }
    }

    fn message(&self, line: &str) {
        if self.enabled {
            match self.bar.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                Some(pb) => pb.println(line),
                None => eprintln!("{line}"),
            }
        }
    }
}

/// The one progress bar style, for local work and for jobs followed through a server.
fn new_bar(total: u64) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:16} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb
}

/// Follows a job until it ends, from successive readings of its row (`fetch`: from the home
/// or from the server, five times a second): on a terminal, a progress bar of its bytes
/// named after its current phase; with `log`, each new line of its log on stderr as it
/// appears (text output only). Returns the ended job.
pub fn follow(
    out: &Out,
    log: bool,
    mut fetch: impl FnMut() -> anyhow::Result<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let tty = !out.json() && std::io::stderr().is_terminal();
    let mut bar: Option<ProgressBar> = None;
    let mut printed = 0;
    loop {
        let j = fetch()?;
        let lines = j["log"].as_array().map(Vec::as_slice).unwrap_or_default();
        if log && !out.json() {
            for line in lines.iter().skip(printed) {
                let line = line.as_str().unwrap_or_default();
                match &bar {
                    Some(pb) => pb.println(line),
                    None => eprintln!("{line}"),
                }
            }
        }
        printed = lines.len();
        let running = matches!(
            j["status"].as_str(),
            Some("Queued" | "InProgress" | "Cancelling")
        );
        if !running {
            if let Some(pb) = bar.take() {
                pb.finish_and_clear();
            }
            return Ok(j);
        }
        if tty {
            let total = j["bytes_total"].as_u64().unwrap_or(0);
            let done = j["bytes_done"].as_u64().unwrap_or(0).min(total);
            let pb = bar.get_or_insert_with(|| new_bar(total));
            pb.set_length(total);
            pb.set_position(done);
            pb.set_message(phase(&j));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// What a running job is doing, for its progress bar: `Backup transfer`, `cancelling`, ...
fn phase(j: &serde_json::Value) -> String {
    if j["status"] == "Cancelling" {
        return "cancelling".into();
    }
    if j["status"] == "Queued" {
        return "queued".into();
    }
    let op = j["operation"].as_str().unwrap_or("job");
    match j["tasks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["status"] == "InProgress"))
        .and_then(|t| t["name"].as_str())
    {
        Some(task) => format!("{op} {task}"),
        None => op.to_string(),
    }
}

/// A plain aligned table.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
        }
    }

    pub fn row(&mut self, r: Vec<String>) {
        self.rows.push(r);
    }

    pub fn render(&self) -> String {
        let cols = self.rows[0].len();
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for r in &self.rows {
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, s)| format!("{s:<w$}", w = widths[i]))
                .collect();
            out += line.join("  ").trim_end();
            out.push('\n');
        }
        out
    }
}
