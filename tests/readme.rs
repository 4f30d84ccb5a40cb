//! The README runs as written: every ```` ```sh ```` block of README.md, in order, is executed
//! for real as one bash script, so the first hour it describes cannot drift from the code.
//!
//! How it flows:
//! 1. README.md is split into fenced blocks. Every fence must name a language (`sh` blocks are
//!    run; `text`, `toml` and `json` blocks are shown output or files); a `sh` block the test
//!    cannot run is marked right above it with `<!-- readme-test: skip — <reason> -->`, and the
//!    number of such blocks is pinned by [`SKIPPED_BLOCKS`].
//! 2. A fresh-clone stand-in is made under the test's target tmp dir: `project/` holds copies of
//!    Cargo.toml, Cargo.lock, README.md, src/, config/ and contrib/ (only changed files are
//!    rewritten, so cargo reuses its build), and `shared` beside it links to the real `../shared`.
//! 3. The blocks become one `set -euo pipefail` bash script with a marker line before each block
//!    and a trap that kills any background job left. It runs in its own process group, with the
//!    outer cargo's `CARGO_*` variables cleared (but `CARGO_HOME`), `CARGO_TARGET_DIR` set to a
//!    persistent dir of its own (a nested cargo must not wait on the outer build's lock, and the
//!    release build then happens once per machine), `CARGO_INSTALL_ROOT` set to a temp dir whose
//!    `bin` leads PATH (where `cargo install` puts `dmrelay`), and no `MESH_*` settings.
//! 4. A reader thread forwards every output line; each block has a deadline (long for the blocks
//!    that build with cargo). On a failure or a timeout the process group is killed and the test
//!    fails with the block and its output. At the end, the README must have stopped everything it
//!    started and removed every file it made.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Read};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Blocks marked `readme-test: skip`. Only `cargo test` itself (it would run this test again) is
/// known to need it; raising this number is a deliberate act, with the reason in the README.
const SKIPPED_BLOCKS: usize = 1;

/// What a fresh clone needs to build and run (copied into the scratch project).
const PROJECT_ENTRIES: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    "README.md",
    "src",
    "config",
    "contrib",
];

/// A block that runs cargo may build the whole project in release mode on a busy machine.
const CARGO_BLOCK_DEADLINE: Duration = Duration::from_secs(40 * 60);
/// Every other block starts and stops a few nodes at most.
const BLOCK_DEADLINE: Duration = Duration::from_secs(180);

/// The fixed ports of the README's nodes.
const README_PORTS: &[u16] = &[8787, 8781, 8782, 8783];

const SKIP_MARKER: &str = "<!-- readme-test: skip";
const BLOCK_MARKER: &str = "@@readme-block ";
const END_MARKER: &str = "@@readme-end@@";

#[derive(Debug)]
struct Block {
    /// 1-based position among the README's `sh` blocks.
    number: usize,
    /// Line of the opening fence in README.md.
    line: usize,
    code: String,
    skip_reason: Option<String>,
}

/// The `sh` blocks of the README, in order; any other fenced block must name a language that
/// is not a shell, so that no command block escapes the test.
fn sh_blocks(readme: &str) -> Result<Vec<Block>, String> {
    const SHOWN_LANGUAGES: &[&str] = &["text", "toml", "json"];
    let lines: Vec<&str> = readme.lines().collect();
    let mut blocks = Vec::new();
    let mut pending_skip: Option<(usize, String)> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim_start().starts_with(SKIP_MARKER) {
            if let Some((at, _)) = pending_skip {
                return Err(format!(
                    "README.md:{}: a skip marker not followed by a sh block",
                    at + 1
                ));
            }
            pending_skip = Some((
                i,
                skip_reason(line).map_err(|e| format!("README.md:{}: {e}", i + 1))?,
            ));
            i += 1;
            continue;
        }
        if line.trim_start().starts_with("```") {
            if line.starts_with(' ') {
                return Err(format!(
                    "README.md:{}: indented fence; put fences at the start of the line",
                    i + 1
                ));
            }
            let language = line.trim_start_matches('`').trim();
            let start = i;
            let mut code = String::new();
            i += 1;
            while i < lines.len() && !lines[i].starts_with("```") {
                code.push_str(lines[i]);
                code.push('\n');
                i += 1;
            }
            if i == lines.len() {
                return Err(format!("README.md:{}: unclosed fence", start + 1));
            }
            i += 1;
            let skip = pending_skip.take();
            if language == "sh" {
                blocks.push(Block {
                    number: blocks.len() + 1,
                    line: start + 1,
                    code,
                    skip_reason: skip.map(|(_, reason)| reason),
                });
            } else if !SHOWN_LANGUAGES.contains(&language) {
                return Err(format!(
                    "README.md:{}: fence language {language:?}: use sh for commands (they are run) \
                     or one of {SHOWN_LANGUAGES:?} for what is only shown",
                    start + 1
                ));
            } else if let Some((at, _)) = skip {
                return Err(format!(
                    "README.md:{}: a skip marker above a {language} block, which is never run",
                    at + 1
                ));
            }
            continue;
        }
        if !line.trim().is_empty()
            && let Some((at, _)) = pending_skip
        {
            return Err(format!(
                "README.md:{}: a skip marker must be right above its sh block",
                at + 1
            ));
        }
        i += 1;
    }
    if let Some((at, _)) = pending_skip {
        return Err(format!("README.md:{}: a skip marker at the end", at + 1));
    }
    Ok(blocks)
}

