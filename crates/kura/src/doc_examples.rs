//! The examples in the README and docs/ are held to the code: every `kura` command line in
//! their shell blocks must parse with this CLI (commands, flags and values as written),
//! every `curl` example must name a route the server has, and every policy document in
//! docs/policies.md must be a valid policy. The end-to-end behaviour of the commands is what
//! the CLI tests (crates/kura/tests/cli) run.

use std::path::{Path, PathBuf};

use clap::Parser;

use crate::Cli;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The README and every page under docs/.
fn pages() -> Vec<(String, String)> {
    let mut files = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("docs entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).expect("readable page");
            (f.file_name().unwrap().to_string_lossy().into_owned(), text)
        })
        .collect()
}

/// The blocks fenced with the given language, with the line each starts at.
fn blocks<'a>(text: &'a str, lang: &str) -> Vec<(usize, Vec<&'a str>)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, Vec<&str>)> = None;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("```") {
            match current.take() {
                Some(block) => out.push(block),
                None if rest.trim() == lang => current = Some((n + 2, Vec::new())),
                None => current = Some((0, Vec::new())),
            }
        } else if let Some((_, lines)) = current.as_mut() {
            lines.push(line);
        }
    }
    out.into_iter().filter(|(start, _)| *start > 0).collect()
}

/// The commands of a shell block: continuations joined, comments dropped, split at `;`,
/// `&&` and `|`, documentation placeholders for optional parts (`[--delete-data]`) removed.
fn commands(lines: &[&str]) -> Vec<String> {
    let mut joined = Vec::new();
    let mut acc = String::new();
    for line in lines {
        let line = line.trim();
        if let Some(head) = line.strip_suffix('\\') {
            acc.push_str(head);
            acc.push(' ');
            continue;
        }
        acc.push_str(line);
        joined.push(std::mem::take(&mut acc));
    }
    let mut out = Vec::new();
    for line in joined {
        // A comment starts at a `#` that begins a word.
        let code = match line.find(" #") {
            Some(i) => &line[..i],
            None if line.starts_with('#') => "",
            None => &line,
        };
        for part in code.split(['|', ';']).flat_map(|p| p.split("&&")) {
            let mut cmd = String::new();
            let mut depth = 0;
            for c in part.chars() {
                match c {
                    // A quoted `'[::]:8640'` is a value, not an optional part.
                    '[' if !cmd.ends_with('\'') => depth += 1,
                    ']' if depth > 0 => depth -= 1,
                    _ if depth == 0 => cmd.push(c),
                    _ => {}
                }
            }
            let cmd = cmd.trim();
            if !cmd.is_empty() {
                out.push(cmd.to_string());
            }
        }
    }
    out
}

#[test]
fn every_kura_command_in_the_docs_parses() {
    let mut checked = 0;
    let mut bad = Vec::new();
    for (page, text) in pages() {
        for (start, lines) in blocks(&text, "sh") {
            for cmd in commands(&lines) {
                if !cmd.starts_with("kura ") {
                    continue;
                }
                // `[--disk NAME]...`: the repetition mark of a dropped optional part.
                let words: Vec<String> = shlex::split(&cmd)
                    .unwrap_or_else(|| panic!("{page} (block at line {start}): {cmd:?}"))
                    .into_iter()
                    .filter(|w| w != "...")
                    .collect();
                checked += 1;
                if let Err(e) = Cli::try_parse_from(&words) {
                    let first = e.to_string().lines().next().unwrap_or("").to_string();
                    bad.push(format!("{page} (block at line {start}): `{cmd}`: {first}"));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "examples the CLI refuses:\n{}",
        bad.join("\n")
    );
    // The README's tour alone has dozens; a parser that found none would be broken.
    assert!(
        checked > 60,
        "only {checked} kura commands found in the docs"
    );
}

#[test]
fn every_curl_example_names_a_route() {
    let mut checked = 0;
    for (page, text) in pages() {
        for (start, lines) in blocks(&text, "sh") {
            for cmd in commands(&lines) {
                if !cmd.starts_with("curl ") {
                    continue;
                }
                let words = shlex::split(&cmd).expect("curl example splits");
                let method = words
                    .windows(2)
                    .find(|w| w[0] == "-X")
                    .map_or("GET", |w| w[1].as_str());
                let url = words
                    .iter()
                    .find(|w| w.starts_with("http"))
                    .unwrap_or_else(|| panic!("{page}:{start}: no URL in {cmd:?}"));
                let path = url
                    .splitn(4, '/')
                    .nth(3)
                    .map(|p| format!("/{}", p.split('?').next().unwrap_or(p)))
                    .unwrap_or_default();
                let fits = |template: &str| {
                    let (a, b): (Vec<&str>, Vec<&str>) =
                        (template.split('/').collect(), path.split('/').collect());
                    a.len() == b.len()
                        && a.iter().zip(&b).all(|(t, p)| t.starts_with('{') || t == p)
                };
                assert!(
                    kura_server::ROUTES
                        .iter()
                        .any(|r| r.method == method && fits(r.path)),
                    "{page} (block at line {start}): {method} {path} is not a route"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 2, "only {checked} curl examples found");
}

#[test]
fn every_policy_example_is_a_valid_policy() {
    let (_, text) = pages()
        .into_iter()
        .find(|(p, _)| p == "policies.md")
        .expect("docs/policies.md");
    let examples = blocks(&text, "json");
    assert!(!examples.is_empty());
    for (start, lines) in examples {
        let doc = lines.join("\n");
        kura_policy::Policy::parse(doc.as_bytes())
            .unwrap_or_else(|e| panic!("docs/policies.md (block at line {start}): {e}"));
    }
}
