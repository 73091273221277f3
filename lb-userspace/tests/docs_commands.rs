//! Every `fulcrum` command the README and the book show that runs without
//! a daemon (`validate`, `plan --from-nothing` or `--against`, `--version`)
//! is run, and prints what the docs say it prints. A command's config is
//! the file it names in the repository, or, for `/etc/fulcrum/fulcrum.toml`,
//! the config the same page shows last before it.

mod common;

use std::path::{Path, PathBuf};

use common::{Scratch, fulcrum, guarded};

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One command shown in the docs, and what they show it print.
struct Shown {
    page: String,
    line: usize,
    command: Vec<String>,
    output: Vec<String>,
    /// The page's last config block before the command.
    config: Option<String>,
}

/// The daemon-less commands of `page`.
fn shown(page: &Path) -> Vec<Shown> {
    let text = std::fs::read_to_string(page).expect("a page");
    let name = page
        .strip_prefix(repo())
        .unwrap_or(page)
        .display()
        .to_string();
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut config = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_start();
        let indent = lines[i].len() - line.len();
        if line.starts_with("```toml") {
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| !l.trim_start().starts_with("```"))
                .copied()
                .collect();
            if block.iter().any(|l| l.contains("[[vip]]")) {
                config = Some(block.join("\n"));
            }
        }
        let command = line
            .strip_prefix("$ fulcrum ")
            .or_else(|| line.strip_prefix("# fulcrum "));
        if let Some(command) = command {
            let words: Vec<String> = command.split_whitespace().map(str::to_string).collect();
            let daemonless = match words.first().map(String::as_str) {
                Some("validate" | "--version") => true,
                Some("plan") => words
                    .iter()
                    .any(|w| w == "--from-nothing" || w == "--against"),
                _ => false,
            };
            // The block's lines, less the indentation the command has.
            let output: Vec<String> = lines[i + 1..]
                .iter()
                .map(|l| l.get(indent..).unwrap_or_default())
                .take_while(|l| {
                    !l.starts_with("```") && !l.starts_with("$ ") && !l.starts_with("# ")
                })
                .map(str::to_string)
                .collect();
            if daemonless && !words.iter().any(|w| w == "|" || w == ">") {
                found.push(Shown {
                    page: name.clone(),
                    line: i + 1,
                    command: words,
                    output,
                    config: config.clone(),
                });
            }
        }
        i += 1;
    }
    found
}

/// Every page of the README and the book.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![repo().join("README.md")];
    for entry in std::fs::read_dir(repo().join("docs")).expect("docs/") {
        let path = entry.expect("an entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    pages.sort();
    pages
}

#[test]
fn the_commands_the_docs_show_print_what_they_show() {
    const ETC: &str = "/etc/fulcrum/fulcrum.toml";
    let scratch = Scratch::new("docs-commands");
    let all: Vec<Shown> = pages().iter().flat_map(|page| shown(page)).collect();
    assert!(
        all.len() >= 3,
        "the docs show fewer daemon-less commands than they did"
    );
    let mut wrong = Vec::new();
    for shown in &all {
        let place = format!("{}:{}", shown.page, shown.line);
        let config = match &shown.config {
            Some(text) if shown.command.iter().any(|w| w == ETC) => {
                Some(scratch.file(&format!("line{}.toml", shown.line), text))
            }
            _ => None,
        };
        let args: Vec<String> = shown
            .command
            .iter()
            .map(|word| match (&config, word.as_str()) {
                (Some(path), ETC) => path.display().to_string(),
                _ => word.clone(),
            })
            .collect();
        let mut command = fulcrum();
        command.args(&args);
        let output = guarded(command)
            .current_dir(repo())
            .output()
            .expect("fulcrum runs");
        let mut printed = String::from_utf8_lossy(&output.stdout).into_owned();
        if let Some(path) = &config {
            printed = printed.replace(&path.display().to_string(), ETC);
        }
        let printed: Vec<&str> = printed.lines().map(str::trim_end).collect();
        let expected: Vec<&str> = shown.output.iter().map(|l| l.trim_end()).collect();
        // The docs may end a block with a blank line the output lacks.
        let expected = expected
            .iter()
            .rposition(|l| !l.is_empty())
            .map_or(&expected[..0], |last| &expected[..=last]);
        if printed != expected {
            wrong.push(format!(
                "{place}: `fulcrum {}` printed:\n{}\nthe docs show:\n{}",
                shown.command.join(" "),
                printed.join("\n"),
                expected.join("\n")
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}