/// `<!-- readme-test: skip — <reason> -->` → the reason, which must be given.
fn skip_reason(line: &str) -> Result<String, String> {
    let rest = line.trim().trim_start_matches(SKIP_MARKER);
    let Some(rest) = rest.strip_suffix("-->") else {
        return Err("a skip marker must be one line ending with -->".into());
    };
    let reason = rest
        .trim()
        .trim_start_matches(['—', '-', ':'])
        .trim()
        .to_string();
    if reason.is_empty() {
        return Err("a skip marker needs a reason: <!-- readme-test: skip — <reason> -->".into());
    }
    Ok(reason)
}

#[test]
fn block_parser_finds_blocks_skips_and_refuses_unknown_fences() {
    let readme = "intro\n```sh\necho one\n```\n\n<!-- readme-test: skip — recursion -->\n```sh\ncargo test\n```\n```text\nout\n```\n";
    let blocks = sh_blocks(readme).unwrap();
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0].code, "echo one\n");
    assert_eq!(blocks[0].skip_reason, None);
    assert_eq!(blocks[1].skip_reason.as_deref(), Some("recursion"));
    assert!(
        sh_blocks("```bash\nls\n```\n").is_err(),
        "bash fence escapes"
    );
    assert!(sh_blocks("```\nls\n```\n").is_err(), "bare fence escapes");
    assert!(
        sh_blocks("<!-- readme-test: skip -->\n```sh\nls\n```\n").is_err(),
        "no reason"
    );
    assert!(
        sh_blocks("<!-- readme-test: skip — x -->\ntext\n```sh\nls\n```\n").is_err(),
        "marker not right above"
    );
    assert!(sh_blocks("```sh\nls\n").is_err(), "unclosed");
}

/// Makes `to` a copy of `from`, rewriting only files whose content differs: an unchanged file
/// keeps its modification time, so cargo reuses its build, and a changed one gets a new time,
/// so cargo rebuilds (copying the original times would hide a change made after the last build).
fn sync_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    if std::fs::metadata(from)?.is_dir() {
        if !std::fs::symlink_metadata(to).is_ok_and(|m| m.is_dir()) {
            remove_any(to)?;
            std::fs::create_dir_all(to)?;
        }
        let wanted: BTreeSet<_> = std::fs::read_dir(from)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        for entry in std::fs::read_dir(to)? {
            let name = entry?.file_name();
            if !wanted.contains(&name) {
                remove_any(&to.join(&name))?;
            }
        }
        for name in &wanted {
            sync_tree(&from.join(name), &to.join(name))?;
        }
    } else {
        let content = std::fs::read(from)?;
        let same = std::fs::symlink_metadata(to).is_ok_and(|m| m.is_file())
            && std::fs::read(to)? == content;
        if !same {
            remove_any(to)?;
            std::fs::copy(from, to)?;
        }
    }
    Ok(())
}

