//! README.md stays true to the binary: every `culvert …` command in its code blocks names a
//! real subcommand and only flags that subcommand takes, every subcommand is documented,
//! and every Culvert TOML example in it passes `culvert check` (with its placeholders
//! filled in: a token hash, the token file, the secrets an agent injects).

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use support::*;

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fenced code blocks of `text` with their language tag.
fn code_blocks(text: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in text.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(tag)) => open = Some((tag.trim().to_owned(), String::new())),
            (Some(_), Some(_)) => blocks.push(open.take().unwrap()),
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "README.md has an unclosed code block");
    blocks
}

/// `culvert ARGS --help`, or `None` when that is no command.
fn help(args: &[&str]) -> Option<String> {
    let out = culvert().args(args).arg("--help").output().unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The subcommands a help text lists (its `Commands:` section).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| *w != "help")
        .map(str::to_owned)
        .collect()
}

/// Shell commands of the README's `sh` blocks, continuation lines joined and comments
/// dropped, split at `|`, `;`, `&&` and `&` so that each piece is one command.
fn shell_commands(text: &str) -> Vec<String> {
    let mut commands = Vec::new();
    for (tag, body) in code_blocks(text) {
        if tag != "sh" {
            continue;
        }
        let joined = body.replace("\\\n", " ");
        for line in joined.lines() {
            let line = line.split(" #").next().unwrap_or("");
            if line.trim_start().starts_with('#') {
                continue;
            }
            for piece in line.split(['|', ';', '&']) {
                commands.push(piece.trim().to_owned());
            }
        }
    }
    commands
}

/// The words after `culvert` in `command`, if it runs culvert (directly, or through
/// `cargo run … -- ` or `target/…/culvert`).
fn culvert_args(command: &str) -> Option<Vec<String>> {
    let words: Vec<&str> = command.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == "culvert" || w.ends_with("/culvert"))?;
    let rest = if words.first() == Some(&"cargo") {
        let dashes = words.iter().position(|w| *w == "--")?;
        &words[dashes + 1..]
    } else {
        &words[at + 1..]
    };
    Some(rest.iter().map(|w| w.to_string()).collect())
}

#[test]
fn every_culvert_command_in_the_readme_names_a_subcommand_and_flags_it_takes() {
    let text = readme();
    let top = help(&[]).expect("culvert --help");
    let subs = subcommands(&top);
    assert!(subs.len() >= 8, "no subcommands read from:\n{top}");
    let mut problems = BTreeSet::new();
    let mut checked = 0;
    for command in shell_commands(&text) {
        let Some(args) = culvert_args(&command) else {
            continue;
        };
        let Some(sub) = args.first().filter(|a| !a.starts_with('-')) else {
            continue;
        };
        if !subs.contains(sub) {
            problems.insert(format!("`{command}`: `{sub}` is no subcommand"));
            continue;
        }
        // The deepest subcommand the words name (`token new`, `cert new`).
        let mut path = vec![sub.as_str()];
        let mut h = help(&path).unwrap();
        for word in &args[1..] {
            if !subcommands(&h).contains(word) {
                break;
            }
            path.push(word);
            h = help(&path).unwrap();
        }
        for flag in args.iter().filter(|a| a.starts_with("--")) {
            let flag = flag.split('=').next().unwrap();
            let listed = h
                .split(|c: char| c.is_whitespace() || c == ',')
                .any(|w| w == flag);
            if !listed {
                problems.insert(format!(
                    "`{command}`: `culvert {}` has no {flag}",
                    path.join(" ")
                ));
            }
        }
        checked += 1;
    }
    assert!(
        checked >= 20,
        "only {checked} culvert commands found in README.md"
    );
    assert!(
        problems.is_empty(),
        "README.md disagrees with the binary:\n{}",
        {
            let v: Vec<_> = problems.into_iter().collect();
            v.join("\n")
        }
    );
}

#[test]
fn every_subcommand_is_documented_in_the_readme() {
    let text = readme();
    let top = help(&[]).expect("culvert --help");
    let missing: Vec<String> = subcommands(&top)
        .into_iter()
        .filter(|s| !text.contains(&format!("culvert {s}")))
        .collect();
    assert!(missing.is_empty(), "not in README.md: {missing:?}");
}

#[test]
fn every_culvert_toml_example_in_the_readme_passes_culvert_check() {
    let text = readme();
    let dir = TempDir::new("readme-toml");
    let hash = "ab".repeat(32);
    let mut checked = 0;
    for (i, (tag, body)) in code_blocks(&text).into_iter().enumerate() {
        // Cargo manifests and other TOML are not Culvert's.
        let ours = [
            "[server]",
            "[agent]",
            "[access]",
            "[node]",
            "[[token]]",
            "[[tunnel]]",
        ];
        if tag != "toml" || !ours.iter().any(|t| body.contains(t)) {
            continue;
        }
        let mut filled = body.replace("sha256 = \"…\"", &format!("sha256 = \"{hash}\""));
        // Files an example names (token files, injected secrets): made in the temp dir.
        for line in body.lines() {
            for (start, _) in line.match_indices('"') {
                let rest = &line[start + 1..];
                let Some(end) = rest.find('"') else { continue };
                let value = &rest[..end];
                let (prefix, file) = if line.trim_start().starts_with("token_file") {
                    ("", Some(value))
                } else {
                    ("file:", value.strip_prefix("file:"))
                };
                if let Some(file) = file {
                    let name = Path::new(file).file_name().unwrap().to_string_lossy();
                    let path = dir.join(&format!("{i}-{name}"));
                    std::fs::write(&path, "secret-from-a-file\n").unwrap();
                    let made = format!("\"{prefix}{}\"", path.display());
                    filled = filled.replace(&format!("\"{value}\""), &made);
                }
            }
        }
        let config = dir.join(&format!("example-{i}.toml"));
        std::fs::write(&config, &filled).unwrap();
        let mut check = culvert();
        check.arg("check").arg("--config").arg(&config);
        for env in filled.split("\"env:").skip(1) {
            let name = env.split('"').next().unwrap();
            check.env(name, "secret-from-the-environment");
        }
        let out = check.output().unwrap();
        assert!(
            out.status.success(),
            "README.md's TOML example #{i} fails `culvert check`:\n{}\n--- as checked:\n{filled}",
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(
        checked >= 3,
        "only {checked} Culvert TOML examples found in README.md"
    );
}
