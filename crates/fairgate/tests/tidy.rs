//! Repository hygiene, checked under `cargo test`: every Rust file starts with a `//!` doc
//! comment, no test is ignored or expects a panic, and every path ARCHITECTURE.md names in
//! backticks exists (so the architecture doc cannot silently drift from the code).

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_rust_file_has_a_module_doc_and_no_banned_test_attributes() {
    let mut files = Vec::new();
    rust_files(&repo_root().join("crates"), &mut files);
    assert!(files.len() > 20, "found only {} files", files.len());
    let mut problems = Vec::new();
    let ignore = ["#[", "ignore]"].concat();
    let should_panic = ["#[", "should_panic"].concat();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        if !first.starts_with("//!") {
            problems.push(format!(
                "{}: does not start with a //! doc comment",
                f.display()
            ));
        }
        if text.contains(&ignore) || text.contains(&should_panic) {
            problems.push(format!("{}: ignored or should_panic test", f.display()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn paths_named_in_architecture_md_exist() {
    let root = repo_root();
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut checked = 0;
    for (i, part) in doc.split('`').enumerate() {
        if i % 2 == 1 && (part.starts_with("crates/") || part.starts_with("tests/")) {
            assert!(
                root.join(part).exists(),
                "ARCHITECTURE.md names `{part}`, which does not exist"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} paths checked");
}

#[test]
fn readme_opens_with_the_two_commands() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let head: String = readme.lines().take(15).collect::<Vec<_>>().join("\n");
    assert!(head.contains("cargo run -- demo"), "{head}");
    assert!(head.contains("./scripts/test.sh"), "{head}");
    assert!(repo_root().join("scripts/test.sh").exists());
    assert!(repo_root().join(".ci/run").exists());
}