/// Removes a file or a tree, if there is one.
fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// The script: each block after its marker line, then a check that nothing is left running.
fn script(blocks: &[&Block]) -> String {
    let mut script = String::from(
        "set -euo pipefail\n\
         exec 2>&1\n\
         trap 'set +e; kill $(jobs -p) 2>/dev/null; wait' EXIT\n",
    );
    for block in blocks {
        script.push_str(&format!("echo '{BLOCK_MARKER}{}@@'\n", block.number));
        script.push_str(&block.code);
    }
    script.push_str(&format!(
        "echo '{END_MARKER}'\n\
         left=$(jobs -pr)\n\
         if [ -n \"$left\" ]; then\n\
         \x20 echo \"the README leaves background jobs running (pids $left): it must stop what it starts\"\n\
         \x20 exit 1\n\
         fi\n"
    ));
    script
}

/// An exclusive lock held until dropped, shared by every checkout on this machine (another
/// worktree's run of this test would use the same ports).
fn machine_wide_turn() -> std::fs::File {
    use std::os::fd::AsRawFd as _;
    let lock =
        std::fs::File::create(std::env::temp_dir().join("dmrelay-readme-test.lock")).unwrap();
    // SAFETY: flock(2) on a file descriptor this function owns.
    let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(locked, 0, "flock: {}", std::io::Error::last_os_error());
    lock
}

fn kill_group(child: &Child, signal: i32) {
    // SAFETY: kill(2) on the process group this test created for the script.
    unsafe {
        libc::kill(-(child.id() as i32), signal);
    }
}

/// Stops the script's whole process group (bash, nodes, builds): TERM, then KILL.
fn stop_group(child: &mut Child) {
    kill_group(child, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_group(child, libc::SIGKILL);
    let _ = child.wait();
}

fn forward_lines(stream: impl Read + Send + 'static, lines: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
}

/// The block a marker line announces.
fn marker_number(line: &str) -> Option<usize> {
    let start = line.find(BLOCK_MARKER)? + BLOCK_MARKER.len();
    line[start..].strip_suffix("@@")?.parse().ok()
}

fn failure_report(block: Option<&Block>, output: &[String], what: &str) -> String {
    let mut report = format!("README test failed: {what}\n");
    match block {
        Some(block) => report.push_str(&format!(
            "--- sh block {} (README.md line {}) ---\n{}",
            block.number, block.line, block.code
        )),
        None => report.push_str("--- before the first block ---\n"),
    }
    const SHOWN: usize = 300;
    report.push_str("--- its output");
    if output.len() > SHOWN {
        report.push_str(&format!(" (last {SHOWN} of {} lines)", output.len()));
    }
    report.push_str(" ---\n");
    for line in &output[output.len().saturating_sub(SHOWN)..] {
        report.push_str(line);
        report.push('\n');
    }
    report
}

#[test]
fn readme_sh_blocks_run_as_written() {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(manifest_dir.join("README.md")).unwrap();
    let blocks = sh_blocks(&readme).unwrap_or_else(|e| panic!("{e}"));
    let skipped: Vec<&Block> = blocks.iter().filter(|b| b.skip_reason.is_some()).collect();
    for block in &skipped {
        eprintln!(
            "readme: sh block {} (line {}) skipped: {}",
            block.number,
            block.line,
            block.skip_reason.as_deref().unwrap_or_default()
        );
    }
    assert_eq!(
        skipped.len(),
        SKIPPED_BLOCKS,
        "skipped sh blocks in README.md; every skip hides a command from this test"
    );
    let runnable: Vec<&Block> = blocks.iter().filter(|b| b.skip_reason.is_none()).collect();
    assert!(!runnable.is_empty(), "README.md has no sh block to run");

    // The minimum Rust version the README states is the one Cargo.toml declares.
    let manifest: toml::Table = std::fs::read_to_string(manifest_dir.join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let rust_version = manifest["package"]
        .get("rust-version")
        .and_then(|v| v.as_str())
        .expect("Cargo.toml declares package.rust-version");
    assert!(
        readme.contains(&format!("Rust {rust_version}")),
        "README.md must state the minimum Rust version as \"Rust {rust_version}\""
    );

    // One run at a time per machine: the README's ports are fixed.
    let _turn = machine_wide_turn();
    for port in README_PORTS {
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", *port)) {
            panic!("port {port} is in use ({e}); the README's commands use ports {README_PORTS:?}");
        }
    }

    // The fresh-clone stand-in, with ../shared beside it.
    let shared = std::fs::canonicalize(manifest_dir.join("../shared"))
        .expect("../shared (SPEC.md, vectors.json) is checked out next to the project");
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("readme");
    let project = scratch.join("project");
    std::fs::create_dir_all(&project).unwrap();
    let shared_link = scratch.join("shared");
    remove_any(&shared_link).unwrap();
    std::os::unix::fs::symlink(&shared, &shared_link).unwrap();
    // What an earlier, failed run left behind goes; the project's files are brought up to date.
    for entry in entries(&project) {
        if !PROJECT_ENTRIES.contains(&entry.as_str()) {
            remove_any(&project.join(entry)).unwrap();
        }
    }
    for entry in PROJECT_ENTRIES {
        let from = manifest_dir.join(entry);
        if from.exists() {
            sync_tree(&from, &project.join(entry)).unwrap();
        } else {
            remove_any(&project.join(entry)).unwrap();
        }
    }
    let before = entries(&project);

    let runnable_script = script(&runnable);
    let script_path = scratch.join("readme.sh");
    std::fs::write(&script_path, &runnable_script).unwrap();

    // The child's environment: a person's shell, not the outer cargo's.
    let install_root = tempfile::tempdir().unwrap();
    let target_dir: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("readme-target");
    let cargo_dir = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .and_then(|cargo| cargo.parent().map(Path::to_path_buf));
    let mut path = vec![install_root.path().join("bin")];
    path.extend(cargo_dir);
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let mut command = Command::new("bash");
    command.arg(&script_path).current_dir(&project);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || key == "CARGO"
            || key.starts_with("MESH_")
        {
            command.env_remove(&*key);
        }
    }
    command
        .env("PATH", std::env::join_paths(path).unwrap())
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("CARGO_INSTALL_ROOT", install_root.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command.spawn().expect("bash runs");
    let (sender, lines) = mpsc::channel();
    forward_lines(child.stdout.take().unwrap(), sender.clone());
    forward_lines(child.stderr.take().unwrap(), sender);

    // Follow the blocks as they run.
    let mut current: Option<&Block> = None;
    let mut output: Vec<String> = Vec::new();
    let mut started = Instant::now();
    let mut deadline = started + BLOCK_DEADLINE;
    let mut ended = false;
    let mut exit_status = None;
    loop {
        match lines.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if let Some(number) = marker_number(&line) {
                    if let Some(block) = current {
                        eprintln!(
                            "readme: sh block {} ok in {:.1} s",
                            block.number,
                            started.elapsed().as_secs_f64()
                        );
                    }
                    let block = runnable.iter().find(|b| b.number == number).copied();
                    current = block;
                    output.clear();
                    started = Instant::now();
                    let uses_cargo = block.is_some_and(|b| b.code.contains("cargo "));
                    deadline = started
                        + if uses_cargo {
                            CARGO_BLOCK_DEADLINE
                        } else {
                            BLOCK_DEADLINE
                        };
                } else if line.contains(END_MARKER) {
                    if let Some(block) = current {
                        eprintln!(
                            "readme: sh block {} ok in {:.1} s",
                            block.number,
                            started.elapsed().as_secs_f64()
                        );
                    }
                    current = None;
                    ended = true;
                    output.clear();
                    deadline = Instant::now() + BLOCK_DEADLINE;
                } else {
                    output.push(line);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                // Once bash is gone, whatever still holds the output open goes too (the
                // script's trap should have stopped it already).
                if exit_status.is_none() {
                    exit_status = child.try_wait().unwrap();
                    if exit_status.is_some() {
                        stop_group(&mut child);
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                stop_group(&mut child);
                panic!(
                    "{}",
                    failure_report(
                        current,
                        &output,
                        &format!(
                            "still running after {} s (a block must terminate on its own)",
                            started.elapsed().as_secs()
                        )
                    )
                );
            }
        }
    }
    let status = match exit_status {
        Some(status) => status,
        None => child.wait().unwrap(),
    };
    // Anything the trap did not stop (it should have) goes now.
    stop_group(&mut child);
    if !status.success() {
        let what = if ended {
            format!("after the last block: {status}")
        } else {
            format!("the block failed: {status}")
        };
        panic!("{}", failure_report(current, &output, &what));
    }
    assert!(ended, "the script stopped before its end marker");

    let after = entries(&project);
    let left: Vec<&String> = after.difference(&before).collect();
    assert!(
        left.is_empty(),
        "the README leaves {left:?} behind in the project directory: its clean-up steps must remove what it makes"
    );
}
